"""Float32 master weights for low-precision parameters (apex/Paddle "multi precision")."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_LOW = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


def is_low_precision(x: Any) -> bool:
  """True for bfloat16 and float16 arrays."""
  return np.dtype(x.dtype) in _LOW


class MasterWeightsState(NamedTuple):
  """State of :func:`with_master_weights`."""

  # like params: a float32 copy of each bfloat16/float16 leaf; a 0-d placeholder
  # of the parameter dtype for every other leaf (those need no copy).
  master: optax.Params
  inner_state: optax.OptState  # the wrapped optimizer's state, built on the masters


def with_master_weights(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs ``inner`` on float32 master copies of bfloat16/float16 parameters.

  The state keeps a float32 copy of every low-precision leaf (4 extra bytes per
  such parameter, on top of m and v). ``inner`` sees the masters as its
  ``params`` (trust-ratio norms and weight decay use them) and float32
  gradients; the masters take its full-precision update, and the emitted
  update, for those leaves in float32, is ``round(master) - params``, so that
  ``optax.apply_updates`` makes each parameter equal its master rounded to the
  parameter dtype. Other leaves pass through ``inner`` unchanged.

  Args:
    inner: the optimizer to wrap (``lamb(..., master_weights=True)`` does this).

  Returns:
    An ``optax.GradientTransformation`` with :class:`MasterWeightsState`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import lamb_optax
    >>> tx = lamb_optax.lamb(1e-3, master_weights=True)
    >>> p = {"w": jnp.ones(4, jnp.bfloat16)}
    >>> state = tx.init(p)
    >>> state.master["w"].dtype
    dtype('float32')
  """

  def masters(params: Any, master: Any) -> Any:
    return jax.tree.map(lambda p, m: m if is_low_precision(p) else p, params, master)

  def init_fn(params):
    master = jax.tree.map(
      lambda p: p.astype(jnp.float32) if is_low_precision(p) else jnp.zeros((), p.dtype), params
    )
    return MasterWeightsState(master, inner.init(masters(params, master)))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("master_weights needs the current parameters: call update(u, s, params).")
    full = masters(params, state.master)
    grads = jax.tree.map(
      lambda g, p: g.astype(jnp.float32) if is_low_precision(p) else g, updates, params
    )
    inner_u, inner_state = optax.with_extra_args_support(inner).update(
      grads, state.inner_state, full, **extra_args
    )

    def one(u, p, m):
      if not is_low_precision(p):
        return u, m
      new_m = m + u.astype(jnp.float32)
      return new_m.astype(p.dtype).astype(jnp.float32) - p.astype(jnp.float32), new_m

    out = jax.tree.map(one, inner_u, params, state.master)
    tree_def = jax.tree.structure(params)
    pairs = tree_def.flatten_up_to(out)
    emitted = jax.tree.unflatten(tree_def, [a for a, _ in pairs])
    master = jax.tree.unflatten(tree_def, [b for _, b in pairs])
    return emitted, MasterWeightsState(master, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
