"""``lamb(..., multi_tensor=True)``: the LAMB step on a few flat buffers, not one array per leaf.

With thousands of leaves a step costs host time per buffer passed in and out
(a few microseconds each) and XLA compile time per distinct kernel (XLA:CPU
compiles each fusion that differs from the others, tens of milliseconds each;
identical fusions are compiled once). Here, as apex's ``multi_tensor_apply``:

* m and v of leaves under ``_SPLIT_BELOW`` elements live in one 2-D buffer
  per bucket of up to ``_SPLIT`` leaves (same parameter dtype, moment dtype,
  decay flag and trust-ratio flag; at least ``_MIN_BUCKETS`` buckets per
  such key where it has that many leaves), each leaf (each layer of a leaf with
  ``layer_axes``) padded with zeros to a whole number of rows, so the state
  is a handful of buffers whatever the number of small leaves;
* the moments are one elementwise pass over each bucket, and the sums of
  squares of w and of u are row sums (one variadic reduction), summed per
  leaf or layer (a segment sum), so every trust ratio is exactly the
  per-leaf (per-layer) ratio of the default path;
* the per-leaf updates are cut out of the buffers by one variadic reduction
  per bucket and leaf shape, so that the per-leaf kernels that follow
  (``optax.apply_updates``) are identical and compile once;
* the buckets run one after the other: each bucket's gathers wait for the
  updates of the bucket before (:func:`_zero_after`), so XLA applies those
  updates before it makes the next bucket's buffers, and the temporaries are
  about 2x one bucket instead of 2x every packed leaf;
* larger leaves are few whatever the model (memory bounds them), so each
  keeps its own arrays (sharded like the parameter) and runs the default
  path's :func:`fused.leaf_step`: on CPU packing them would only add copies.
  ``lamb(multi_tensor="all")`` packs them too (``pack_all``), for GPUs, where
  fewer and larger kernels and buffers are what counts; their updates are
  returned as slices of the flat update (``_CUT_BELOW``).

Padding is zero in g, w, m and v, so it adds nothing to any sum. The ratios
are kept per bucket as vectors, with the layout as static pytree metadata so
:func:`lamb_optax.trust_ratios` can map them back to the leaves.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb_optax._src import fused, schedules, transforms
from lamb_optax._src import masks as masks_lib

# Row widths tried, widest first; the widest whose padding adds at most 1/16 wins,
# else 2. Never 1: XLA rewrites a one-element (x * 2**64)**2 as x**2 * 2**128,
# which overflows float32 (see transforms.safe_norms).
_WIDTHS = tuple(2**i for i in range(12, 0, -1))
# Leaves per bucket. Buckets of the same shapes compile to the same kernels
# (XLA compiles those once), and a concatenation's compile time grows with the
# square of its operand count.
_SPLIT = 64
# A key's small leaves fill at least this many buckets where they can (each
# holds at most 1/_MIN_BUCKETS of their elements, or one leaf): one bucket's
# work keeps about 2x its own size in temporaries (see _zero_after), so XLA
# temporaries stay near 2/_MIN_BUCKETS of the packed parameters.
_MIN_BUCKETS = 4
_ORDERED = True  # buckets wait for each other (_zero_after); a switch for step_bench's TRIALS
_SPLIT_BELOW = 2**16  # leaves smaller than this are packed into buckets
_CUT_BELOW = 2**16  # updates smaller than this are cut out by variadic reductions (see _split)


@dataclasses.dataclass(frozen=True)
class _Leaf:
  bucket: int
  shape: tuple[int, ...]
  k: int  # layer axes: the leaf holds prod(shape[:k]) segments (trust ratios)
  row: int  # first row in the bucket's buffers
  seg: int  # first segment in the bucket's ratio vector
  nseg: int
  seg_len: int  # elements per segment
  seg_rows: int  # rows per segment (seg_len padded to a multiple of the width)


@dataclasses.dataclass(frozen=True)
class _Bucket:
  param_dtype: np.dtype
  moment_dtype: np.dtype
  decay: bool
  trust: bool
  width: int  # 0 for a solo bucket: one large leaf, stored in its own shape
  rows: int
  segments: int
  uniform: bool  # every segment has the same number of rows: segment sums are a reshape

  @property
  def solo(self) -> bool:
    return self.width == 0


class Layout:
  """Where each leaf lives in the flat buffers (static; hashed once)."""

  def __init__(self, treedef: Any, leaves: tuple[_Leaf, ...], buckets: tuple[_Bucket, ...]):
    self.treedef, self.leaves, self.buckets = treedef, leaves, buckets
    self._key = (treedef, leaves, buckets)
    self._hash = hash(self._key)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return self is other or (
      isinstance(other, Layout) and self._hash == other._hash and self._key == other._key
    )

  def __repr__(self) -> str:
    return f"Layout({len(self.leaves)} leaves in {len(self.buckets)} buckets)"

  def same_storage(self, other: Layout) -> bool:
    """Same buffers and leaf placement; the tree's node types may differ (nnx wraps leaves)."""
    return self is other or (self.leaves, self.buckets) == (other.leaves, other.buckets)

  def seg_of_row(self, b: int) -> np.ndarray:
    return np.concatenate(
      [np.zeros(0, np.int32)]
      + [
        np.repeat(np.arange(x.seg, x.seg + x.nseg, dtype=np.int32), x.seg_rows)
        for x in self.leaves
        if x.bucket == b
      ]
    )


