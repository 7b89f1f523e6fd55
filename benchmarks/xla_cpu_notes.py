"""The XLA:CPU facts behind the packed layout and the CPU policy, measured.

1. Compile time follows the number of *distinct* fused kernels: n leaves of
   ``w - 1.0`` (identical kernels) against n leaves of ``w - float(i)`` (each
   kernel has its own constant), and n leaves cut out of one buffer by static
   slices (each kernel has its own offset).
2. Writing m' and v' in one kernel through a variadic reduction over a size-2
   axis runs slower than the two loops XLA:CPU emits for them; one loop over
   m and v stacked as one (2, n) array saves little.
3. The norm pass as one variadic reduction is compute-bound: XLA:CPU emits it
   as scalar code, so it takes longer than reading its three inputs, and u's
   division and square root dominate. A single-output ``jnp.sum`` of the same
   expression becomes a vectorized library fusion ("ynn_fusion" in the
   optimized HLO), which is what the CPU policy's quick sums use
   (``lamb_optax.Policy.quick_sums_from``).
4. What that gains in a whole ``lamb`` step, and what its per-leaf ``cond``
   costs in compile time, on 16M params in leaves of 2**16 and 2**18 (the CPU
   policy against the same policy without quick sums, passed as ``policy=``).

    python benchmarks/xla_cpu_notes.py --leaves 1000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np


def compile_seconds(f, *args) -> float:
  t0 = time.perf_counter()
  jax.jit(f).lower(*args).compile()
  return time.perf_counter() - t0


def kernels(n: int) -> dict[str, float]:
  leaves = [jnp.ones((32, 32)) for _ in range(n)]
  flat = jnp.ones((n, 1024))
  return {
    "identical (w - 1.0)": compile_seconds(lambda p: [w - 1.0 for w in p], leaves),
    "distinct constants (w - i)": compile_seconds(
      lambda p: [w - float(i) for i, w in enumerate(p)], leaves
    ),
    "static slices of one buffer": compile_seconds(
      lambda p, u: [w - u[i].reshape(32, 32) for i, w in enumerate(p)], leaves, flat
    ),
  }


def moments(n: int = 16 * 2**20, reps: int = 15) -> dict[str, float]:
  def loops(m, v, g):
    return 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g

  def one_reduction(m, v, g):
    m2, v2 = loops(m, v, g)
    ops = [jnp.stack([m2, jnp.zeros_like(m2)]), jnp.stack([v2, jnp.zeros_like(v2)])]
    zero = [jnp.float32(0)] * 2
    return tuple(jax.lax.reduce(ops, zero, lambda a, b: [a[0] + b[0], a[1] + b[1]], (0,)))

  def stacked(mv, g):
    return (jnp.array([0.9, 0.999])[:, None] * mv + jnp.stack([0.1 * g, 0.001 * g * g]),)

  g = jnp.full(n, 0.1)
  runs = {  # name: (donating step, state); each step returns the new state as a tuple
    "two loops": (jax.jit(loops, donate_argnums=(0, 1)), (jnp.zeros(n), jnp.zeros(n))),
    "one variadic reduction": (
      jax.jit(one_reduction, donate_argnums=(0, 1)),
      (jnp.zeros(n), jnp.zeros(n)),
    ),
    "one loop, m and v stacked": (jax.jit(stacked, donate_argnums=0), (jnp.zeros((2, n)),)),
  }
  states = {k: jax.block_until_ready(f(*s, g)) for k, (f, s) in runs.items()}
  times: dict[str, list[float]] = {k: [] for k in runs}
  for _ in range(reps):
    for k, (f, _) in runs.items():
      t0 = time.perf_counter()
      states[k] = jax.block_until_ready(f(*states[k], g))
      times[k].append(time.perf_counter() - t0)
  return {k: 1e3 * float(np.median(t)) for k, t in times.items()}


def norm_pass(n: int = 16 * 2**20, reps: int = 15) -> dict[str, float]:
  import lamb_optax
  from lamb_optax._src import engine, kernels

  cpu = lamb_optax.Policy.for_platform("cpu")
  key = jax.random.key(0)
  w, m = jax.random.normal(key, (n,)), jax.random.normal(jax.random.fold_in(key, 1), (n,))
  v = jnp.abs(jax.random.normal(jax.random.fold_in(key, 2), (n,)))

  def u_of(m, v, w):
    return (m / 0.1) / (jnp.sqrt(v / 0.001) + 1e-6) + 0.01 * w

  def safe(w, m, v):
    return kernels.safe_norms([w, u_of(m, v, w)], 0, cpu.rows(n))

  def plain(w, m, v):
    ops = [(w * w).reshape(256, -1), (u_of(m, v, w) ** 2).reshape(256, -1)]
    zero = [jnp.float32(0)] * 2
    return jax.lax.reduce(ops, zero, lambda a, b: [a[0] + b[0], a[1] + b[1]], (1,))

  def read_only(w, m, v):  # the same variadic reduction, with no arithmetic to speak of
    ops = [(w + m).reshape(256, -1), v.reshape(256, -1)]
    zero = [jnp.float32(0)] * 2
    return jax.lax.reduce(ops, zero, lambda a, b: [a[0] + b[0], a[1] + b[1]], (1,))

  def library_sums(w, m, v):  # two single-output sums: two library fusions on CPU
    return jnp.sum(w * w), jnp.sum(u_of(m, v, w) ** 2)

  def quick(w, m, v):  # what the CPU policy runs for a leaf this large
    return engine._norms(cpu, [(lambda w: w, (w,)), (u_of, (m, v, w))], (n,), 0)

  fs = {
    "overflow-safe norms of w and u (6 sums)": safe,
    "plain norms of w and u (2 sums)": plain,
    "sum of w + m + v (reads the same 3 words)": read_only,
    "two single-output jnp.sum (plain)": library_sums,
    "CPU policy's quick sums (plain sums, safe on overflow)": quick,
  }
  out = {}
  for k, f in fs.items():
    f = jax.jit(f)
    jax.block_until_ready(f(w, m, v))
    ts = []
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(f(w, m, v))
      ts.append(time.perf_counter() - t0)
    out[k] = 1e3 * float(np.median(ts))
  return out


def quick_vs_safe(sizes=(2**16, 2**18), reps: int = 12) -> dict[str, dict[str, float]]:
  """The default step on 16M params in leaves of each size: the CPU policy's quick sums on/off."""
  import dataclasses

  import optax

  import lamb_optax

  cpu = lamb_optax.Policy.for_platform("cpu")
  out = {}
  for size in sizes:
    params = {f"w{i}": jnp.full((size,), 0.5) for i in range(2**24 // size)}
    grads = jax.tree.map(lambda x: x * 0.1, params)
    runs = {}
    policies = (
      ("quick sums", cpu),
      ("safe sums only", dataclasses.replace(cpu, quick_sums_from=None)),
    )
    for name, policy in policies:
      tx = lamb_optax.lamb(1e-3, weight_decay=0.01, policy=policy)

      def step(p, s, g, tx=tx):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

      t0 = time.perf_counter()
      f = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
      seconds = time.perf_counter() - t0
      runs[name] = [f, jax.tree.map(jnp.copy, params), tx.init(params), seconds, []]
    for _ in range(reps):
      for r in runs.values():
        t0 = time.perf_counter()
        r[1], r[2] = r[0](r[1], r[2], grads)
        jax.block_until_ready(r[1])
        r[4].append(time.perf_counter() - t0)
    for name, r in runs.items():
      key = f"{2**24 // size} leaves of {size}, {name}"
      out[key] = {"ms/step": 1e3 * float(np.median(r[4][2:])), "compile s": r[3]}
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--leaves", type=int, default=1000)
  ap.add_argument("--out", default="benchmarks/results")
  args = ap.parse_args()
  warnings.filterwarnings("ignore", message="Some donated buffers")
  result = {
    "command": f"python benchmarks/xla_cpu_notes.py --leaves {args.leaves}",
    "jax": jax.__version__,
    "device": jax.devices()[0].device_kind,
    f"compile seconds, {args.leaves} leaves of 32x32": kernels(args.leaves),
    "ms per m', v' update of a 16M leaf": moments(),
    "ms per norm pass over a 16M leaf": norm_pass(),
    "default lamb step, 16M params, interleaved": quick_vs_safe(),
  }
  print(json.dumps(result, indent=1))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"xla_cpu_notes_{jax.default_backend()}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
