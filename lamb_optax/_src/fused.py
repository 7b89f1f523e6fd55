"""The default ``lamb`` update: the chain's math, fused per leaf into two passes.

``lamb``'s contract is the chain ``centralize | identity -> scale_by_adam ->
add_decayed_weights -> scale_by_trust_ratio -> scale_by_learning_rate``. Run
as separate blocks, XLA materialises the Adam direction ``u`` to take its norm
and then reads it again (XLA:CPU runs a reduction as its own kernel), and each
norm is a separate pass. Here each leaf takes two passes over memory:

1. m' and v' are written (they are outputs), then one variadic reduction reads
   w, m', v' and sums the squares of w and of u (three sums each, see
   ``transforms.safe_norms``), u recomputed inside the reduction;
2. one elementwise pass reads w, m', v' and writes the update (which
   ``optax.apply_updates`` in the same jit turns into w', in place).

``jax.lax.optimization_barrier`` keeps XLA from merging the two recomputations
of ``u`` into one materialised array. The state is exactly the chain's state
(same structure, same values), so the two are interchangeable, checkpoints
included; ``lamb(..., fused=False)`` runs the chain itself.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb_optax._src import masks as masks_lib
from lamb_optax._src import schedules, transforms


def fused_lamb(
  reference: optax.GradientTransformation,
  *,
  learning_rate: Any,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  weight_decay: Any,
  mask: masks_lib.MaskOrFn,
  centralize: bool,
  centralize_out_axis: int,
  trust_ratio_mask: masks_lib.MaskOrFn,
  min_trust_ratio: Any,
  max_trust_ratio: Any,
  layer_axes: Any,
) -> optax.GradientTransformationExtraArgs:
  """The chain ``reference`` computed in two passes per leaf (arguments already checked)."""
  decays_nothing = schedules.is_positive_constant(weight_decay) is False

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    transforms._require_params(params, "lamb")
    transforms._check_float_leaves("updates", updates)
    transforms._check_same_structure(updates, params)
    first, adam_s, wd_s, _, lr_s = state
    transforms._check_same_structure(updates, adam_s.mu, "the moments (the params at init)")
    count = optax.safe_increment(adam_s.count)
    lr_t = schedules.evaluate(learning_rate, lr_s.count)
    n = len(jax.tree.leaves(updates))
    if decays_nothing:
      decay_flags, wd_t = [False] * n, jnp.zeros((), jnp.float32)
    else:
      decay_flags = masks_lib.resolve("mask", mask, params)
      wd_t = schedules.evaluate(weight_decay, wd_s.count)
    tr_flags = masks_lib.resolve(transforms._TR_MASK, trust_ratio_mask, params)
    axes = transforms.resolve_layer_axes(layer_axes, params)

    def direction(m_new, v_new, w, decay):
      u = transforms.adam_direction(m_new, v_new, count, b1, b2, eps, eps_root)
      if decay:
        rdt = transforms._real_dtype(u.dtype)
        u = u + wd_t.astype(rdt) * w.astype(u.dtype)
      return u

    out_u, out_m, out_v, out_r = [], [], [], []
    leaves = zip(
      jax.tree.leaves(updates),
      jax.tree.leaves(adam_s.mu),
      jax.tree.leaves(adam_s.nu),
      jax.tree.leaves(params),
      decay_flags,
      tr_flags,
      axes,
      strict=True,
    )
    # Pass 1: new moments (written once, they are outputs) and, for every leaf
    # with a trust ratio, the sums of squares of w and of u, with u recomputed
    # inside the reduction from the new moments.
    work = []
    for g, m, v, w, decay, trust, k in leaves:
      if centralize:
        g = transforms.centralize_leaf(g, centralize_out_axis)
      m_new, v_new = transforms.adam_moments(g, m, v, count, b1, b2)
      work.append((g, m, v, w, decay, trust, k, m_new, v_new))
    norms = []
    for _, _, _, w, decay, trust, k, m_new, v_new in work:
      if trust:
        norms += transforms.safe_norms(
          [
            (lambda w: w, (w,), k),
            (lambda m, v, w, d=decay: direction(m, v, w, d), (m_new, v_new, w), k),
          ]
        )
    norms = iter(norms)
    # Pass 2: the update. The barrier stops XLA from merging this u with pass 1's
    # into one stored array.
    for g, m, v, w, decay, trust, k, m_new, v_new in work:
      if trust:
        w_norm, u_norm = next(norms), next(norms)
        m_b, v_b, w_b = jax.lax.optimization_barrier((m_new, v_new, w))
        u = direction(m_b, v_b, w_b, decay)
        u, r = transforms.apply_trust_ratio(u, w_norm, u_norm, min_trust_ratio, max_trust_ratio)
      else:
        u = direction(m_new, v_new, w, decay)
        r = jnp.ones(np.shape(w)[:k], jnp.float32)
      rdt = transforms._real_dtype(u.dtype)
      out_u.append((-lr_t.astype(rdt) * u).astype(g.dtype))
      out_m.append(m_new.astype(m.dtype))
      out_v.append(v_new.astype(v.dtype))
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
