"""The default ``lamb`` update: the chain's math, fused per leaf into two passes.

``lamb``'s contract is the chain ``centralize | identity -> scale_by_adam ->
add_decayed_weights -> scale_by_trust_ratio -> scale_by_learning_rate``. Run
as separate blocks, XLA materialises the Adam direction ``u`` to take its norm
and then reads it again (XLA:CPU runs a reduction as its own kernel), and each
norm is a separate pass. Here each leaf takes two passes over memory:

1. m' and v' are written (they are outputs), then the squares of w and of u
   are summed, u recomputed inside the reduction from w, m', v' (on CPU, for
   leaves of 2**16 elements and up, two plain vectorized sums with
   ``transforms.safe_norms`` only where one is out of range, see
   ``transforms.quick_norms``; elsewhere one variadic reduction of three sums
   each);
2. one elementwise pass reads w, m', v' and writes the update (which
   ``optax.apply_updates`` in the same jit turns into w', in place).

``jax.lax.optimization_barrier`` keeps XLA from merging the two recomputations
of ``u`` into one materialised array. The state is exactly the chain's state
(same structure, same values), so the two are interchangeable, checkpoints
included; ``lamb(..., fused=False)`` runs the chain itself.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb_optax._src import masks as masks_lib
from lamb_optax._src import schedules, transforms

# Two guards of leaf_step against XLA:CPU rewrites, as switches so that
# benchmarks/step_bench.py can measure each one's cost elsewhere (its TRIALS):
_OWN_SCALARS = True  # each leaf's norm reduction gets scalars of its own
_PASS2_BARRIER = True  # pass 2 recomputes u instead of sharing pass 1's


def check_step(updates: Any, params: Any) -> None:
  """What every ``lamb`` update checks first: params given, float updates shaped like them."""
  transforms._require_params(params, "lamb")
  transforms._check_float_leaves("updates", updates)
  transforms._check_same_structure(updates, params)


def corrections(count: jax.Array, b1: Any, b2: Any, rdt: Any) -> list[jax.Array]:
  """Adam's bias corrections ``1 - b1^t`` and ``1 - b2^t`` in ``rdt``."""
  return [transforms._decay_constants(b, count, rdt)[2] for b in (b1, b2)]


def decayed_direction(
  m_new: jax.Array,
  v_new: jax.Array,
  w: Any,
  correction1: Any,
  correction2: Any,
  wd_t: Any,
  eps: Any,
  eps_root: Any,
  *,
  decay: bool,
) -> jax.Array:
  """Adam's direction from the new moments, plus ``wd_t * w`` where ``decay``."""
  u = transforms.corrected_direction(m_new, v_new, correction1, correction2, eps, eps_root)
  if decay:
    u = u + jnp.asarray(wd_t).astype(transforms._real_dtype(u.dtype)) * w.astype(u.dtype)
  return u


def leaf_step(
  g: jax.Array,
  m: jax.Array,
  v: jax.Array,
  w: jax.Array,
  count: jax.Array,
  lr_t: jax.Array,
  wd_t: jax.Array,
  decay: bool,
  trust: bool,
  k: int,
  hyper: tuple[Any, ...],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """One leaf's LAMB step in two passes: ``(update, m', v', ratios)``, stored dtypes.

  ``hyper`` is ``(b1, b2, eps, eps_root, min_trust_ratio, max_trust_ratio)``;
  ``decay``, ``trust`` and ``k`` are the leaf's decay flag, trust-ratio flag
  and layer axes.
  """
  b1, b2, eps, eps_root, min_ratio, max_ratio = hyper
  direction = functools.partial(decayed_direction, decay=decay)
  rdt = transforms._real_dtype(transforms.compute_dtype(g.dtype))
  scalars = (*corrections(count, b1, b2, rdt), wd_t, eps, eps_root)
  # Pass 1: new moments (written once, they are outputs) and, with a trust
  # ratio, the sums of squares of w and of u, with u recomputed inside the
  # reduction from the new moments.
  m_new, v_new = transforms.adam_moments(g, m, v, count, b1, b2)
  if trust:
    # The reduction gets scalars of its own (per leaf, and not constants): XLA
    # merges equal broadcasts, and a broadcast that XLA:CPU's library sum
    # (see quick_norms) shares with another kernel is stored as a full array.
    if _OWN_SCALARS:
      count_a, _ = jax.lax.optimization_barrier((count, w))  # with w: one per leaf
      zero = count_a.astype(jnp.float32) * 0  # x + zero is x, but XLA cannot fold it
      scalars_a = [_unfolded(x, zero) for x in scalars]
    else:
      scalars_a = list(scalars)
    w_norm, u_norm = transforms.quick_norms(
      [(lambda w: w, (w,), k), (direction, (m_new, v_new, w, *scalars_a), k)]
    )
    # Pass 2: the update. The barrier stops XLA from merging this u with pass
    # 1's into one stored array.
    m_b, v_b, w_b = (
      jax.lax.optimization_barrier((m_new, v_new, w)) if _PASS2_BARRIER else (m_new, v_new, w)
    )
    u, r = transforms.apply_trust_ratio(
      direction(m_b, v_b, w_b, *scalars), w_norm, u_norm, min_ratio, max_ratio
    )
  else:
    u = direction(m_new, v_new, w, *scalars)
    r = jnp.ones(np.shape(w)[:k], jnp.float32)
  return (-lr_t.astype(rdt) * u).astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype), r


