"""The engine behind ``lamb``: one loop over the blocks of a layout, two block strategies.

``lamb``'s contract is the chain ``centralize -> scale_by_adam ->
add_decayed_weights -> scale_by_trust_ratio -> scale_by_learning_rate``.
Run as separate blocks, XLA stores the Adam direction ``u`` to take its norm
and reads it again, and each norm is a separate pass. The engine computes the
same math (:mod:`lamb_optax._src.kernels`) in two passes per block:

1. ``m'`` and ``v'`` are written (they are outputs), and the sums of squares of
   ``w`` and of ``u`` are taken with ``u`` recomputed inside the reduction;
2. one elementwise pass reads ``w``, ``m'``, ``v'`` and writes the update
   (which ``optax.apply_updates`` in the same jit turns into ``w'``, in place).

A block (:mod:`lamb_optax._src.layout`) is either one leaf in its own shape
(:func:`solo_step`) or many leaves packed into one ``(rows, width)`` buffer
(:func:`packed_step`), whose sums are row sums summed per leaf, so every
trust ratio is the leaf's (or layer's) own. :func:`lamb_engine` flattens the
tree, runs each block with the strategy its layout says, and rebuilds the
state, once for every layout. The platform's :class:`~lamb_optax.Policy`
says how XLA is led to compile it; it is chosen when the step is lowered.

The state (:class:`LambState`) is the same for every platform and policy:
one step count, the two moments and the last trust ratios, each stored per
block, with the layout as static metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb_optax._src import kernels, schedules, transforms
from lamb_optax._src import layout as layout_lib
from lamb_optax._src import masks as masks_lib
from lamb_optax._src import policy as policy_lib
from lamb_optax._src.layout import Layout, Moments, TrustRatios


class LambState(NamedTuple):
  """State of :func:`lamb_optax.lamb` (the engine; ``fused=False`` keeps the chain's state).

  ``mu``, ``nu`` and ``ratios`` hold one array per block of the layout (a
  leaf's own array, or a packed buffer of many leaves); their ``as_tree()``
  returns them as pytrees like the parameters, and
  :func:`lamb_optax.trust_ratios` reads the ratios.
  """

  count: jax.Array  # shape=(), dtype=int32: steps taken.
  mu: Moments  # per block; dtype mu_dtype (default moment_dtype): the first moment m.
  nu: Moments  # per block; dtype moment_dtype: the second moment v.
  # per block, in the real compute dtype: the trust ratios of the last step (1 before any).
  ratios: TrustRatios
  # one dict per group, {"learning_rate": lr, "weight_decay": wd} (0-d, the widest real
  # compute dtype of the params): the values the next update uses. Read with
  # lamb_optax.group_hyperparams.
  group_hyperparams: tuple[dict[str, jax.Array], ...]


class GroupOptions(NamedTuple):
  """The settings that differ between parameter groups."""

  learning_rate: Any  # a constant or a schedule (already checked)
  weight_decay: Any  # a constant or a schedule (already checked)
  centralize: bool


class Options(NamedTuple):
  """Everything the engine needs, already checked by ``lamb``."""

  groups: tuple[GroupOptions, ...]
  labels: Optional[Callable[[Any], list[int]]]  # params -> group index per leaf; None: group 0
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  mask: masks_lib.MaskOrFn  # the weight-decay mask (within groups: further restricts)
  trust_ratio_mask: masks_lib.MaskOrFn
  min_trust_ratio: Any
  max_trust_ratio: Any
  moment_dtype: Any
  mu_dtype: Any  # None: moment_dtype's rule
  bias_correction: bool
  grad_averaging: bool
  decoupled_decay: bool
  layer_axes: Any
  centralize_out_axis: int
  layout: str  # "auto", "per_leaf" or "packed"
  policy: Optional[policy_lib.Policy]  # None: per platform, when the step is lowered


class _Plan(NamedTuple):
  """Static per-leaf settings for one step (from paths, shapes and the options)."""

  group: list[int]
  decay: list[bool]
  trust: list[bool]
  axes: list[int]


def check_step(updates: Any, params: Any) -> None:
  """What every ``lamb`` update checks first: params given, float updates shaped like them."""
  transforms._require_params(params, "lamb")
  transforms._check_float_leaves("updates", updates)
  transforms._check_same_structure(updates, params)
  transforms._check_no_complex_for_real(updates, params)


def _unfolded(x: Any, zero: jax.Array) -> Any:
  if kernels.is_static_zero(x):
    return x  # a static 0 lets the kernels leave out its operation (kernels.direction)
  x = jnp.asarray(x)
  return x + zero.astype(x.dtype)


def _norms(
  policy: policy_lib.Policy,
  items: Sequence[tuple[Callable[..., jax.Array], tuple]],
  shape: tuple[int, ...],
  k: int,
) -> list[tuple[jax.Array, jax.Array]]:
  """Norms over all axes but the first ``k`` of each ``make(*args)``, as the policy says.

  Every item makes an array of ``shape``. Items are ``(make, args)`` so that
  each branch of the quick sums' ``cond`` builds its own expression inside
  the reduction instead of storing it.
  """
  rest = int(np.prod(shape[k:], dtype=np.int64))
  rows = policy.rows(rest)

  def safe() -> list[tuple[jax.Array, jax.Array]]:
    return kernels.safe_norms([f(*a) for f, a in items], k, rows)

  quick = policy.quick_sums_from
  if quick is None or k or rest < quick:
    return safe()
  xs = [f(*a) for f, a in items]
  rdt = kernels.sums_dtype(*xs)
  sums = [jnp.sum(kernels.abs_sq(x.astype(kernels.compute_dtype(x.dtype))).astype(rdt)) for x in xs]
  bad = functools.reduce(jnp.logical_or, [jnp.isinf(s) | kernels.too_small(s) for s in sums])
  zero = jnp.zeros((), jnp.int32)
  return jax.lax.cond(bad, safe, lambda: [(jnp.sqrt(s), zero) for s in sums])


def _direction(m, v, w, c1, c2, wd, eps, eps_root, *, decay: bool):
  return kernels.direction(m, v, c1, c2, eps, eps_root, *((w, wd) if decay else ()))


def solo_step(
  policy: policy_lib.Policy,
  g: jax.Array,
  m: jax.Array,
  v: jax.Array,
  w: jax.Array,
  scalars: tuple[Any, ...],
  lr: Any,
  *,
  decay: bool,
  trust: bool,
  k: int,
  clip: tuple[Any, Any],
  decoupled: bool = False,
  grad_averaging: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """One leaf's step in its own shape: ``(update, m', v', ratios)``, in the stored dtypes.

  ``scalars`` is ``(b1, b2, c1, c2, wd, eps, eps_root)`` with ``c1, c2`` the
  bias corrections; ``decay``, ``trust`` and ``k`` the leaf's decay flag,
  trust-ratio flag and layer axes. ``decoupled``: a decayed leaf is shrunk by
  ``lr wd w`` outside the trust ratio, whose ``||w||`` is the shrunk weight's.
  """
  b1, b2, *scalars = scalars
  shrink = decay and decoupled
  direction = functools.partial(_direction, decay=decay and not decoupled)
  rdt = kernels.real_dtype(kernels.compute_dtype(g.dtype))
  m_new, v_new = kernels.moments(g, m, v, b1, b2, grad_averaging)
  m_new, v_new = kernels.saturate(m_new, m.dtype), kernels.saturate(v_new, v.dtype)
  if trust:
    scalars_a = list(scalars)
    if policy.own_scalars:
      count_a, _ = jax.lax.optimization_barrier((scalars[0], w))  # with w: one per leaf
      zero = count_a.astype(jnp.float32) * 0  # x + zero is x, but XLA cannot fold it
      scalars_a = [_unfolded(x, zero) for x in scalars]
    items = [(lambda w: w, (w,)), (direction, (m_new, v_new, w, *scalars_a))]
    w_norm, u_norm = _norms(policy, items, np.shape(w), k)
    if shrink:
      w_norm = kernels.shrunk_norm(w_norm, lr, scalars[2])
    m_b, v_b, w_b = (
      jax.lax.optimization_barrier((m_new, v_new, w)) if policy.pass2_barrier else (m_new, v_new, w)
    )
    a, b, r = kernels.trust_factors(w_norm, u_norm, rdt, *clip)
    expand = lambda x: x.reshape(x.shape + (1,) * (np.ndim(w) - k))  # noqa: E731
    update = kernels.apply_ratio(direction(m_b, v_b, w_b, *scalars), expand(a), expand(b), lr)
  else:
    update = kernels.scale_by_lr(direction(m_new, v_new, w, *scalars), lr)
    r = jnp.ones(np.shape(w)[:k], rdt)
  if shrink:
    update = kernels.subtract_decay(update, w, lr, scalars[2])
  return (
    update.astype(g.dtype),
    m_new.astype(m.dtype),
    v_new.astype(v.dtype),
    r,
  )


def _zero_after(xs: list[jax.Array]) -> jax.Array:
  """A float32 0 that XLA can only compute once every array of ``xs`` is: orders the buckets.

  Each bucket's gathers add it, so a bucket starts after the one before has
  made its updates. XLA then applies each bucket's updates before the next
  bucket's buffers exist, instead of gathering every bucket first (which kept
  2x the packed parameters alive; optimization barriers do not do this, XLA
  removes them before it schedules). It sums one array per shape and dtype
  (:func:`_cut` makes all arrays of one shape and dtype in one reduction);
  ``s * 0`` is not folded for floats (inf and NaN), and ``s`` is mapped to 0
  where it is not finite, so the result is always +-0 and adding it changes
  nothing.
  """
  firsts = {(x.shape, x.dtype): x for x in reversed(xs) if x.size}
  s = functools.reduce(
    jnp.add, [jnp.real(jnp.sum(x)).astype(jnp.float32) for x in firsts.values()], jnp.float32(0)
  )
  return jnp.where(jnp.isfinite(s), s, 0) * 0


def _cut(outs: list[jax.Array], below: int) -> list[jax.Array]:
  """The same arrays, those under ``below`` elements cut into their own buffers by reductions.

  A per-leaf kernel that slices a shared buffer differs from every other one
  (its offset is a constant), so XLA compiles each; after this, the kernels
  that consume the leaves are identical and compile once. Large leaves are few
  (their compile time is small next to their step time), and XLA:CPU runs a
  reduction about 4x slower than a loop, so they stay slices.
  """
  groups: dict[tuple, list[int]] = {}
  for i, x in enumerate(outs):
    if 0 < x.size < below:
      groups.setdefault((x.shape, x.dtype), []).append(i)
  result = list(outs)
  for idx in groups.values():
    if len(idx) > 1:
      parts = kernels.variadic_sums(
        [jnp.stack([outs[i], jnp.zeros_like(outs[i])]) for i in idx], (0,)
      )
      for i, part in zip(idx, parts, strict=True):
        result[i] = part
  return result


def packed_step(
  policy: policy_lib.Policy,
  layout: Layout,
  b: int,
  grads: list[jax.Array],
  weights: list[jax.Array],
  m: jax.Array,
  v: jax.Array,
  scalars: tuple[Any, ...],
  seg: dict[str, Any],
  zero: jax.Array,
  clip: tuple[Any, Any],
  decoupled: bool = False,
  grad_averaging: bool = True,
) -> tuple[list[jax.Array], jax.Array, jax.Array, jax.Array]:
  """One packed bucket's step: ``(updates of its leaves, m', v', ratios)``.

  ``seg`` holds the bucket's per-segment settings: ``lr`` and ``wd`` (arrays,
  or scalars when every segment shares them; ``wd`` None when nothing
  decays) and ``trust`` (a static bool vector). ``decoupled`` as in
  :func:`solo_step`.
  """
  block = layout.blocks[b]
  b1, b2, c1, c2, eps, eps_root = scalars
  cdt, rdt = layout_lib.kernel_dtype(block)
  col = lambda x: layout_lib.per_row(x, layout, b) if np.ndim(x) else x  # noqa: E731
  wd = None if seg["wd"] is None else col(seg["wd"])
  shrink = wd is not None and decoupled
  trust = seg["trust"]
  g = layout_lib.gather(grads, layout, b, cdt, zero)
  m_new, v_new = kernels.moments(g, m, v, b1, b2, grad_averaging)
  m_new, v_new = kernels.saturate(m_new, m.dtype), kernels.saturate(v_new, v.dtype)
  w = layout_lib.gather(weights, layout, b, cdt, zero) if trust.any() or wd is not None else None
  in_direction = wd is not None and not decoupled

  def direction(m_, v_):
    return kernels.direction(m_, v_, c1, c2, eps, eps_root, *((w, wd) if in_direction else ()))

  if trust.any():
    squares = kernels.scaled_squares(w, rdt) + kernels.scaled_squares(direction(m_new, v_new), rdt)
    sums = [layout_lib.segment_sums(s, layout, b) for s in kernels.variadic_sums(squares, (1,))]
    w_norm, u_norm = kernels.norm_parts(*sums[:3]), kernels.norm_parts(*sums[3:])
    if shrink:
      w_norm = kernels.shrunk_norm(w_norm, seg["lr"], seg["wd"])
    factors = kernels.trust_factors(w_norm, u_norm, rdt, *clip)
    if not trust.all():
      factors = tuple(jnp.where(trust, f, jnp.ones((), rdt)) for f in factors)
    a, b_, ratio = factors
    m_b, v_b = (
      jax.lax.optimization_barrier((m_new, v_new)) if policy.pass2_barrier else (m_new, v_new)
    )
    u = kernels.apply_ratio(direction(m_b, v_b), col(a), col(b_), col(seg["lr"]))
  else:
    ratio = jnp.ones(block.segments, rdt)
    u = kernels.scale_by_lr(direction(m_new, v_new), col(seg["lr"]))
  if shrink:
    u = kernels.subtract_decay(u, w, col(seg["lr"]), wd)
  cut = [
    layout_lib.from_rows(u, layout.leaves[i]).astype(grads[i].dtype)
    if layout.leaves[i].seg_rows and layout.leaves[i].nseg
    else jnp.zeros(layout.leaves[i].shape, grads[i].dtype)
    for i in block.members
  ]
  return (
    _cut(cut, policy.cut_below),
    m_new.astype(m.dtype),
    v_new.astype(v.dtype),
    ratio,
  )


def lamb_engine(o: Options) -> optax.GradientTransformationExtraArgs:
  """The LAMB transformation for checked options (``lamb`` builds them)."""
  decays_nothing = [schedules.is_positive_constant(g.weight_decay) is False for g in o.groups]

  def moment_dtypes(dtype: Any) -> tuple[np.dtype, np.dtype]:
    nu = transforms.default_moment_dtype(dtype, o.moment_dtype)
    return (nu if o.mu_dtype is None else np.dtype(o.mu_dtype)), nu

  def describe(params: Any) -> tuple[tuple[str, ...], tuple, tuple]:
    named = masks_lib.named_leaves(params)
    return (
      tuple(p for p, _ in named),
      tuple(tuple(np.shape(x)) for _, x in named),
      tuple(np.dtype(x.dtype) for _, x in named),
    )

  def layout_of(params: Any) -> Layout:
    paths, shapes, dtypes = describe(params)
    return layout_lib.make_layout(
      jax.tree.structure(params),
      paths,
      shapes,
      dtypes,
      tuple(transforms.resolve_layer_axes(o.layer_axes, params)),
      tuple(moment_dtypes(d) for d in dtypes),
      o.layout,
    )

  def plan_of(params: Any) -> _Plan:
    n = len(jax.tree.leaves(params))
    group = o.labels(params) if o.labels is not None else [0] * n
    mask = masks_lib.resolve("mask", o.mask, params)
    decay = [f and not decays_nothing[gi] for f, gi in zip(mask, group, strict=True)]
    if isinstance(o.trust_ratio_mask, str) and o.trust_ratio_mask == "decay":
      trust = list(decay)  # the ratio applies exactly where weight decay does
    else:
      trust = masks_lib.resolve(transforms._TR_MASK, o.trust_ratio_mask, params)
    return _Plan(group, decay, trust, transforms.resolve_layer_axes(o.layer_axes, params))

  def hyper_dtype(weights: list[Any]) -> np.dtype:
    # Learning rates and weight decays in the widest real dtype the tree computes in: float64
    # parameters keep float64 hyperparameters (each block casts to its own).
    return np.result_type(*[kernels.real_dtype(kernels.compute_dtype(w.dtype)) for w in weights])

  def hyperparams_at(count: jax.Array, hdt: np.dtype) -> tuple[dict[str, jax.Array], ...]:
    """Each group's learning rate and weight decay at step ``count`` (0-based)."""
    return tuple(
      {
        "learning_rate": schedules.evaluate(
          g.learning_rate, count, hdt, _name(o, i, "learning_rate")
        ),
        "weight_decay": jnp.zeros((), hdt)
        if nothing
        else schedules.evaluate(g.weight_decay, count, hdt, _name(o, i, "weight_decay")),
      }
      for i, (g, nothing) in enumerate(zip(o.groups, decays_nothing, strict=True))
    )

  def init_fn(params):
    if not jax.tree.leaves(params):
      if params is None or isinstance(params, (dict, list, tuple)):
        raise ValueError(f"`params` has no array leaves: {params!r}.")
      # An empty custom node is optax.tree.map_params' probe: say where params-like values are.
      count = jnp.zeros([], jnp.int32)
      return LambState(count, params, params, params, hyperparams_at(count, np.dtype("float32")))
    transforms._check_float_leaves("params", params)
    plan_of(params)  # a bad mask, layer_axes or group fails here, before any step
    layout_lib.register_with_flax()
    layout = layout_of(params)
    leaves = jax.tree.leaves(params)

    def zeros(b: int, which: str) -> jax.Array:
      # Computed from the parameters, so that XLA places them where the parameters are: a
      # solo block sharded like its parameter, a packed one as the update's gathers place it.
      block = layout.blocks[b]
      dtype = block.mu_dtype if which == "mu" else block.nu_dtype
      if block.solo:
        return transforms.zeros_like_sharded(leaves[block.members[0]], dtype)
      packed = layout_lib.gather(leaves, layout, b, block.param_dtype)
      return transforms.zeros_like_sharded(packed, dtype)

    def ones(b: int) -> jax.Array:
      block = layout.blocks[b]
      rdt = layout_lib.kernel_dtype(block)[1]  # ratios are kept in the real compute dtype
      if not block.solo:  # as the update's ratios: segment sums of row sums
        rows = jnp.sum(transforms.zeros_like_sharded(mu[b], rdt), axis=1)
        return layout_lib.segment_sums(rows, layout, b) + 1
      p, k = leaves[block.members[0]], layout.leaves[block.members[0]].k
      # computed from p, so that per-layer ratios shard like p's layer axes
      return jnp.sum(transforms.zeros_like_sharded(p, rdt), axis=tuple(range(k, p.ndim))) + 1

    n = len(layout.blocks)
    mu = tuple(zeros(b, "mu") for b in range(n))
    count = jnp.zeros([], jnp.int32)
    return LambState(
      count=count,
      mu=Moments(mu, layout),
      nu=Moments(tuple(zeros(b, "nu") for b in range(n)), layout),
      ratios=TrustRatios(tuple(map(ones, range(n))), layout),
      group_hyperparams=hyperparams_at(count, hyper_dtype(leaves)),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    check_step(updates, params)
    if not isinstance(state, LambState):
      raise TypeError(
        "`state` must be the state that this optimizer's `init` returned (a LambState), got"
        f" {type(state).__name__}. A checkpoint restored without a target is a plain dict:"
        " restore it against `jax.eval_shape(tx.init, params)`."
      )
    layout = state.mu.layout
    layout.check_matches(*describe(params))
    plan = plan_of(params)
    count = optax.safe_increment(state.count)
    grads = jax.tree.leaves(updates)
    grads = [
      transforms.centralize_leaf(g, o.centralize_out_axis) if o.groups[gi].centralize else g
      for g, gi in zip(grads, plan.group, strict=True)
    ]
    weights = jax.tree.leaves(params)
    hdt = hyper_dtype(weights)
    now = hyperparams_at(state.count, hdt)
    lrs = [h["learning_rate"] for h in now]
    wds = [h["weight_decay"] for h in now]
    clip = (o.min_trust_ratio, o.max_trust_ratio)

    def run(policy: policy_lib.Policy):
      outs: list[Any] = [None] * len(grads)
      new_m, new_v, new_r = [], [], []
      zero = jnp.zeros((), jnp.float32)
      for b, block in enumerate(layout.blocks):
        rdt = layout_lib.kernel_dtype(block)[1]
        c1, c2 = kernels.corrections(count, o.b1, o.b2, rdt, o.bias_correction)
        if block.solo:
          i = block.members[0]
          gi = plan.group[i]
          scalars = (o.b1, o.b2, c1, c2, wds[gi], o.eps, o.eps_root)
          outs[i], m_new, v_new, r = solo_step(
            policy, grads[i], state.mu.values[b], state.nu.values[b], weights[i], scalars,
            lrs[gi], decay=plan.decay[i], trust=plan.trust[i], k=plan.axes[i], clip=clip,
            decoupled=o.decoupled_decay, grad_averaging=o.grad_averaging,
          )  # fmt: skip
        else:
          seg = _segment_settings(layout, b, plan, lrs, wds)
          cut, m_new, v_new, r = packed_step(
            policy, layout, b, grads, weights, state.mu.values[b], state.nu.values[b],
            (o.b1, o.b2, c1, c2, o.eps, o.eps_root), seg, zero, clip,
            o.decoupled_decay, o.grad_averaging,
          )  # fmt: skip
          for i, out in zip(block.members, cut, strict=True):
            outs[i] = out
          if policy.ordered_buckets:
            zero = _zero_after(cut)
        new_m.append(m_new)
        new_v.append(v_new)
        new_r.append(transforms.reuse_buffer(state.ratios.values[b], r))
      return outs, tuple(new_m), tuple(new_v), tuple(new_r)

    outs, mu, nu, ratios = policy_lib.per_platform(run, o.policy, (updates, state, params))
    # The layout made at init stays: a state keeps one structure (scan carries, nnx).
    upcoming = jax.tree.map(
      transforms.reuse_buffer, state.group_hyperparams, hyperparams_at(count, hdt)
    )
    new_state = LambState(
      count, Moments(mu, layout), Moments(nu, layout), TrustRatios(ratios, layout), upcoming
    )
    return jax.tree.unflatten(jax.tree.structure(updates), outs), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _name(o: Options, group: int, what: str) -> str:
  """How an error names a group's learning rate or weight decay."""
  if o.labels is None:
    return what
  return f"groups[{group}]['{'lr' if what == 'learning_rate' else what}']"


def _segment_settings(
  layout: Layout, b: int, plan: _Plan, lrs: list[jax.Array], wds: list[jax.Array]
) -> dict[str, Any]:
  """A packed bucket's learning rate, weight decay and trust flag per segment."""
  group = layout.seg_values(b, plan.group, np.int32)
  decay = layout.seg_values(b, plan.decay, np.bool_)
  trust = layout.seg_values(b, plan.trust, np.bool_)

  def per_segment(values: list[jax.Array], where: Optional[np.ndarray] = None) -> Any:
    if where is not None and not where.any():
      return None
    if not group.size:  # a bucket of empty leaves
      return values[0]
    if (where is None or where.all()) and (group == group[0]).all():
      return values[group[0]]
    table = jnp.stack(values)
    picked = table[group]
    return picked if where is None else jnp.where(where, picked, 0)

  return {"lr": per_segment(lrs), "wd": per_segment(wds, decay), "trust": trust}
