"""Where each leaf's moments and trust ratios live: the storage layout of ``lamb``'s state.

A layout maps the leaves of the parameter tree onto *blocks*, each one array
in the state (per moment):

* a **solo** block holds one leaf in the leaf's own shape, sharded like it;
* a **packed** block holds many leaves as one ``(rows, width)`` buffer, as
  apex's ``multi_tensor_apply`` does: each leaf (each layer of a leaf with
  ``layer_axes``) is flattened and zero-padded to whole rows. Padding is zero
  in g, w, m and v, so it adds nothing to any sum.

Every block is a set of *segments*, one trust ratio each: a leaf, or a layer
of a stacked leaf. The engine runs the same math on both kinds of block
(:mod:`lamb_optax._src.engine`).

The layout is a function of the parameter tree (paths, shapes, dtypes), the
moment dtype, ``layer_axes`` and the ``layout`` argument of ``lamb`` only:
never of the platform, the device count, the shardings or a hyperparameter's
value. So a state saved anywhere restores into the same ``lamb(...)`` call
anywhere else. It is static (hashed once) and travels as the metadata of the
state's :class:`Moments` and :class:`TrustRatios` nodes.

The rule (``"auto"``; the numbers behind it are in the README):

* leaves of at least :data:`PACK_BELOW` (2**16) elements are solo: memory,
  not their number, bounds their cost, and under FSDP their state is sharded
  exactly like them;
* smaller leaves are packed when the tree has at least :data:`PACK_MIN_LEAVES`
  of them (then their number, through per-buffer host costs and per-kernel
  compile time, is what costs), else solo;
* buckets hold leaves of one parameter dtype and moment dtype, at most
  :data:`BUCKET_LEAVES` of them, and a dtype fills at least
  :data:`MIN_BUCKETS` buckets where it has that many leaves (the engine runs
  buckets one after another, so temporaries stay about 2x one bucket).

``"per_leaf"`` makes every leaf solo, ``"pack_small"`` packs the leaves under
:data:`PACK_BELOW` elements however many there are, ``"packed"`` packs every
leaf.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lamb_optax._src import kernels

MODES = ("auto", "per_leaf", "pack_small", "packed")
PACK_BELOW = 2**16
PACK_MIN_LEAVES = 256
BUCKET_LEAVES = 64
MIN_BUCKETS = 4
# Row widths tried, widest first; the widest whose padding adds at most 1/16 wins,
# else 2. At most 1024: each row is summed in one sequential run (XLA:CPU), and 1024
# elements keep a float32 sum as exact as the solo path's two-level sums
# (kernels.summation_rows). Never 1: XLA rewrites a one-element (x * 2**64)**2 as
# x**2 * 2**128, which overflows float32 (see kernels.safe_norms).
_WIDTHS = tuple(2**i for i in range(10, 0, -1))


@dataclasses.dataclass(frozen=True)
class Leaf:
  """Where one parameter leaf lives."""

  block: int
  shape: tuple[int, ...]
  k: int  # layer axes: the leaf holds nseg = prod(shape[:k]) segments (trust ratios)
  row: int  # first row in a packed block's buffer
  seg: int  # first segment in the block
  nseg: int
  seg_len: int  # elements per segment
  seg_rows: int  # rows per segment in a packed block (seg_len padded to whole rows)


@dataclasses.dataclass(frozen=True)
class Block:
  """One array of the state per moment: a solo leaf or a packed bucket."""

  param_dtype: np.dtype
  mu_dtype: np.dtype  # storage of the first moment
  nu_dtype: np.dtype  # storage of the second moment
  width: int  # 0 for a solo block
  rows: int
  segments: int
  members: tuple[int, ...]  # leaf indices, in tree order
  uniform: bool  # every segment has the same number of rows: segment sums are a reshape

  @property
  def solo(self) -> bool:
    return self.width == 0


class Layout:
  """The static map from leaves to blocks, with the tree it was made for."""

  def __init__(self, treedef: Any, paths: tuple[str, ...], dtypes: tuple[np.dtype, ...],
               leaves: tuple[Leaf, ...], blocks: tuple[Block, ...]):  # fmt: skip
    self.treedef, self.paths, self.dtypes = treedef, paths, dtypes
    self.leaves, self.blocks = leaves, blocks
    self._key = (treedef, paths, dtypes, leaves, blocks)
    self._hash = hash(self._key)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return self is other or (
      isinstance(other, Layout) and self._hash == other._hash and self._key == other._key
    )

  def __repr__(self) -> str:
    packed = sum(not b.solo for b in self.blocks)
    return (
      f"Layout({len(self.leaves)} leaves: {len(self.blocks) - packed} solo,"
      f" {len(self.leaves) - len(self.blocks) + packed} in {packed} packed buckets)"
    )

  def check_matches(self, paths: tuple[str, ...], shapes: tuple, dtypes: tuple) -> None:
    """Raises a ValueError naming the first leaf where the parameters differ from init's."""
    mine = tuple(x.shape for x in self.leaves)
    if (paths, shapes, dtypes) == (self.paths, mine, self.dtypes):
      return
    if len(paths) != len(self.paths):
      what = f"{len(paths)} leaves where init saw {len(self.paths)}"
    else:
      i = next(
        i
        for i in range(len(paths))
        if (paths[i], shapes[i], dtypes[i]) != (self.paths[i], mine[i], self.dtypes[i])
      )
      what = (
        f"leaf {i} is {paths[i]!r} {shapes[i]} {dtypes[i]} where init saw"
        f" {self.paths[i]!r} {mine[i]} {self.dtypes[i]}"
      )
    raise ValueError(
      f"The optimizer state was made by `init` for other parameters: {what}. Call `init` on"
      " these parameters (a state restored from a checkpoint must come from the same tree)."
    )

  def seg_of_row(self, b: int) -> np.ndarray:
    return np.concatenate(
      [np.zeros(0, np.int32)]
      + [
        np.repeat(np.arange(x.seg, x.seg + x.nseg, dtype=np.int32), x.seg_rows)
        for x in (self.leaves[i] for i in self.blocks[b].members)
      ]
    )

  def seg_values(self, b: int, per_leaf: list[Any], dtype: Any) -> np.ndarray:
    """A static per-segment vector of block ``b`` from one value per leaf of the tree."""
    block = self.blocks[b]
    out = np.empty(block.segments, dtype)
    for i in block.members:
      x = self.leaves[i]
      out[x.seg : x.seg + x.nseg] = per_leaf[i]
    return out