def _unfolded(x: Any, zero: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  return x + zero.astype(x.dtype)


class Options(NamedTuple):
  """The options of one chain of ``lamb`` (one group's), already checked."""

  learning_rate: Any
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  weight_decay: Any
  mask: masks_lib.MaskOrFn
  centralize: bool
  centralize_out_axis: int
  trust_ratio_mask: masks_lib.MaskOrFn
  min_trust_ratio: Any
  max_trust_ratio: Any
  layer_axes: Any
  moment_dtype: Any

  @property
  def hyper(self) -> tuple[Any, ...]:
    """What :func:`leaf_step` takes as ``hyper``."""
    return (self.b1, self.b2, self.eps, self.eps_root, self.min_trust_ratio, self.max_trust_ratio)


def fused_lamb(
  reference: optax.GradientTransformation, o: Options
) -> optax.GradientTransformationExtraArgs:
  """The chain ``reference`` computed in two passes per leaf (arguments already checked)."""
  decays_nothing = schedules.is_positive_constant(o.weight_decay) is False

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    check_step(updates, params)
    first, adam_s, wd_s, _, lr_s = state
    transforms._check_same_structure(updates, adam_s.mu, "the moments (the params at init)")
    count = optax.safe_increment(adam_s.count)
    lr_t = schedules.evaluate(o.learning_rate, lr_s.count)
    n = len(jax.tree.leaves(updates))
    if decays_nothing:
      decay_flags, wd_t = [False] * n, jnp.zeros((), jnp.float32)
    else:
      decay_flags = masks_lib.resolve("mask", o.mask, params)
      wd_t = schedules.evaluate(o.weight_decay, wd_s.count)
    tr_flags = masks_lib.resolve(transforms._TR_MASK, o.trust_ratio_mask, params)
    axes = transforms.resolve_layer_axes(o.layer_axes, params)

    out_u, out_m, out_v, out_r = [], [], [], []
    for g, m, v, w, decay, trust, k in zip(
      jax.tree.leaves(updates),
      jax.tree.leaves(adam_s.mu),
      jax.tree.leaves(adam_s.nu),
      jax.tree.leaves(params),
      decay_flags,
      tr_flags,
      axes,
      strict=True,
    ):
      if o.centralize:
        g = transforms.centralize_leaf(g, o.centralize_out_axis)
      u, m_new, v_new, r = leaf_step(g, m, v, w, count, lr_t, wd_t, decay, trust, k, o.hyper)
      out_u.append(u)
      out_m.append(m_new)
      out_v.append(v_new)
      out_r.append(r)
    tree_def = jax.tree.structure(updates)
    new_state = (
      first,
      transforms.ScaleByAdamState(
        count=count,
        mu=jax.tree.unflatten(tree_def, out_m),
        nu=jax.tree.unflatten(tree_def, out_v),
      ),
      transforms.AddDecayedWeightsState(optax.safe_increment(wd_s.count)),
      transforms.ScaleByTrustRatioState(ratios=jax.tree.unflatten(tree_def, out_r)),
      transforms.ScaleByLearningRateState(optax.safe_increment(lr_s.count)),
    )
    return jax.tree.unflatten(tree_def, out_u), new_state

  return optax.GradientTransformationExtraArgs(reference.init, update_fn)
