"""The LAMB math, once: pure functions on arrays, used by every layout and every block.

Each function is elementwise or reduces over trailing axes, so the same code
serves one parameter leaf, a stacked leaf of ``L`` layers, or a packed
``(rows, width)`` buffer of many leaves (:mod:`lamb_optax._src.layout`). The
public blocks (:mod:`lamb_optax._src.transforms`) and the engine
(:mod:`lamb_optax._src.engine`) call only these for the arithmetic, as optax's
``tree_utils`` holds ``update_moment`` and ``bias_correction`` once for every
optimizer.

Per element, at step ``t = count + 1``::

  m' = b1 m + (1 - b1) g                      moments()
  v' = b2 v + (1 - b2) |g|^2
  u  = (m'/c1) / (sqrt(v'/c2 + eps_root) + eps) + wd w      direction(), c = 1 - b^t
  r  = ||w|| / ||u|| (1 where a norm is 0), clipped          norms: sums_of_squares(),
                                                             pick_norm(); trust_factors()
  update = -lr r u                                           scale_by_factors()

Arithmetic runs in :func:`compute_dtype` (at least float32; float64 and
complex kept); norms in its real counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Exact power of two: scaling by it never rounds. Squares of x * 2**-64 stay finite up to
# |x| ~ 1e38 * 2**64 (float32), squares of x * 2**64 stay normal down to |x| ~ 1e-38 / 2**64.
SCALE = 2.0**64
# Below this a plain float32 sum of squares has lost precision (or is 0): use the scaled-up sum.
TINY_SUM = 2.0**-60


def compute_dtype(dtype: Any) -> np.dtype:
  """The dtype arithmetic runs in: at least float32, float64/complex kept."""
  return np.dtype(jnp.promote_types(dtype, jnp.float32))


def real_dtype(dtype: Any) -> np.dtype:
  """The real dtype of ``dtype`` (complex64 -> float32)."""
  return np.dtype(jnp.finfo(dtype).dtype)


def abs_sq(x: jax.Array) -> jax.Array:
  """``|x|**2``, real for complex ``x``."""
  if jnp.iscomplexobj(x):
    return jnp.real(x) ** 2 + jnp.imag(x) ** 2
  return x * x


def decay_constants(b: Any, count: jax.Array, rdt: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``b``, ``1 - b`` and the bias correction ``1 - b**count``, all in ``rdt``.

  ``1 - b`` is exact in floating point for ``b`` in [0.5, 1] and ``1 - b**t``
  is formed as ``-expm1(t * log1p(-(1 - b)))``, which does not cancel: with
  ``b2 = 0.999`` in float32, ``1 - b2**t`` keeps full precision (optax's
  ``1 - b2**t`` loses ~1e-5 relative). The same code runs for concrete and
  traced ``b``, so ``inject_hyperparams`` gives identical updates.
  """
  b_ = jnp.asarray(b).astype(rdt)
  one_minus_b = 1 - b_
  return b_, one_minus_b, -jnp.expm1(count.astype(rdt) * jnp.log1p(-one_minus_b))


def corrections(count: jax.Array, b1: Any, b2: Any, rdt: Any) -> tuple[jax.Array, jax.Array]:
  """Adam's bias corrections ``1 - b1**count`` and ``1 - b2**count`` in ``rdt``."""
  return decay_constants(b1, count, rdt)[2], decay_constants(b2, count, rdt)[2]


def moments(
  g: jax.Array, m: jax.Array, v: jax.Array, b1: Any, b2: Any
) -> tuple[jax.Array, jax.Array]:
  """``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) |g|^2`` in :func:`compute_dtype` of ``g``."""
  cdt = compute_dtype(g.dtype)
  rdt = real_dtype(cdt)
  zero = jnp.zeros((), jnp.int32)
  b1_, one_minus_b1, _ = decay_constants(b1, zero, rdt)
  b2_, one_minus_b2, _ = decay_constants(b2, zero, rdt)
  g = g.astype(cdt)
  return b1_ * m.astype(cdt) + one_minus_b1 * g, b2_ * v.astype(cdt) + one_minus_b2 * abs_sq(g)


