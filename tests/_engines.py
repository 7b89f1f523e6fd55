"""The configurations every battery runs over: each layout of the engine, each platform policy,
and the chain of blocks (``fused=False``, the readable reference).

On CPU, ``lamb``'s default lowers the CPU policy; the accelerator policy (what GPUs and TPUs
lower) is forced here so that its code runs in CI too. The default layout ``"auto"`` is one
of the two layouts for a given tree (``tests/test_layout.py`` checks which).
"""

from __future__ import annotations

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
