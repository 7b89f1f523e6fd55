"""The configurations every battery runs over: each layout of the engine, each platform policy,
and the chain of blocks (``fused=False``, the readable reference).

On CPU, ``lamb``'s default lowers the CPU policy; the accelerator policy (what GPUs and TPUs
lower) is forced here so that its code runs in CI too. The default layout ``"auto"`` is one
of the two layouts for a given tree (``tests/test_layout.py`` checks which).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lamb_optax

GPU_POLICY = lamb_optax.Policy.for_platform("gpu")

ENGINES = {
  "per_leaf": {"layout": "per_leaf"},
  "packed": {"layout": "packed"},
  "per_leaf-gpu_policy": {"layout": "per_leaf", "policy": GPU_POLICY},
  "packed-gpu_policy": {"layout": "packed", "policy": GPU_POLICY},
}
EVERY = {**ENGINES, "chain": {"fused": False}}
LAYOUTS = {k: ENGINES[k] for k in ("per_leaf", "packed")}


def ids(configs: dict) -> list[str]:
  return list(configs)


def flat(tree: Any) -> dict[str, np.ndarray]:
  """A tree as ``path -> float64 array`` (the NumPy references' format)."""
  return {p: np.asarray(x, np.float64) for p, x in lamb_optax.masks.named_leaves(tree)}


def run_against(
  tx: optax.GradientTransformation,
  ref: Any,
  tree: Any,
  grads_at: Callable[[int], Any],
  steps: int,
  rtol: float = 2e-5,
  atol: float = 1e-6,
) -> tuple[Any, Any]:
  """``steps`` jitted steps of ``tx`` from ``tree`` (in float32), the parameters after each
  checked against ``ref.update`` (a NumPy model given the same gradients, ``grads_at(t)``, in
  float64). Returns the final parameters and state."""
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(steps):
    g = grads_at(t)
    params, state = step(params, state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g))
    expected, got = ref.update(flat(g)), flat(params)
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], rtol=rtol, atol=atol, err_msg=f"{k} @ {t}")
  return params, state