def direction(
  m_new: jax.Array,
  v_new: jax.Array,
  c1: Any,
  c2: Any,
  eps: Any,
  eps_root: Any,
  w: Any = None,
  wd: Any = None,
) -> jax.Array:
  """Adam's direction ``(m'/c1) / (sqrt(v'/c2 + eps_root) + eps)``, plus ``wd * w`` if given.

  In the moments' dtype. ``c1``, ``c2`` are the bias corrections; ``wd`` may be
  a scalar or an array that broadcasts against ``w`` (a weight decay per row of
  a packed buffer, 0 where a leaf is not decayed). Computed as
  ``m' / (sqrt(v' + eps_root c2) * c1/sqrt(c2) + c1 eps)``: the same value, with
  one division and one square root per element (the form above has three
  divisions), and finite for every finite ``m'``, ``v'``: neither ``m'/c1``
  nor ``v'/c2`` is formed, so neither can overflow.
  """
  cdt = m_new.dtype
  rdt = real_dtype(cdt)
  c1, c2 = jnp.asarray(c1).astype(rdt), jnp.asarray(c2).astype(rdt)
  eps, eps_root = jnp.asarray(eps).astype(rdt), jnp.asarray(eps_root).astype(rdt)
  root = jnp.sqrt(v_new + eps_root * c2)
  u = m_new / (root * (c1 / jnp.sqrt(c2)) + c1 * eps)
  if wd is not None:
    u = add_decay(u, w, wd)
  return u


def add_decay(u: jax.Array, w: jax.Array, wd: Any) -> jax.Array:
  """``u + wd * w`` in ``u``'s dtype (decoupled weight decay)."""
  return u + jnp.asarray(wd).astype(real_dtype(u.dtype)) * w.astype(u.dtype)


def sums_dtype(*xs: jax.Array) -> np.dtype:
  """The dtype sums of squares of ``xs`` are taken in: at least float32, float64 kept."""
  return np.dtype(jnp.result_type(*[real_dtype(compute_dtype(x.dtype)) for x in xs]))


def scaled_squares(x: jax.Array, rdt: Any) -> list[jax.Array]:
  """``|x|**2``, ``|x * 2**-64|**2``, ``|x * 2**64|**2`` in ``rdt``: summed, they feed pick_norm."""
  x = x.astype(compute_dtype(x.dtype))
  x_rdt = real_dtype(x.dtype)
  return [
    abs_sq(x if scale == 1.0 else x * jnp.asarray(scale, x_rdt)).astype(rdt)
    for scale in (1.0, 1 / SCALE, SCALE)
  ]


def too_small(plain: jax.Array) -> jax.Array:
  """Whether a plain sum of squares is below the range where it is exact enough."""
  return plain < jnp.asarray(TINY_SUM, plain.dtype)


def pick_norm(plain: jax.Array, big: jax.Array, small: jax.Array) -> jax.Array:
  """The norm from the three sums of :func:`scaled_squares`: plain, scaled down, scaled up.

  Where the plain sum overflowed (``|x|`` around 1e19 and up in float32) the
  scaled-down one is used, where it is below ``2**-60`` (elements around 1e-10
  and below, whose squares lose precision or vanish) the scaled-up one; in the
  range between, the result is exactly the plain ``sqrt(sum(|x|**2))``.
  """
  rdt = plain.dtype
  return jnp.where(
    jnp.isinf(plain),
    jnp.sqrt(big) * jnp.asarray(SCALE, rdt),
    jnp.where(too_small(plain), jnp.sqrt(small) * jnp.asarray(1 / SCALE, rdt), jnp.sqrt(plain)),
  )


def variadic_sums(operands: Sequence[jax.Array], axes: Sequence[int]) -> list[jax.Array]:
  """Sums of arrays of one shape over ``axes``, all in one variadic reduction (one read)."""
  zero = [jnp.zeros((), x.dtype) for x in operands]
  add = lambda a, b: [x + y for x, y in zip(a, b, strict=True)]  # noqa: E731
  return jax.lax.reduce(list(operands), zero, add, tuple(axes))


SPLIT_FROM = 2**16  # sums over this many elements are taken in two levels (summation_rows)


