"""MindSpore's learning-rate schedules, dynamic-lr lists and ``nn.Lamb`` signature.

The schedule classes compute exactly what ``mindspore.nn.learning_rate_schedule``
computes (in float32, under ``jax.jit`` with a traced step); the list functions
follow ``mindspore.nn.dynamic_lr`` line by line. Argument checks follow
MindSpore's validator: a learning rate must be a Python ``float`` (an ``int`` is
a ``TypeError`` there too), step counts positive ``int``\\ s, flags ``bool``\\ s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb_optax._src import alias
from lamb_optax._src import groups as groups_lib
from lamb_optax._src import masks as masks_lib

# ---------------------------------------------------------------------------
# MindSpore's validator rules
# ---------------------------------------------------------------------------


def _is_float(name: str, value: Any) -> float:
  if not isinstance(value, float):
    raise TypeError(f"`{name}` must be a float, got {type(value).__name__} {value!r}.")
  if math.isnan(value):
    raise ValueError(f"`{name}` must not be NaN.")
  return value


def _positive_float(name: str, value: Any) -> float:
  _is_float(name, value)
  if not value > 0:
    raise ValueError(f"`{name}` must be a positive float, got {value!r}.")
  return value


def _non_negative_float(name: str, value: Any) -> float:
  _is_float(name, value)
  if not value >= 0:
    raise ValueError(f"`{name}` must be a non-negative float, got {value!r}.")
  return value


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}.")
  if value <= 0:
    raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  return value


def _bool(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}.")
  return value


def _step(global_step: Any) -> jax.Array:
  return jnp.asarray(global_step).astype(jnp.float32)


# ---------------------------------------------------------------------------
# Schedule classes (mindspore.nn.learning_rate_schedule)
# ---------------------------------------------------------------------------


class _Schedule:
  """Base: a callable ``step -> lr`` usable anywhere optax takes a schedule."""

  def __call__(self, global_step: jax.typing.ArrayLike) -> jax.Array:
    return self.construct(_step(global_step))

  def construct(self, step: jax.Array) -> jax.Array:  # pragma: no cover - abstract
    raise NotImplementedError

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
    return f"{type(self).__name__}({args})"


class _DecayLR(_Schedule):
  def __init__(
    self, learning_rate: float, decay_rate: float, decay_steps: int, is_stair: bool = False
  ):
    self.learning_rate = _positive_float("learning_rate", learning_rate)
    self.decay_rate = _positive_float("decay_rate", decay_rate)
    self.decay_steps = _positive_int("decay_steps", decay_steps)
    self.is_stair = _bool("is_stair", is_stair)

  def _p(self, step: jax.Array) -> jax.Array:
    p = step / self.decay_steps
    return jnp.floor(p) if self.is_stair else p


class ExponentialDecayLR(_DecayLR):
  r"""``lr * decay_rate ** p``, ``p = step / decay_steps`` (floored if ``is_stair``).

  Examples:
    >>> from lamb_optax.mindspore_compat import ExponentialDecayLR
    >>> sched = ExponentialDecayLR(0.1, 0.9, 4, is_stair=True)
    >>> [round(float(sched(s)), 4) for s in (0, 3, 4)]
    [0.1, 0.1, 0.09]
  """

  def construct(self, step: jax.Array) -> jax.Array:
    return self.learning_rate * jnp.power(jnp.float32(self.decay_rate), self._p(step))


class NaturalExpDecayLR(_DecayLR):
  r"""``lr * exp(-decay_rate * p)``, ``p = step`` (floored to a multiple of decay_steps if stair).

  As in MindSpore, the exponent uses the step itself, not ``step / decay_steps``.

  Examples:
    >>> from lamb_optax.mindspore_compat import NaturalExpDecayLR
    >>> sched = NaturalExpDecayLR(0.1, 0.9, 4, is_stair=True)
    >>> [round(float(sched(s)), 5) for s in (0, 3, 4)]
    [0.1, 0.1, 0.00273]
  """

  def construct(self, step: jax.Array) -> jax.Array:
    p = jnp.floor(step / self.decay_steps) * self.decay_steps if self.is_stair else step
    return self.learning_rate * jnp.exp(-self.decay_rate * p)


class InverseDecayLR(_DecayLR):
  r"""``lr / (1 + decay_rate * p)``, ``p = step / decay_steps`` (floored if ``is_stair``).

  Examples:
    >>> from lamb_optax.mindspore_compat import InverseDecayLR
    >>> round(float(InverseDecayLR(0.1, 0.9, 4)(1)), 5)
    0.08163
  """

  def construct(self, step: jax.Array) -> jax.Array:
    return self.learning_rate / (1 + self.decay_rate * self._p(step))


class CosineDecayLR(_Schedule):
  r"""``min_lr + (max_lr - min_lr) * (1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2``.

  Examples:
    >>> from lamb_optax.mindspore_compat import CosineDecayLR
    >>> sched = CosineDecayLR(0.01, 0.1, 4)
    >>> [round(float(sched(s)), 4) for s in (0, 2, 4, 9)]
    [0.1, 0.055, 0.01, 0.01]
  """

  def __init__(self, min_lr: float, max_lr: float, decay_steps: int):
    self.min_lr = _non_negative_float("min_lr", min_lr)
    self.max_lr = _positive_float("max_lr", max_lr)
    self.decay_steps = _positive_int("decay_steps", decay_steps)
    if min_lr >= max_lr:
      raise ValueError(f"`max_lr` ({max_lr!r}) must be greater than `min_lr` ({min_lr!r}).")

  def construct(self, step: jax.Array) -> jax.Array:
    p = jnp.minimum(step, self.decay_steps) / self.decay_steps
    return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + jnp.cos(math.pi * p))


class PolynomialDecayLR(_Schedule):
  r"""``(lr - end) * (1 - p) ** power + end``, ``p = min(step, decay_steps) / decay_steps``.

  With ``update_decay_steps=True`` the horizon grows instead of the step being
  capped: ``decay = decay_steps * max(ceil(step / decay_steps), 1)``,
  ``p = step / decay``.

  Examples:
    >>> from lamb_optax.mindspore_compat import PolynomialDecayLR
    >>> sched = PolynomialDecayLR(0.1, 0.01, 4, 0.5)
    >>> [round(float(sched(s)), 4) for s in (0, 2, 4, 9)]
    [0.1, 0.0736, 0.01, 0.01]
  """

  def __init__(
    self,
    learning_rate: float,
    end_learning_rate: float,
    decay_steps: int,
    power: float,
    update_decay_steps: bool = False,
  ):
    self.learning_rate = _positive_float("learning_rate", learning_rate)
    self.end_learning_rate = _non_negative_float("end_learning_rate", end_learning_rate)
    self.decay_steps = _positive_int("decay_steps", decay_steps)
    self.power = _positive_float("power", power)
    self.update_decay_steps = _bool("update_decay_steps", update_decay_steps)

  def construct(self, step: jax.Array) -> jax.Array:
    # Under jit XLA divides by a constant as a multiplication by its reciprocal, which is
    # not exact: 100 * (1/100) is 0.99999998 in float32, and (1 - p) ** 0.5 turned that
    # into 1.5e-4 (0.1% off the end value; NaN where p rounded above 1). So ``1 - p`` is
    # formed as (decay - step) / decay, whose numerator is exact, and ceil(step / decay)
    # is corrected where the rounded quotient crossed an integer.
    decay = jnp.float32(self.decay_steps)
    if self.update_decay_steps:
      n = jnp.ceil(step / decay)
      n = jnp.where((n - 1) * decay >= step, n - 1, n)
      n = jnp.where(n * decay < step, n + 1, n)
      decay = decay * jnp.maximum(n, 1.0)
    else:
      step = jnp.minimum(step, decay)
    rest = jnp.maximum(decay - step, 0.0) / decay
    diff = self.learning_rate - self.end_learning_rate
    return diff * jnp.power(rest, self.power) + self.end_learning_rate


class WarmUpLR(_Schedule):
  r"""``lr * min(step, warmup_steps) / warmup_steps``.

  Examples:
    >>> from lamb_optax.mindspore_compat import WarmUpLR
    >>> [round(float(WarmUpLR(0.1, 4)(s)), 4) for s in (0, 1, 4, 6)]
    [0.0, 0.025, 0.1, 0.1]
  """

  def __init__(self, learning_rate: float, warmup_steps: int):
    self.learning_rate = _positive_float("learning_rate", learning_rate)
    self.warmup_steps = _positive_int("warmup_steps", warmup_steps)

  def construct(self, step: jax.Array) -> jax.Array:
    return self.learning_rate * jnp.minimum(step, self.warmup_steps) / self.warmup_steps


# ---------------------------------------------------------------------------
# Dynamic-lr list functions (mindspore.nn.dynamic_lr)
# ---------------------------------------------------------------------------


def _check_epoch_inputs(
  learning_rate: Any, decay_rate: Any, total_step: Any, step_per_epoch: Any, decay_epoch: Any,
  is_stair: Any,
) -> None:  # fmt: skip
  _positive_int("total_step", total_step)
  _positive_int("step_per_epoch", step_per_epoch)
  _positive_int("decay_epoch", decay_epoch)
  _positive_float("learning_rate", learning_rate)
  _positive_float("decay_rate", decay_rate)
  _bool("is_stair", is_stair)


def piecewise_constant_lr(milestone: Sequence[int], learning_rates: Sequence[float]) -> list[float]:
  """``learning_rates[i]`` for the steps before ``milestone[i]``.

  Examples:
    >>> from lamb_optax.mindspore_compat import piecewise_constant_lr
    >>> piecewise_constant_lr([2, 5], [0.1, 0.05])
    [0.1, 0.1, 0.05, 0.05, 0.05]
  """
  if not isinstance(milestone, (list, tuple)):
    raise TypeError(f"`milestone` must be a list or tuple, got {type(milestone).__name__}.")
  if not isinstance(learning_rates, (list, tuple)):
    raise TypeError(
      f"`learning_rates` must be a list or tuple, got {type(learning_rates).__name__}."
    )
  if len(milestone) != len(learning_rates):
    raise ValueError(
      f"`milestone` and `learning_rates` must have the same length, got {len(milestone)} and"
      f" {len(learning_rates)}."
    )
  last = 0
  for i, (m, lr) in enumerate(zip(milestone, learning_rates, strict=True)):
    _positive_int(f"milestone[{i}]", m)
    _is_float(f"learning_rates[{i}]", lr)
    if m <= last:
      raise ValueError(f"`milestone` must be strictly increasing, got {list(milestone)}.")
    last = m
  out: list[float] = []
  last = 0
  for m, lr in zip(milestone, learning_rates, strict=True):
    out += [lr] * (m - last)
    last = m
  return out


def exponential_decay_lr(
  learning_rate: float,
  decay_rate: float,
  total_step: int,
  step_per_epoch: int,
  decay_epoch: int,
  is_stair: bool = False,
) -> list[float]:
  """``lr * decay_rate ** (epoch / decay_epoch)`` per step (floored if ``is_stair``).

  Examples:
    >>> from lamb_optax.mindspore_compat import exponential_decay_lr
    >>> [round(x, 4) for x in exponential_decay_lr(0.1, 0.9, 4, 1, 2, is_stair=True)]
    [0.1, 0.1, 0.09, 0.09]
  """
  _check_epoch_inputs(learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair)
  out = []
  for i in range(total_step):
    epoch = math.floor(i / step_per_epoch)
    p = math.floor(epoch / decay_epoch) if is_stair else epoch / decay_epoch
    out.append(learning_rate * decay_rate**p)
  return out


def natural_exp_decay_lr(
  learning_rate: float,
  decay_rate: float,
  total_step: int,
  step_per_epoch: int,
  decay_epoch: int,
  is_stair: bool = False,
) -> list[float]:
  """``lr * e ** (-decay_rate * epoch)`` per step (epoch floored to decay_epoch if stair).

  Examples:
    >>> from lamb_optax.mindspore_compat import natural_exp_decay_lr
    >>> [round(x, 4) for x in natural_exp_decay_lr(0.1, 0.9, 3, 1, 2)]
    [0.1, 0.0407, 0.0165]
  """
  _check_epoch_inputs(learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair)
  out = []
  for i in range(total_step):
    epoch = math.floor(i / step_per_epoch)
    p = math.floor(epoch / decay_epoch) * decay_epoch if is_stair else epoch
    out.append(learning_rate * math.e ** (-decay_rate * p))
  return out


def inverse_decay_lr(
  learning_rate: float,
  decay_rate: float,
  total_step: int,
  step_per_epoch: int,
  decay_epoch: int,
  is_stair: bool = False,
) -> list[float]:
  """``lr / (1 + decay_rate * epoch / decay_epoch)`` per step (floored if ``is_stair``).

  Examples:
    >>> from lamb_optax.mindspore_compat import inverse_decay_lr
    >>> [round(x, 4) for x in inverse_decay_lr(0.1, 0.5, 3, 1, 1)]
    [0.1, 0.0667, 0.05]
  """
  _check_epoch_inputs(learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair)
  out = []
  for i in range(total_step):
    epoch = math.floor(i / step_per_epoch)
    if is_stair:
      out.append(learning_rate / (1 + decay_rate * math.floor(epoch / decay_epoch)))
    else:
      out.append(learning_rate / (1 + decay_rate * epoch / decay_epoch))
  return out


def cosine_decay_lr(
  min_lr: float, max_lr: float, total_step: int, step_per_epoch: int, decay_epoch: int
) -> list[float]:
  """Cosine decay from ``max_lr`` to ``min_lr`` over ``decay_epoch`` epochs, per step.

  Examples:
    >>> from lamb_optax.mindspore_compat import cosine_decay_lr
    >>> [round(x, 4) for x in cosine_decay_lr(0.01, 0.1, 3, 1, 2)]
    [0.1, 0.055, 0.01]
  """
  _non_negative_float("min_lr", min_lr)
  _positive_float("max_lr", max_lr)
  if min_lr >= max_lr:
    raise ValueError(f"`max_lr` ({max_lr!r}) must be greater than `min_lr` ({min_lr!r}).")
  _positive_int("total_step", total_step)
  _positive_int("step_per_epoch", step_per_epoch)
  _positive_int("decay_epoch", decay_epoch)
  delta = 0.5 * (max_lr - min_lr)
  out = []
  for i in range(total_step):
    epoch = min(math.floor(i / step_per_epoch), decay_epoch)
    out.append(min_lr + delta * (1 + math.cos(math.pi * epoch / decay_epoch)))
  return out


def polynomial_decay_lr(
  learning_rate: float,
  end_learning_rate: float,
  total_step: int,
  step_per_epoch: int,
  decay_epoch: int,
  power: float,
  update_decay_epoch: bool = False,
) -> list[float]:
  """Polynomial decay per step; ``update_decay_epoch`` grows the horizon as MindSpore does.

  Examples:
    >>> from lamb_optax.mindspore_compat import polynomial_decay_lr
    >>> [round(x, 4) for x in polynomial_decay_lr(0.1, 0.01, 3, 1, 2, 0.5)]
    [0.1, 0.0736, 0.01]
  """
  _positive_float("learning_rate", learning_rate)
  _non_negative_float("end_learning_rate", end_learning_rate)
  _positive_int("total_step", total_step)
  _positive_int("step_per_epoch", step_per_epoch)
  _positive_int("decay_epoch", decay_epoch)
  _positive_float("power", power)
  _bool("update_decay_epoch", update_decay_epoch)
  delta = learning_rate - end_learning_rate
  out = []
  for i in range(total_step):
    epoch = math.floor(i / step_per_epoch)
    if update_decay_epoch:  # MindSpore carries the grown horizon into later steps.
      decay_epoch = decay_epoch * max(math.ceil(epoch / decay_epoch), 1)
      tmp = epoch
    else:
      tmp = min(decay_epoch, epoch)
    out.append(delta * (1 - tmp / decay_epoch) ** power + end_learning_rate)
  return out


def warmup_lr(
  learning_rate: float, total_step: int, step_per_epoch: int, warmup_epoch: int
) -> list[float]:
  """Linear warm-up ``lr * min(epoch, warmup_epoch) / warmup_epoch`` per step.

  Examples:
    >>> from lamb_optax.mindspore_compat import warmup_lr
    >>> warmup_lr(0.1, 3, 1, 2)
    [0.0, 0.05, 0.1]
  """
  _positive_float("learning_rate", learning_rate)
  _positive_int("total_step", total_step)
  _positive_int("step_per_epoch", step_per_epoch)
  _positive_int("warmup_epoch", warmup_epoch)
  out = []
  for i in range(total_step):
    epoch = math.floor(i / step_per_epoch)
    out.append(learning_rate * min(warmup_epoch, epoch) / warmup_epoch)
  return out


# ---------------------------------------------------------------------------
# nn.Lamb
# ---------------------------------------------------------------------------


_HOW_TO_SELECT = (
  "To train some of the parameters, pass them as a pytree with the paths they have in the full"
  " tree (a dict with the same top-level keys, e.g. `{'fc': params['fc']}`), or pass a list of"
  " group dicts whose 'params' is a regex searched in the '/'-joined path (e.g."
  " `[{'params': '^fc/'}]`), a callable (path, leaf) -> bool or a list of path strings; the"
  " paths are those of `lamb_optax.masks.named_leaves(params)`."
)


def _fmt_paths(paths: Sequence[str], limit: int = 20) -> str:
  shown = ", ".join(repr(p) for p in paths[:limit])
  return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def _is_group_list(params: Any) -> bool:
  return (
    isinstance(params, Sequence)
    and not isinstance(params, str)
    and bool(params)
    and all(isinstance(g, dict) for g in params)
  )


def _is_unnamed_list(params: Any) -> bool:
  """A list or tuple (not a NamedTuple, whose fields are names): MindSpore's list of Parameters."""
  return isinstance(params, (list, tuple)) and not hasattr(params, "_fields")


def _shape(leaf: Any) -> tuple[int, ...]:
  return tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))