@jax.tree_util.register_pytree_with_keys_class
class MultiTensorRatios:
  """The trust ratios of the last step, one float32 vector per bucket.

  :func:`lamb_optax.trust_ratios` returns them as a pytree like the params.
  """

  def __init__(self, values: tuple[Any, ...], layout: Layout):
    self.values, self.layout = values, layout

  def tree_flatten_with_keys(self):
    return [(jax.tree_util.GetAttrKey("values"), self.values)], self.layout

  def tree_flatten(self):
    return (self.values,), self.layout

  @classmethod
  def tree_unflatten(cls, layout, children):
    return cls(children[0], layout)

  def __repr__(self) -> str:
    return f"MultiTensorRatios({self.values!r}, {self.layout!r})"

  def as_tree(self) -> Any:
    """The ratios as a pytree like the params (``MaskedNode`` kept where it was)."""
    leaves = [
      self.values[x.bucket]
      if self.layout.buckets[x.bucket].solo
      else self.values[x.bucket][x.seg : x.seg + x.nseg].reshape(x.shape[: x.k])
      for x in self.layout.leaves
    ]
    return jax.tree.unflatten(self.layout.treedef, leaves)


_flax_registered = False


def _register_with_flax() -> None:
  """Teach ``flax.serialization`` (msgpack checkpoints) the ratios node, if flax is in use.

  flax is not a dependency: this runs at ``init`` and only when flax is already imported.
  """
  global _flax_registered
  serialization = sys.modules.get("flax.serialization")
  if _flax_registered or serialization is None:
    return
  serialization.register_serialization_state(
    MultiTensorRatios,
    lambda r: {"values": serialization.to_state_dict(r.values)},
    lambda target, state: MultiTensorRatios(
      serialization.from_state_dict(target.values, state["values"]), target.layout
    ),
    override=True,
  )
  _flax_registered = True


