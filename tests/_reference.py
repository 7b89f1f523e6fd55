"""Plain NumPy LAMB (docs/design.md's formula), float64, one dict of path -> array.

Independent of lamb_optax: no JAX, no optax. Used by the parity tests.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def centralize(g: np.ndarray, out_axis: int = -1) -> np.ndarray:
  if g.ndim < 2:
    return g
  axes = tuple(a for a in range(g.ndim) if a != out_axis % g.ndim)
  return g - g.mean(axis=axes, keepdims=True)


class NumpyLamb:
  """LAMB over a flat dict ``path -> array`` with per-leaf settings.

  Args:
    lr: per-leaf callable ``step -> lr`` (0-based step).
    wd: per-leaf callable ``step -> weight decay``.
    decay: per-leaf bool, whether weight decay applies.
    gc: per-leaf bool, whether the gradient is centralized first.
    trust: per-leaf bool, whether the trust ratio applies.
    layer_axes: per-leaf int, leading axes that index layers.
  """

  def __init__(
    self,
    params: dict[str, np.ndarray],
    *,
    lr: dict[str, Callable[[int], float]],
    wd: dict[str, Callable[[int], float]],
    decay: dict[str, bool],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    gc: dict[str, bool] | None = None,
    trust: dict[str, bool] | None = None,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
    layer_axes: dict[str, int] | None = None,
  ):
    self.w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    self.m = {k: np.zeros_like(v) for k, v in self.w.items()}
    self.v = {k: np.zeros_like(v) for k, v in self.w.items()}
    self.step = 0
    self.lr, self.wd, self.decay = lr, wd, decay
    self.b1, self.b2, self.eps, self.eps_root = b1, b2, eps, eps_root
    self.gc = gc or dict.fromkeys(params, False)
    self.trust = trust or dict.fromkeys(params, True)
    self.min_ratio, self.max_ratio = min_ratio, max_ratio
    self.layer_axes = layer_axes or dict.fromkeys(params, 0)
    self.ratios: dict[str, np.ndarray] = {}

  def update(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    t = self.step + 1
    for k in self.w:
      g = np.asarray(grads[k], np.float64)
      if self.gc[k]:
        g = centralize(g)
      self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
      self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
      m_hat = self.m[k] / (1 - self.b1**t)
      v_hat = self.v[k] / (1 - self.b2**t)
      u = m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps)
      wd = self.wd[k](self.step)
      if self.decay[k] and wd > 0:
        u = u + wd * self.w[k]
      w = self.w[k]
      la = self.layer_axes[k]
      axes = tuple(range(la, w.ndim))
      if self.trust[k]:
        wn = np.sqrt((w * w).sum(axis=axes))
        un = np.sqrt((u * u).sum(axis=axes))
        r = np.where((wn > 0) & (un > 0), wn / np.where(un > 0, un, 1), 1.0)
        if self.min_ratio is not None or self.max_ratio is not None:
          r = np.clip(r, self.min_ratio, self.max_ratio)
      else:
        r = np.ones(w.shape[:la])
      self.ratios[k] = r
      r_b = r.reshape(r.shape + (1,) * (w.ndim - la))
      self.w[k] = w - self.lr[k](self.step) * r_b * u
    self.step += 1
    return self.w