def _subset_rule(subset: Any) -> Callable[[Any], list[bool]]:
  """``tree -> [leaf is in subset]``; raises if a subset path is missing or has another shape."""
  shapes = {path: _shape(leaf) for path, leaf in masks_lib.named_leaves(subset)}

  def trained(tree: Any) -> list[bool]:
    named = masks_lib.named_leaves(tree)
    seen = {path: _shape(leaf) for path, leaf in named}
    missing = [p for p in shapes if p not in seen]
    if missing:
      raise ValueError(
        f"`Lamb(params=...)` was given parameters at paths that are not in the tree passed to"
        f" `init`/`update`: {_fmt_paths(missing)} (the tree has {_fmt_paths(list(seen), 5)})."
        f" {_HOW_TO_SELECT}"
      )
    reshaped = [f"{p!r} {shapes[p]} vs {seen[p]}" for p in shapes if shapes[p] != seen[p]]
    if reshaped:
      raise ValueError(
        "`Lamb(params=...)` was given parameters whose shapes differ from the leaves at the same"
        f" paths of the tree passed to `init`/`update`: {', '.join(reshaped[:20])}."
      )
    return [path in shapes for path, _ in named]

  return trained


def _with_frozen(
  tx: optax.GradientTransformationExtraArgs, trained: Callable[[Any], list[bool]]
) -> optax.GradientTransformationExtraArgs:
  """``tx`` on the leaves ``trained`` selects, zero updates (``optax.set_to_zero``) elsewhere.

  A tree whose every leaf is trained gets ``tx`` itself (its state unchanged);
  any other tree gets ``optax.partition`` of ``tx`` and ``optax.set_to_zero``,
  so a frozen leaf keeps no state. The choice depends on the tree's paths
  only, so ``init`` and ``update`` make the same one.
  """

  def labels(tree: Any) -> Any:
    names = ["train" if t else "frozen" for t in trained(tree)]
    return jax.tree.unflatten(jax.tree.structure(tree), names)

  partitioned = optax.partition({"train": tx, "frozen": optax.set_to_zero()}, labels)

  def init_fn(params: Any) -> optax.OptState:
    return (tx if all(trained(params)) else partitioned).init(params)

  def update_fn(
    updates: Any, state: optax.OptState, params: Any = None, **extra_args: Any
  ) -> tuple[Any, optax.OptState]:
    inner = tx if all(trained(updates)) else partitioned
    return inner.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def Lamb(  # noqa: N802 - MindSpore's name
  params: Any,
  learning_rate: Any,
  beta1: float = 0.9,
  beta2: float = 0.999,
  eps: float = 1e-6,
  weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """MindSpore's ``nn.Lamb(params, learning_rate, beta1, beta2, eps, weight_decay)``.

  As in MindSpore, only the parameters in ``params`` are trained. ``params``
  is either

  - a params pytree: its leaves are trained (MindSpore's beta/gamma rule picks
    the decayed ones). Given to ``init``/``update`` as it is, the optimizer is
    :func:`lamb_optax.lamb` with ``mask="mindspore"``, state included. Given
    a larger tree (the whole model), a leaf is trained iff its path (see
    :func:`lamb_optax.masks.named_leaves`) is one of ``params``' paths, so
    pass the subset with the paths it has in the full tree
    (``{"fc": params["fc"]}``, not ``params["fc"]``); the other leaves get
    zero updates and keep no state (``optax.partition`` of ``lamb`` and
    ``optax.set_to_zero``). A path of ``params`` missing from that tree is a
    ``ValueError`` at ``init``;
  - or a list of group dicts (see ``lamb(groups=...)``). The leaves that no
    group selects are frozen the same way (``lamb(groups=...)`` itself
    requires every leaf in a group); a leaf in two groups is an error.

  A list or tuple of arrays (the shape of MindSpore's
  ``net.trainable_params()``) is rejected: JAX arrays carry no names, so they
  cannot say which leaves of the tree they are.

  Where MindSpore's optimizer is a Cell called with the gradients and
  returning ``True``, an optax transformation is used as
  ``updates, state = tx.update(grads, state, params)`` followed by
  ``optax.apply_updates``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from lamb_optax.mindspore_compat import Lamb, PolynomialDecayLR
    >>> params = {"conv": {"weight": jnp.ones((3, 3, 1, 4))}, "bn": {"gamma": jnp.ones(4)}}
    >>> tx = Lamb(params, learning_rate=PolynomialDecayLR(0.1, 0.01, 100, 0.5), weight_decay=0.01)
    >>> state = tx.init(params)

    Training only the batch norm of that model:

    >>> tx = Lamb({"bn": params["bn"]}, learning_rate=0.1)
    >>> state = tx.init(params)  # the full tree
    >>> grads = {"conv": {"weight": jnp.ones((3, 3, 1, 4))}, "bn": {"gamma": jnp.ones(4)}}
    >>> updates, state = tx.update(grads, state, params)
    >>> float(updates["conv"]["weight"].max()), float(updates["bn"]["gamma"][0])
    (0.0, -0.1)

  Raises:
    TypeError: ``params`` is a list or tuple of arrays, or has leaves that are
      not floating arrays; and the argument errors of :func:`lamb_optax.lamb`.
    ValueError: ``params`` is empty; at ``init``, a path of ``params`` that
      the tree does not have (or has with another shape); bad groups.
  """
  if _is_group_list(params):
    tx = alias.lamb(learning_rate, beta1, beta2, eps, weight_decay=weight_decay, groups=params)
    parsed = groups_lib.parse_groups(params, learning_rate, weight_decay)
    return _with_frozen(tx, lambda tree: groups_lib.selected(parsed, tree))
  if _is_unnamed_list(params) and params:
    raise TypeError(
      f"`params` is a {type(params).__name__} of {len(params)} items that are not group dicts"
      " (MindSpore's `net.trainable_params()` shape). JAX arrays carry no names, so such a list"
      f" cannot say which leaves of the parameter tree to train. {_HOW_TO_SELECT}"
    )
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError(
      f"`params` must be a non-empty params pytree or list of group dicts, got {params!r}."
    )
  for leaf in leaves:
    if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.inexact):
      raise TypeError(
        f"`params` leaves must be floating arrays, got {type(leaf).__name__} {leaf!r}."
      )
  tx = alias.lamb(learning_rate, beta1, beta2, eps, weight_decay=weight_decay, mask="mindspore")
  return _with_frozen(tx, _subset_rule(params))