def _width(seg_lens: list[tuple[int, int]]) -> int:
  total = sum(n * s for n, s in seg_lens)
  for w in _WIDTHS:
    padded = sum(n * -(-s // w) * w for n, s in seg_lens)
    if padded * 16 <= total * 17:
      return w
  return 2


def _chunks(items: list[int], sizes: list[int]) -> list[list[int]]:
  """``items`` in order, cut into runs of at most ``_SPLIT`` items and about
  ``sum(sizes) / _MIN_BUCKETS`` elements (a run holds at least one item)."""
  cap = -(-sum(sizes) // _MIN_BUCKETS)
  runs: list[list[int]] = []
  total = 0
  for item, size in zip(items, sizes, strict=True):
    if not runs or len(runs[-1]) == _SPLIT or (runs[-1] and total + size > cap):
      runs.append([])
      total = 0
    runs[-1].append(item)
    total += size
  return runs


@functools.lru_cache(maxsize=64)
def _layout(treedef, shapes, dtypes, decay, trust, axes, moment_dtype, pack_all) -> Layout:
  keys: dict[tuple, int] = {}
  owner = []
  for dt, d, t in zip(dtypes, decay, trust, strict=True):
    key = (dt, transforms.default_moment_dtype(dt, moment_dtype), d, t)
    owner.append(keys.setdefault(key, len(keys)))
  buckets, leaves = [], [None] * len(shapes)
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  below = np.inf if pack_all else _SPLIT_BELOW
  for key, k in keys.items():
    same_key = [i for i, o in enumerate(owner) if o == k]
    small = [i for i in same_key if sizes[i] < below]
    small_set = set(small)
    for i in same_key:
      if i not in small_set:  # a large leaf keeps its own shape (and sharding)
        nseg = int(np.prod(shapes[i][: axes[i]], dtype=np.int64))
        seg_len = int(np.prod(shapes[i][axes[i] :], dtype=np.int64))
        leaves[i] = _Leaf(len(buckets), shapes[i], axes[i], 0, 0, nseg, seg_len, 0)
        buckets.append(_Bucket(*key, 0, 0, nseg, True))
    for members in _chunks(small, [sizes[i] for i in small]):
      b = len(buckets)
      segs = [
        (int(np.prod(shapes[i][: axes[i]], dtype=np.int64)), int(np.prod(shapes[i][axes[i] :])))
        for i in members
      ]
      width = _width(segs)
      row = seg = 0
      rows_per_seg = set()
      for i, (nseg, seg_len) in zip(members, segs, strict=True):
        seg_rows = -(-seg_len // width)
        leaves[i] = _Leaf(b, shapes[i], axes[i], row, seg, nseg, seg_len, seg_rows)
        row += nseg * seg_rows
        seg += nseg
        rows_per_seg.add(seg_rows)
      buckets.append(_Bucket(*key, width, row, seg, len(rows_per_seg) <= 1))
  return Layout(treedef, tuple(leaves), tuple(buckets))


def _to_rows(x: jax.Array, leaf: _Leaf, width: int, dtype: Any) -> jax.Array:
  x = x.astype(dtype).reshape(leaf.nseg, leaf.seg_len)
  pad = leaf.seg_rows * width - leaf.seg_len
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad)))
  return x.reshape(leaf.nseg * leaf.seg_rows, width)


def _from_rows(buf: jax.Array, leaf: _Leaf) -> jax.Array:
  x = buf[leaf.row : leaf.row + leaf.nseg * leaf.seg_rows].reshape(leaf.nseg, -1)
  return x[:, : leaf.seg_len].reshape(leaf.shape)


def _gather(xs: list[jax.Array], layout: Layout, b: int, dtype: Any, zero: Any = 0) -> jax.Array:
  """Bucket b's leaves of ``xs`` as its ``(rows, width)`` buffer; ``zero`` is added to the first.

  A ``zero`` computed from an earlier bucket makes this gather wait for it.
  """
  bucket = layout.buckets[b]
  parts = [
    _to_rows(x, leaf, bucket.width, dtype)
    for x, leaf in zip(xs, layout.leaves, strict=True)
    if leaf.bucket == b and leaf.seg_rows
  ]
  if not parts:
    return jnp.zeros((0, bucket.width), dtype)
  parts[0] = parts[0] + jnp.asarray(zero).astype(parts[0].dtype)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def _segment_sums(row_sums: jax.Array, layout: Layout, b: int) -> jax.Array:
  bucket = layout.buckets[b]
  if not bucket.rows:
    return jnp.zeros(bucket.segments, row_sums.dtype)
  if bucket.uniform:
    return row_sums.reshape(bucket.segments, -1).sum(axis=1)
  return jax.ops.segment_sum(
    row_sums, layout.seg_of_row(b), num_segments=bucket.segments, indices_are_sorted=True
  )


def _zero_after(xs: list[jax.Array]) -> jax.Array:
  """A float32 0 that XLA can only compute once every array of ``xs`` is: orders the buckets.

  Each bucket's gathers add it, so a bucket starts after the one before has
  made its updates. XLA then applies each bucket's updates before the next
  bucket's buffers exist, instead of gathering every bucket first (which kept
  2x the packed parameters alive). It sums one array per shape and dtype
  (:func:`_split` makes all arrays of one shape and dtype in one reduction);
  ``s * 0`` is not folded for floats (inf and NaN), and ``s`` is mapped to 0
  where it is not finite, so the result is always +-0 and adding it changes
  nothing.
  """
  firsts = {(x.shape, x.dtype): x for x in reversed(xs) if x.size}
  s = functools.reduce(
    jnp.add, [jnp.real(jnp.sum(x)).astype(jnp.float32) for x in firsts.values()], jnp.float32(0)
  )
  return jnp.where(jnp.isfinite(s), s, 0) * 0


def _sums(operands: list[jax.Array], axis: int) -> list[jax.Array]:
  """Sums of arrays of one shape along ``axis``, all in one variadic reduction."""
  zero = [jnp.zeros((), x.dtype) for x in operands]
  add = lambda a, c: [x + y for x, y in zip(a, c, strict=True)]  # noqa: E731
  return jax.lax.reduce(operands, zero, add, (axis,))


def _per_row(values: jax.Array, layout: Layout, b: int) -> jax.Array:
  """A per-segment vector as a ``(rows, 1)`` column that broadcasts over the buffer."""
  bucket = layout.buckets[b]
  if bucket.uniform and bucket.rows:
    rows = jnp.broadcast_to(values[:, None], (bucket.segments, bucket.rows // bucket.segments))
    return rows.reshape(bucket.rows, 1)
  return values[layout.seg_of_row(b)][:, None]


def _split(outs: list[jax.Array]) -> list[jax.Array]:
  """The same arrays, each cut into its own buffer by a few variadic reductions.

  A per-leaf kernel that slices a shared buffer differs from every other one
  (its offset is a constant), so XLA compiles each; after this, the kernels
  that consume the leaves are identical and compile once. Only leaves under
  ``_CUT_BELOW`` elements are cut this way: XLA:CPU runs a reduction about
  4x slower than a loop, and large leaves are few (their compile time is small
  next to their step time).
  """
  groups: dict[tuple, list[int]] = {}
  for i, x in enumerate(outs):
    if 0 < x.size < _CUT_BELOW:
      groups.setdefault((x.shape, x.dtype), []).append(i)
  result = list(outs)
  for idx in groups.values():
    if len(idx) == 1:
      continue
    parts = _sums([jnp.stack([outs[i], jnp.zeros_like(outs[i])]) for i in idx], 0)
    for i, part in zip(idx, parts, strict=True):
      result[i] = part
  return result


def multi_tensor_lamb(
  reference: optax.GradientTransformation, o: fused.Options, *, pack_all: bool = False
) -> optax.GradientTransformationExtraArgs:
  """The chain ``reference`` computed on flat buffers (arguments already checked).

  ``pack_all`` packs every leaf (``lamb(multi_tensor="all")``), not only those
  under ``_SPLIT_BELOW`` elements.
  """
  decays_nothing = schedules.is_positive_constant(o.weight_decay) is False

  def layout_of(params: Any) -> Layout:
    leaves = jax.tree.leaves(params)
    n = len(leaves)
    decay = (False,) * n if decays_nothing else tuple(masks_lib.resolve("mask", o.mask, params))
    return _layout(
      jax.tree.structure(params),
      tuple(tuple(np.shape(x)) for x in leaves),
      tuple(np.dtype(x.dtype) for x in leaves),
      decay,
      tuple(masks_lib.resolve(transforms._TR_MASK, o.trust_ratio_mask, params)),
      tuple(transforms.resolve_layer_axes(o.layer_axes, params)),
      None if o.moment_dtype is None else np.dtype(o.moment_dtype),
      pack_all,
    )

  def init_fn(params):
    jax.eval_shape(reference.init, params)  # every check of the chain's init, nothing computed
    _register_with_flax()
    layout = layout_of(params)
    # The parameter and layer axes of each bucket's (last) leaf: what a solo bucket holds.
    solo = {x.bucket: (p, x.k) for x, p in zip(layout.leaves, jax.tree.leaves(params), strict=True)}

    def zeros():
      return tuple(
        transforms.zeros_like_sharded(solo[i][0], b.moment_dtype)
        if b.solo
        else jnp.zeros((b.rows, b.width), b.moment_dtype)
        for i, b in enumerate(layout.buckets)
      )

    def ones(i, b):
      if not b.solo:
        return jnp.ones(b.segments, jnp.float32)
      p, k = solo[i]
      # as the default path: computed from p, so per-layer ratios shard like p
      return (
        jnp.sum(transforms.zeros_like_sharded(p, jnp.float32), axis=tuple(range(k, p.ndim))) + 1
      )

    return (
      optax.EmptyState(),
      transforms.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros()),
      transforms.AddDecayedWeightsState(count=jnp.zeros([], jnp.int32)),
      transforms.ScaleByTrustRatioState(
        ratios=MultiTensorRatios(tuple(ones(i, b) for i, b in enumerate(layout.buckets)), layout)
      ),
      transforms.ScaleByLearningRateState(count=jnp.zeros([], jnp.int32)),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    fused.check_step(updates, params)
    first, adam_s, wd_s, tr_s, lr_s = state
    layout = layout_of(params)
    if not isinstance(tr_s.ratios, MultiTensorRatios) or not tr_s.ratios.layout.same_storage(
      layout
    ):
      raise ValueError(
        "The optimizer state was made by `init` for parameters of another structure, shape or"
        f" dtype (multi_tensor state {getattr(tr_s.ratios, 'layout', tr_s.ratios)!r}, params"
        f" {layout!r}); call `init` on these parameters."
      )
    count = optax.safe_increment(adam_s.count)
    lr_t = schedules.evaluate(o.learning_rate, lr_s.count)
    wd_t = (
      jnp.zeros((), jnp.float32)
      if decays_nothing
      else schedules.evaluate(o.weight_decay, wd_s.count)
    )
    grads = jax.tree.leaves(updates)
    if o.centralize:
      grads = [transforms.centralize_leaf(g, o.centralize_out_axis) for g in grads]
    weights = jax.tree.leaves(params)
    outs: list[Any] = [None] * len(grads)
    new_m, new_v, new_r = [], [], []
    zero = jnp.zeros((), jnp.float32)
    for b, bucket in enumerate(layout.buckets):
      if bucket.solo:
        i = next(i for i, x in enumerate(layout.leaves) if x.bucket == b)
        outs[i], m_new, v_new, r = fused.leaf_step(
          grads[i], adam_s.mu[b], adam_s.nu[b], weights[i], count, lr_t, wd_t,
          bucket.decay, bucket.trust, layout.leaves[i].k, o.hyper,
        )  # fmt: skip
        new_m.append(m_new)
        new_v.append(v_new)
        new_r.append(r)
        continue
      cdt = transforms.compute_dtype(bucket.param_dtype)
      rdt = transforms._real_dtype(cdt)
      scalars = (*fused.corrections(count, o.b1, o.b2, rdt), wd_t, o.eps, o.eps_root)

      def direction(m, v, w, decay=bucket.decay, scalars=scalars):
        return fused.decayed_direction(m, v, w, *scalars, decay=decay)

      g_flat = _gather(grads, layout, b, cdt, zero)
      m_flat, v_flat = transforms.adam_moments(
        g_flat, adam_s.mu[b], adam_s.nu[b], count, o.b1, o.b2
      )
      w_flat = _gather(weights, layout, b, cdt, zero) if bucket.trust or bucket.decay else None
      if bucket.trust:
        squares = transforms.scaled_squares(w_flat, rdt) + transforms.scaled_squares(
          direction(m_flat, v_flat, w_flat), rdt
        )
        sums = [_segment_sums(s, layout, b) for s in _sums(squares, 1)]
        w_norm, u_norm = transforms.pick_norm(*sums[:3]), transforms.pick_norm(*sums[3:])
        factors = transforms.trust_factors(
          w_norm, u_norm, rdt, o.min_trust_ratio, o.max_trust_ratio
        )
        ratio = factors[0].astype(jnp.float32)
        # Keep XLA from merging this pass's u with the reduction's into one stored array.
        m_b, v_b = jax.lax.optimization_barrier((m_flat, v_flat))
        u_flat = transforms.scale_by_factors(
          direction(m_b, v_b, w_flat), *(_per_row(f, layout, b) for f in factors)
        )
      else:
        ratio = jnp.ones(bucket.segments, jnp.float32)
        u_flat = direction(m_flat, v_flat, w_flat)
      u_flat = -lr_t.astype(rdt) * u_flat
      members = [i for i, leaf in enumerate(layout.leaves) if leaf.bucket == b]
      cut = [
        _from_rows(u_flat, leaf).astype(grads[i].dtype)
        if leaf.seg_rows and leaf.nseg
        else jnp.zeros(leaf.shape, grads[i].dtype)
        for i, leaf in ((i, layout.leaves[i]) for i in members)
      ]
      cut = _split(cut)
      for i, out in zip(members, cut, strict=True):
        outs[i] = out
      if _ORDERED:
        zero = _zero_after(cut)
      new_m.append(m_flat.astype(bucket.moment_dtype))
      new_v.append(v_flat.astype(bucket.moment_dtype))
      new_r.append(ratio)
    new_state = (
      first,
      transforms.ScaleByAdamState(count=count, mu=tuple(new_m), nu=tuple(new_v)),
      transforms.AddDecayedWeightsState(optax.safe_increment(wd_s.count)),
      # The layout made at init stays: a state keeps one structure (scan carries, nnx).
      transforms.ScaleByTrustRatioState(ratios=MultiTensorRatios(tuple(new_r), tr_s.ratios.layout)),
      transforms.ScaleByLearningRateState(optax.safe_increment(lr_s.count)),
    )
    return jax.tree.unflatten(jax.tree.structure(updates), outs), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
