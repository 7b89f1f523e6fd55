"""Reading the trust ratios of the last step back out of an optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import optax

from lamb_optax._src.engine import LambState
from lamb_optax._src.transforms import ScaleByTrustRatioState


def _collect(state: Any, found: list[Any]) -> None:
  if isinstance(state, LambState):
    found.append(state.ratios.as_tree())
    return
  if isinstance(state, ScaleByTrustRatioState):
    found.append(state.ratios)
    return
  if isinstance(state, dict):
    for key in sorted(state, key=str):
      _collect(state[key], found)
  elif isinstance(state, (tuple, list)):  # NamedTuples included
    for child in state:
      _collect(child, found)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def trust_ratios(opt_state: optax.OptState) -> Any:
  """The trust ratios applied at the last step, as a pytree like the params.

  Each leaf is a float32 scalar, or an array of shape ``leaf.shape[:k]`` for a
  leaf with ``layer_axes=k``. Leaves excluded by ``trust_ratio_mask`` read 1,
  and so does every leaf before the first step. Works through ``optax.chain``,
  parameter groups (``optax.partition``), ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` and ``optax.apply_if_finite``. The ratios are kept in
  the state at the cost of one float32 per leaf (per layer), so this is cheap
  enough to log every step.

  Args:
    opt_state: the state of an optimizer built with :func:`lamb_optax.lamb`
      or containing :func:`lamb_optax.scale_by_trust_ratio`.

  Returns:
    A pytree like the parameters.

  Raises:
    ValueError: if the state holds no trust-ratio state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = lamb_optax.lamb(0.1)
    >>> state = tx.init(params)
    >>> _, state = tx.update({"w": jnp.array([1.0, 0.0])}, state, params)
    >>> ratios = lamb_optax.trust_ratios(state)  # ||w|| / ||u|| = 5 / (1 - eps)
    >>> round(float(ratios["w"]), 4)
    5.0
  """
  found: list[Any] = []
  _collect(opt_state, found)
  if not found:
    raise ValueError(
      "`opt_state` holds no trust-ratio state; was it made by lamb_optax.lamb or"
      " lamb_optax.scale_by_trust_ratio?"
    )
  if len(found) == 1:
    return found[0]
  # Parameter groups: each group's ratios hold MaskedNode where another group owns the leaf.
  flat = [jax.tree.flatten(t, is_leaf=_is_masked) for t in found]
  tree_def = flat[0][1]
  merged = []
  for column in zip(*(leaves for leaves, _ in flat), strict=True):
    owned = [x for x in column if not _is_masked(x)]
    merged.append(owned[0] if owned else optax.MaskedNode())
  return jax.tree.unflatten(tree_def, merged)
