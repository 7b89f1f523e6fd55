"""Reading the trust ratios of the last step back out of an optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import optax

from lamb_optax._src.engine import LambState
from lamb_optax._src.transforms import ScaleByTrustRatioState


def _find(state: Any, kinds: tuple[type, ...]) -> list[Any]:
  """The states of ``kinds`` inside ``state`` (through chains, partitions and wrappers)."""
  if isinstance(state, kinds):
    return [state]
  if isinstance(state, dict):
    return [x for key in sorted(state, key=str) for x in _find(state[key], kinds)]
  if isinstance(state, (tuple, list)):  # NamedTuples included
    return [x for child in state for x in _find(child, kinds)]
  return []


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
  found = [
    s.ratios.as_tree() if isinstance(s, LambState) else s.ratios
    for s in _find(opt_state, (LambState, ScaleByTrustRatioState))
  ]
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


def group_hyperparams(opt_state: optax.OptState) -> dict[int, dict[str, jax.Array]]:
  """Each parameter group's current learning rate and weight decay.

  MindSpore's ``get_lr_parameter``: the values the next update will use (at
  step ``count``, 0-based), keyed by the group's index in ``lamb(groups=...)``
  (0 alone without groups), each ``{"learning_rate": lr, "weight_decay": wd}``
  as 0-d arrays. A group whose weight decay is a constant 0 reads 0. They are
  part of the state (two scalars per group), so they are read without
  evaluating any schedule and work under ``jax.jit``, through ``optax.chain``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps`` and
  :func:`lamb_optax.with_master_weights`. ``lamb(..., fused=False)`` (the chain
  of blocks) does not keep them.

  Args:
    opt_state: the state of an optimizer built with :func:`lamb_optax.lamb`.

  Returns:
    ``{group index: {"learning_rate": lr, "weight_decay": wd}}``.

  Raises:
    ValueError: if the state holds no state of ``lamb``'s engine, or more than one.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import lamb_optax
    >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
    >>> tx = lamb_optax.lamb(0.1, groups=[
    ...     {"params": "kernel", "lr": optax.linear_schedule(0.1, 0.0, 10), "weight_decay": 0.01},
    ...     {"params": "bias", "weight_decay": 0.0}])
    >>> state = tx.init(params)
    >>> _, state = tx.update(params, state, params)
    >>> {i: round(float(h["learning_rate"]), 3) for i, h in
    ...  lamb_optax.group_hyperparams(state).items()}
    {0: 0.09, 1: 0.1}
  """
  found = _find(opt_state, (LambState,))
  if len(found) != 1:
    raise ValueError(
      "`opt_state` must hold exactly one state of lamb_optax.lamb's engine, found"
      f" {len(found)} (lamb(..., fused=False) keeps no per-group hyperparameters)."
    )
  return {i: dict(h) for i, h in enumerate(found[0].group_hyperparams)}
