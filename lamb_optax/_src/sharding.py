"""Optimizer-state shardings and per-layer trust-ratio helpers for scanned models."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import optax

from lamb_optax._src import masks as masks_lib


def state_shardings(tx: optax.GradientTransformation, params: Any, shardings: Any = None) -> Any:
  """The shardings of ``tx.init(params)`` when ``params`` are sharded as given.

  m and v of every leaf that keeps its own arrays come out sharded exactly like
  the parameter (packed buffers of small leaves as XLA places them), scalars
  replicated. Use the result as ``out_shardings`` of a jitted init or step, or
  to build orbax restore targets::

    shardings = lamb_optax.state_shardings(tx, params)
    target = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(tx.init, params), shardings)

  Args:
    tx: the optimizer.
    params: arrays or ``jax.ShapeDtypeStruct``\\ s; their ``.sharding`` is used
      unless ``shardings`` is given.
    shardings: optional pytree of ``jax.sharding.Sharding`` like ``params``.

  Returns:
    A pytree of shardings with the structure of the optimizer state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.lamb(1e-3)
    >>> params = {"w": jnp.ones((4, 4))}
    >>> sh = lamb_optax.state_shardings(tx, params)
    >>> sh.mu.as_tree()["w"] == params["w"].sharding
    True
  """
  if shardings is None:
    shardings = jax.tree.map(lambda p: p.sharding, params)
  if jax.tree.structure(shardings) != jax.tree.structure(params):
    raise ValueError(
      "`shardings` must have the structure of `params` (one sharding per leaf).\n"
      f"  shardings: {jax.tree.structure(shardings)}\n  params: {jax.tree.structure(params)}"
    )
  for path, s in masks_lib.named_leaves(shardings):
    if not isinstance(s, jax.sharding.Sharding):
      raise TypeError(
        f"`shardings` leaf {path or '<root>'!r} must be a jax.sharding.Sharding, got"
        f" {type(s).__name__} {s!r}."
      )
  abstract = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params, shardings
  )
  return jax.jit(tx.init).lower(abstract).compile().output_shardings


def layer_axes_from_regex(pattern: str, axes: int = 1) -> Callable[[Any], Any]:
  """``layer_axes`` for stacked leaves picked by a regex on their path.

  ``flax.linen.scan`` / ``nnx.scan`` stack each layer's parameters along a new
  leading axis under the scanned module's name (``blocks/dense/kernel`` of
  shape ``(L, d, d)``); this gives those leaves ``axes`` layer axes and every
  other leaf 0.

  Args:
    pattern: a regular expression searched in each leaf's ``/``-joined path.
    axes: how many leading axes index layers in the matching leaves.

  Returns:
    A callable ``params -> int pytree`` for ``lamb(..., layer_axes=...)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> fn = lamb_optax.layer_axes_from_regex(r"^blocks/")
    >>> fn({"blocks": {"kernel": jnp.ones((3, 2, 2))}, "head": {"kernel": jnp.ones((2, 2))}})
    {'blocks': {'kernel': 1}, 'head': {'kernel': 0}}
  """
  if not isinstance(pattern, str):
    raise TypeError(f"`pattern` must be a str, got {type(pattern).__name__} {pattern!r}.")
  if isinstance(axes, bool) or not isinstance(axes, int) or axes < 0:
    raise ValueError(f"`axes` must be an int >= 0, got {axes!r}.")
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"`pattern` {pattern!r} is not a valid regular expression: {e}.") from e

  def layer_axes(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
      lambda p, _: axes if compiled.search(masks_lib.path_str(p)) else 0, params
    )

  return layer_axes


def _is_partitioned(x: Any) -> bool:
  return hasattr(x, "names") and hasattr(x, "unbox")


def layer_axes_from_partitioning(boxed_params: Any, axis_name: str = "layers") -> Any:
  """``layer_axes`` read from Flax partitioning metadata.

  For Linen parameters boxed by ``nn.with_partitioning`` and stacked by
  ``nn.scan(..., metadata_params={nn.PARTITION_NAME: axis_name})``, each box's
  ``names`` start with ``axis_name`` once per stacking level; this counts them.
  Unboxed leaves (no metadata) get 0: give those their axes with
  :func:`layer_axes_from_regex`.

  Args:
    boxed_params: the params as ``model.init`` returns them, before
      ``nn.unbox``/``meta.unbox``.
    axis_name: the partition name that marks a layer axis.

  Returns:
    An int pytree with the structure of the unboxed params.
  """

  def count(x: Any) -> int:
    if not _is_partitioned(x):
      return 0
    n = 0
    for name in x.names:
      if name != axis_name:
        break
      n += 1
    return n

  return jax.tree.map(count, boxed_params, is_leaf=_is_partitioned)