def _width(seg_lens: list[tuple[int, int]]) -> int:
  total = sum(n * s for n, s in seg_lens)
  for w in _WIDTHS:
    padded = sum(n * -(-s // w) * w for n, s in seg_lens)
    if padded * 16 <= total * 17:
      return w
  return 2


def _chunks(items: list[int], sizes: list[int]) -> list[list[int]]:
  """``items`` in order, cut into runs of at most ``BUCKET_LEAVES`` items and about
  ``sum(sizes) / MIN_BUCKETS`` elements (a run holds at least one item)."""
  cap = -(-sum(sizes) // MIN_BUCKETS)
  runs: list[list[int]] = []
  total = 0
  for item, size in zip(items, sizes, strict=True):
    if not runs or len(runs[-1]) == BUCKET_LEAVES or (runs[-1] and total + size > cap):
      runs.append([])
      total = 0
    runs[-1].append(item)
    total += size
  return runs


@functools.lru_cache(maxsize=64)
def make_layout(
  treedef: Any,
  paths: tuple[str, ...],
  shapes: tuple[tuple[int, ...], ...],
  dtypes: tuple[np.dtype, ...],
  axes: tuple[int, ...],
  moment_dtypes: tuple[tuple[np.dtype, np.dtype], ...],
  mode: str,
) -> Layout:
  """The layout of a tree (see the module docstring for the rule)."""
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  small = [i for i, n in enumerate(sizes) if n < PACK_BELOW]
  if mode == "auto":
    mode = "pack_small" if len(small) >= PACK_MIN_LEAVES else "per_leaf"
  if mode == "per_leaf":
    packable: set[int] = set()
  else:
    packable = set(range(len(shapes))) if mode == "packed" else set(small)
  keys: dict[tuple, list[int]] = {}
  for i in range(len(shapes)):
    keys.setdefault((dtypes[i], moment_dtypes[i]), []).append(i)
  blocks: list[Block] = []
  leaves: list[Any] = [None] * len(shapes)
  # Solo blocks first, in tree order, then the buckets of each dtype key.
  for i in range(len(shapes)):
    if i not in packable:
      nseg = int(np.prod(shapes[i][: axes[i]], dtype=np.int64))
      seg_len = int(np.prod(shapes[i][axes[i] :], dtype=np.int64))
      leaves[i] = Leaf(len(blocks), shapes[i], axes[i], 0, 0, nseg, seg_len, 0)
      blocks.append(Block(dtypes[i], *moment_dtypes[i], 0, 0, nseg, (i,), True))
  for (dtype, moment_dtype), members in keys.items():
    packed = [i for i in members if i in packable]
    for run in _chunks(packed, [sizes[i] for i in packed]) if packed else []:
      b = len(blocks)
      segs = [
        (
          int(np.prod(shapes[i][: axes[i]], dtype=np.int64)),
          int(np.prod(shapes[i][axes[i] :], dtype=np.int64)),
        )
        for i in run
      ]
      width = _width(segs)
      row = seg = 0
      rows_per_seg = set()
      for i, (nseg, seg_len) in zip(run, segs, strict=True):
        seg_rows = -(-seg_len // width)
        leaves[i] = Leaf(b, shapes[i], axes[i], row, seg, nseg, seg_len, seg_rows)
        row += nseg * seg_rows
        seg += nseg
        rows_per_seg.add(seg_rows)
      uniform = len(rows_per_seg) <= 1
      blocks.append(Block(dtype, *moment_dtype, width, row, seg, tuple(run), uniform))
  return Layout(treedef, paths, dtypes, tuple(leaves), tuple(blocks))


# ---------------------------------------------------------------------------
# Moving leaves in and out of blocks
# ---------------------------------------------------------------------------


def to_rows(x: jax.Array, leaf: Leaf, width: int, dtype: Any) -> jax.Array:
  """One leaf as its rows of a packed buffer (zero-padded)."""
  x = x.astype(dtype).reshape(leaf.nseg, leaf.seg_len)
  pad = leaf.seg_rows * width - leaf.seg_len
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad)))
  return x.reshape(leaf.nseg * leaf.seg_rows, width)


def from_rows(buf: jax.Array, leaf: Leaf) -> jax.Array:
  """One leaf cut out of a packed buffer."""
  x = buf[leaf.row : leaf.row + leaf.nseg * leaf.seg_rows].reshape(leaf.nseg, -1)
  return x[:, : leaf.seg_len].reshape(leaf.shape)


def gather(xs: list[Any], layout: Layout, b: int, dtype: Any, zero: Any = 0) -> jax.Array:
  """Block ``b``'s leaves of ``xs`` (one per leaf of the tree) as its ``(rows, width)`` buffer.

  ``zero`` is added to the first part: a zero computed from an earlier bucket
  makes this gather wait for it.
  """
  block = layout.blocks[b]
  parts = [
    to_rows(xs[i], layout.leaves[i], block.width, dtype)
    for i in block.members
    if layout.leaves[i].seg_rows
  ]
  if not parts:
    return jnp.zeros((0, block.width), dtype)
  parts[0] = parts[0] + jnp.asarray(zero).astype(parts[0].dtype)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def segment_sums(row_sums: jax.Array, layout: Layout, b: int) -> jax.Array:
  """Per-segment sums of a packed block from its per-row sums."""
  block = layout.blocks[b]
  if not block.rows:
    return jnp.zeros(block.segments, row_sums.dtype)
  if block.uniform:
    return row_sums.reshape(block.segments, -1).sum(axis=1)
  return jax.ops.segment_sum(
    row_sums, layout.seg_of_row(b), num_segments=block.segments, indices_are_sorted=True
  )


def per_row(values: jax.Array, layout: Layout, b: int) -> jax.Array:
  """A per-segment vector as a ``(rows, 1)`` column that broadcasts over a packed buffer."""
  block = layout.blocks[b]
  if block.uniform and block.rows:
    rows = jnp.broadcast_to(values[:, None], (block.segments, block.rows // block.segments))
    return rows.reshape(block.rows, 1)
  return values[layout.seg_of_row(b)][:, None]


# ---------------------------------------------------------------------------
# The state's nodes: arrays per block, the layout as static metadata
# ---------------------------------------------------------------------------


class _Blocks:
  """One array per block of ``layout``; a pytree whose metadata is the layout."""

  def __init__(self, values: tuple[Any, ...], layout: Layout):
    self.values, self.layout = tuple(values), layout

  def tree_flatten_with_keys(self):
    return [(jax.tree_util.GetAttrKey("values"), self.values)], self.layout

  def tree_flatten(self):
    return (self.values,), self.layout

  @classmethod
  def tree_unflatten(cls, layout, children):
    return cls(children[0], layout)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.values!r}, {self.layout!r})"

  def _leaf_view(self, value: Any, leaf: Leaf, block: Block) -> Any:
    raise NotImplementedError

  def as_tree(self) -> Any:
    """The values as a pytree like the parameters."""
    views = [
      self._leaf_view(self.values[x.block], x, self.layout.blocks[x.block])
      for x in self.layout.leaves
    ]
    return jax.tree.unflatten(self.layout.treedef, views)


@jax.tree_util.register_pytree_with_keys_class
class Moments(_Blocks):
  """A moment (m or v) of every leaf: one array per block of the layout.

  ``as_tree()`` returns it as a pytree like the parameters (packed leaves cut
  out of their buffers).
  """

  def _leaf_view(self, value: Any, leaf: Leaf, block: Block) -> Any:
    return value if block.solo else from_rows(value, leaf)


@jax.tree_util.register_pytree_with_keys_class
class TrustRatios(_Blocks):
  """The trust ratios of the last step: per block, one float32 per segment.

  A solo block's ratios have the shape ``leaf.shape[:k]``; a packed block's are
  a vector over its segments. ``as_tree()`` (and
  :func:`lamb_optax.trust_ratios`) returns them as a pytree like the
  parameters.
  """

  def _leaf_view(self, value: Any, leaf: Leaf, block: Block) -> Any:
    if block.solo:
      return value
    return value[leaf.seg : leaf.seg + leaf.nseg].reshape(leaf.shape[: leaf.k])


def register_with_flax() -> None:
  """Teach ``flax.serialization`` (msgpack checkpoints) the state's nodes, if flax is in use.

  flax is not a dependency: this runs at ``init`` and only when flax is already
  imported (registering twice is harmless).
  """
  serialization = sys.modules.get("flax.serialization")
  if serialization is None:
    return
  for cls in (Moments, TrustRatios):
    serialization.register_serialization_state(
      cls,
      lambda r: {"values": serialization.to_state_dict(r.values)},
      lambda target, state, cls=cls: cls(
        serialization.from_state_dict(target.values, state["values"]), target.layout
      ),
      override=True,
    )


def kernel_dtype(block: Block) -> tuple[np.dtype, np.dtype]:
  """The compute dtype of a block's arithmetic and the dtype of its sums."""
  cdt = kernels.compute_dtype(block.param_dtype)
  return cdt, kernels.real_dtype(cdt)