def summation_rows(size: int) -> int:
  """Rows (up to 256, dividing ``size``) for a two-level sum of ``size`` elements; 1 below 2**16.

  XLA:CPU emits a reduction as one sequential loop per output: a float32 sum
  of 2**17 squares then loses about 1e-4 relative, and runs on one core.
  Summing rows first, then the row sums, bounds the error by the longer of the
  two runs and spreads the rows over the cores. (XLA:GPU reduces in a tree
  already; its policy skips this.)
  """
  if size < SPLIT_FROM:
    return 1
  rows = 256
  while size % rows:
    rows //= 2
  return rows


def safe_norms(xs: Sequence[jax.Array], k: int = 0, rows: Any = None) -> list[jax.Array]:
  """Overflow- and underflow-safe norms of arrays of one shape over all axes but the first ``k``.

  Three sums of squares per array (:func:`scaled_squares`), all arrays in one
  variadic reduction, combined by :func:`pick_norm`. ``xs`` may be
  expressions: XLA computes them inside the reduction instead of storing them.
  The trailing elements are summed in ``rows`` equal slices first (it must
  divide their number); None: :func:`summation_rows`.
  """
  rdt = sums_dtype(*xs)
  shape = xs[0].shape
  lead, rest = shape[:k], int(np.prod(shape[k:], dtype=np.int64))
  rows = summation_rows(rest) if rows is None else rows
  if rest == 1:
    # One element: the norm is |x|. (XLA also rewrites a one-element
    # (x * 2**64)**2 as x**2 * 2**128, which overflows float32.)
    return [jnp.abs(x.astype(compute_dtype(x.dtype))).astype(rdt).reshape(lead) for x in xs]
  operands = []
  for x in xs:
    operands += [s.reshape((*lead, rows, rest // rows)) for s in scaled_squares(x, rdt)]
  sums = [jnp.sum(p, axis=k) for p in variadic_sums(operands, (k + 1,))]
  return [pick_norm(*sums[3 * i : 3 * i + 3]) for i in range(len(xs))]


def trust_factors(
  w_norm: jax.Array, u_norm: jax.Array, rdt: Any, min_ratio: Any = None, max_ratio: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(r, 1/||u||, ||w||)`` in ``rdt``, each 1 where a norm is 0; ``r`` clipped if bounds given."""
  w_norm, u_norm = w_norm.astype(rdt), u_norm.astype(rdt)
  ok = (w_norm > 0) & (u_norm > 0)
  inv_u = jnp.where(ok, 1 / jnp.where(ok, u_norm, 1), 1)
  w_fac = jnp.where(ok, w_norm, 1)
  ratio = w_fac * inv_u
  if min_ratio is not None or max_ratio is not None:
    ratio = jnp.clip(ratio, min_ratio, max_ratio).astype(rdt)
  return ratio, inv_u, w_fac


def scale_by_factors(u: jax.Array, ratio: Any, inv_u: Any, w_fac: Any) -> jax.Array:
  """``r * u``, or ``(u / ||u||) * ||w||`` where ``r`` overflowed (factors broadcast to ``u``)."""
  return jnp.where(jnp.isfinite(ratio), u * ratio, (u * inv_u) * w_fac)


def trust_scale(
  u: jax.Array, w_norm: jax.Array, u_norm: jax.Array, min_ratio: Any = None, max_ratio: Any = None
) -> tuple[jax.Array, jax.Array]:
  """``(r * u, r)`` with ``r = ||w|| / ||u||`` per leading index of the norms (``k`` axes).

  ``w_norm`` and ``u_norm`` have shape ``u.shape[:k]``; ``r`` comes back in float32.
  """
  k = w_norm.ndim
  cdt = compute_dtype(u.dtype)
  ratio, inv_u, w_fac = trust_factors(w_norm, u_norm, real_dtype(cdt), min_ratio, max_ratio)
  expand = lambda x: x.reshape(x.shape + (1,) * (u.ndim - k))  # noqa: E731
  scaled = scale_by_factors(u.astype(cdt), *map(expand, (ratio, inv_u, w_fac)))
  return scaled, ratio.astype(jnp.float32)


def scale_by_lr(u: jax.Array, lr: Any) -> jax.Array:
  """``-lr * u`` in ``u``'s dtype (``lr`` a scalar or an array broadcasting against ``u``)."""
  return -jnp.asarray(lr).astype(real_dtype(u.dtype)) * u
