"""MindSpore-style parameter groups mapped onto ``optax.partition`` labels.

A group is a dict with MindSpore's keys (``params``, ``lr``, ``weight_decay``,
``grad_centralization``) or a dict holding only ``order_params``. Each leaf of
the parameter tree must be selected by exactly one group; the label of a leaf is
``"group_<i>"``. Labels depend only on leaf paths and shapes, so the same groups
work with Linen param dicts and with ``flax.nnx.Optimizer`` (Variable-wrapped
state at ``init``, plain arrays at ``update``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lamb_optax._src import masks as masks_lib
from lamb_optax._src import schedules, validation

_GROUP_KEYS = frozenset({"params", "lr", "weight_decay", "grad_centralization", "order_params"})
_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Group:
  """One parsed parameter group."""

  index: int
  select: Callable[[str, Any], bool]
  describe: str
  exact_paths: tuple[str, ...] | None
  lr: Any
  weight_decay: Any
  grad_centralization: bool

  @property
  def label(self) -> str:
    return f"group_{self.index}"


@dataclasses.dataclass(frozen=True)
class Groups:
  """Parsed groups plus the optional ``order_params`` list."""

  groups: tuple[Group, ...]
  order_params: tuple[str, ...] | None


def _selector(i: int, spec: Any) -> tuple[Callable[[str, Any], bool], str, tuple[str, ...] | None]:
  name = f"groups[{i}]['params']"
  if isinstance(spec, str):
    try:
      pattern = re.compile(spec)
    except re.error as e:
      raise ValueError(f"`{name}` {spec!r} is not a valid regular expression: {e}.") from e
    return (lambda path, _: pattern.search(path) is not None), f"regex {spec!r}", None
  if callable(spec):
    return (lambda path, leaf: bool(spec(path, leaf))), f"callable {spec!r}", None
  if isinstance(spec, Sequence) and not isinstance(spec, (bytes, bytearray)):
    paths = tuple(spec)
    for p in paths:
      if not isinstance(p, str):
        raise TypeError(f"`{name}` as a list must hold path strings; got {type(p).__name__} {p!r}.")
    wanted = frozenset(paths)
    return (lambda path, _: path in wanted), f"paths {list(paths)!r}", paths
  raise TypeError(
    f"`{name}` must be a regex string, a callable (path, leaf) -> bool or a list of path"
    f" strings; got {type(spec).__name__} {spec!r}."
  )


def parse_groups(groups: Any, default_lr: Any, default_weight_decay: Any) -> Groups:
  """Validates MindSpore-style group dicts.

  Args:
    groups: a list of dicts (see :func:`lamb_optax.lamb`).
    default_lr: the learning rate of groups without ``lr``.
    default_weight_decay: the weight decay of groups without ``weight_decay``.

  Returns:
    The parsed :class:`Groups`.

  Raises:
    KeyError: for an unknown key or a group without ``params``.
    TypeError: for values of the wrong kind.
    ValueError: for values out of range, an empty group list, or an
      ``order_params`` dict that holds other keys.
  """
  if isinstance(groups, Mapping) or not isinstance(groups, Sequence) or isinstance(groups, str):
    raise TypeError(f"`groups` must be a list of dicts, got {type(groups).__name__} {groups!r}.")
  parsed: list[Group] = []
  order_params: tuple[str, ...] | None = None
  for i, group in enumerate(groups):
    if not isinstance(group, Mapping):
      raise TypeError(f"`groups[{i}]` must be a dict, got {type(group).__name__} {group!r}.")
    unknown = sorted(set(group) - _GROUP_KEYS, key=str)
    if unknown:
      raise KeyError(
        f"`groups[{i}]` has unknown key(s) {unknown}; the keys are {sorted(_GROUP_KEYS)}."
      )
    if "order_params" in group:
      if len(group) != 1:
        raise ValueError(
          f"`groups[{i}]`: 'order_params' must be alone in its dict, got keys {sorted(group)}."
        )
      if order_params is not None:
        raise ValueError(f"`groups[{i}]`: 'order_params' given twice.")
      op = group["order_params"]
      if isinstance(op, str) or not isinstance(op, Sequence):
        raise TypeError(
          f"`groups[{i}]['order_params']` must be a list of path strings, got {op!r}."
        )
      for p in op:
        if not isinstance(p, str):
          raise TypeError(
            f"`groups[{i}]['order_params']` must hold path strings, got {type(p).__name__} {p!r}."
          )
      order_params = tuple(op)
      continue
    if "params" not in group:
      raise KeyError(f"`groups[{i}]` has no 'params' key: {dict(group)!r}.")
    select, describe, exact = _selector(i, group["params"])
    lr = schedules.as_schedule(f"groups[{i}]['lr']", group.get("lr", default_lr))
    wd = group.get("weight_decay", default_weight_decay)
    validation.check_scalar_or_schedule(f"groups[{i}]['weight_decay']", wd)
    gc = group.get("grad_centralization", False)
    validation.check_bool(f"groups[{i}]['grad_centralization']", gc)
    parsed.append(Group(len(parsed), select, describe, exact, lr, wd, bool(gc)))
  if not parsed:
    raise ValueError("`groups` must hold at least one dict with 'params'.")
  return Groups(tuple(parsed), order_params)


def _fmt(paths: Sequence[str], limit: int = 20) -> str:
  shown = ", ".join(repr(p) for p in paths[:limit])
  return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def selected(groups: Groups, params: Any) -> list[bool]:
  """Whether some group selects each leaf, in ``jax.tree.leaves`` order.

  The union of the groups, with no check (:func:`assign` checks): MindSpore's
  ``nn.Lamb`` trains only the parameters its groups hold, and
  ``mindspore_compat.Lamb`` freezes the others.
  """
  return [
    any(g.select(path, leaf) for g in groups.groups)
    for path, leaf in masks_lib.named_leaves(params)
  ]


def assign(groups: Groups, params: Any) -> list[int]:
  """The index of the group of each leaf, in ``jax.tree.leaves`` order.

  Raises:
    ValueError: a leaf in no group or in two, a listed path that does not
      exist, a group that selects nothing, a 2-D leaf in a centralized group,
      or an ``order_params`` path that belongs to no group.
  """
  named = masks_lib.named_leaves(params)
  all_paths = {p for p, _ in named}
  for g in groups.groups:
    if g.exact_paths is not None:
      missing = [p for p in g.exact_paths if p not in all_paths]
      if missing:
        raise ValueError(
          f"`groups[{g.index}]['params']` lists paths that are not in the parameters:"
          f" {_fmt(missing)}."
        )
  owner: list[int] = []
  orphans, doubles = [], []
  for path, leaf in named:
    hits = [g.index for g in groups.groups if g.select(path, leaf)]
    if not hits:
      orphans.append(path)
    elif len(hits) > 1:
      doubles.append(f"{path!r} (groups {hits})")
    owner.append(hits[0] if hits else -1)
  if orphans:
    raise ValueError(f"Every parameter must belong to a group; in no group: {_fmt(orphans)}.")
  if doubles:
    raise ValueError(
      "Every parameter must belong to exactly one group; in several: " + ", ".join(doubles[:20])
    )
  for g in groups.groups:
    members = [(p, leaf) for (p, leaf), o in zip(named, owner, strict=True) if o == g.index]
    if not members:
      raise ValueError(f"`groups[{g.index}]` ({g.describe}) selects no parameter.")
    if g.grad_centralization:
      dense = [p for p, leaf in members if np.ndim(leaf) == 2]
      if dense:
        raise ValueError(
          f"`groups[{g.index}]` has grad_centralization=True, which applies only to"
          f" convolution kernels (ndim >= 3), but holds 2-D leaves: {_fmt(dense)}."
        )
  if groups.order_params is not None:
    stray = [p for p in groups.order_params if p not in all_paths]
    if stray:
      raise ValueError(f"'order_params' lists paths that belong to no group: {_fmt(stray)}.")
  return owner
