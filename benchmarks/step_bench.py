"""LAMB step speed, compile time and memory: lamb_optax vs optax.lamb vs optax.adamw.

For each synthetic parameter tree, in one process, the optimizers are compiled
(timed) and then stepped in interleaved rounds (one step of each per round,
each round starting with the next optimizer), so they see the same machine
state and none always runs right after the same other one. Each step is
``jax.jit(step, donate_argnums=(0, 1))`` with ``step = update + apply_updates``:
params and state donated.

Reported per (tree, optimizer): median ms/step; effective GB/s at 10 float32
words per parameter (LAMB's floor: read p, g, m, v, write p, m, v, plus one
pass for the norms) and its ratio to a donated triad ``a = a + s*c`` measured
here; compile seconds; optimizer-state bytes / parameter bytes; XLA temp bytes
from ``compiled.memory_analysis()`` / parameter bytes; minor page faults per
step (``getrusage``, median): the cost of temporaries that the allocator
hands back to the OS every step. Two more columns separate host from device
costs, which matter on GPUs where trees of many leaves are dispatch-bound:
"pipelined" is ms/step over ``steps`` calls dispatched back to back with one
wait at the end (how a training loop runs), and "no-op" is ms/step of a
donated pass-through call with the same buffers (params, state, grads) and no
arithmetic, the host's cost per call for that many buffers. "kernels" counts
the launched ops (fusions, custom calls and other non-trivial instructions) in
the optimised HLO's entry computation.

    python benchmarks/step_bench.py --out benchmarks/results            # all trees
    python benchmarks/step_bench.py --trees bert,leaf64m --steps 20     # a subset
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import pathlib
import platform
import re
import resource
import shlex
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lamb_optax

WORDS = 10  # float32 words moved per parameter by a LAMB step at the floor


def bert_base_shapes() -> dict[str, tuple[int, ...]]:
  """BERT-base: 199 leaves, 109.5M parameters."""
  h, inter, vocab = 768, 3072, 30522
  s = {
    "embeddings/word": (vocab, h),
    "embeddings/position": (512, h),
    "embeddings/token_type": (2, h),
    "embeddings/LayerNorm/gamma": (h,),
    "embeddings/LayerNorm/beta": (h,),
  }
  for i in range(12):
    p = f"encoder/layer_{i}"
    for n in ("query", "key", "value", "attention_output"):
      s[f"{p}/{n}/kernel"] = (h, h)
      s[f"{p}/{n}/bias"] = (h,)
    s[f"{p}/attention_LayerNorm/gamma"] = (h,)
    s[f"{p}/attention_LayerNorm/beta"] = (h,)
    s[f"{p}/intermediate/kernel"] = (h, inter)
    s[f"{p}/intermediate/bias"] = (inter,)
    s[f"{p}/output/kernel"] = (inter, h)
    s[f"{p}/output/bias"] = (h,)
    s[f"{p}/output_LayerNorm/gamma"] = (h,)
    s[f"{p}/output_LayerNorm/beta"] = (h,)
  s["pooler/kernel"] = (h, h)
  s["pooler/bias"] = (h,)
  return s


def _split(total: int, n: int) -> dict[str, tuple[int, ...]]:
  return {f"leaf_{i:04d}": (total // n,) for i in range(n)}


TREES: dict[str, Callable[[], dict[str, tuple[int, ...]]]] = {
  "bert": bert_base_shapes,
  "16m_x1": lambda: _split(16 * 2**20, 1),
  "16m_x16": lambda: _split(16 * 2**20, 16),
  "16m_x256": lambda: _split(16 * 2**20, 256),
  "16m_x4096": lambda: _split(16 * 2**20, 4096),
  "2000x32x32": lambda: {f"leaf_{i:04d}": (32, 32) for i in range(2000)},
  "leaf64m": lambda: {"w": (64 * 2**20,)},
}


def entry_kernels(hlo: str) -> int:
  """Ops that launch work in the optimised HLO's entry computation (a rough kernel count)."""
  entry = hlo[hlo.index("\nENTRY ") :]
  entry = entry[: entry.index("\n}")]
  free = ("parameter(", "tuple(", "get-tuple-element(", "bitcast(", "constant(", "opt-barrier(")
  return sum(
    1 for line in entry.splitlines()[1:] if " = " in line and not any(f in line for f in free)
  )


def optimizers() -> dict[str, Callable[[], optax.GradientTransformation]]:
  return {
    "lamb_optax.lamb": lambda: lamb_optax.lamb(1e-3, weight_decay=0.01),
    "lamb_optax.lamb(fused=False)": lambda: lamb_optax.lamb(1e-3, weight_decay=0.01, fused=False),
    "lamb_optax.lamb(layout='per_leaf')": lambda: lamb_optax.lamb(
      1e-3, weight_decay=0.01, layout="per_leaf"
    ),
    "lamb_optax.lamb(layout='pack_small')": lambda: lamb_optax.lamb(
      1e-3, weight_decay=0.01, layout="pack_small"
    ),
    "lamb_optax.lamb(layout='packed')": lambda: lamb_optax.lamb(
      1e-3, weight_decay=0.01, layout="packed"
    ),
    "optax.lamb": lambda: optax.lamb(1e-3, weight_decay=0.01, mask=lamb_optax.masks.mindspore),
    "optax.adamw": lambda: optax.adamw(1e-3, weight_decay=0.01),
  }


def _trial(layout: str = "auto", **changes) -> Callable[[], optax.GradientTransformation]:
  """lamb_optax with the policy of this machine's platform, some fields changed."""

  def make():
    policy = dataclasses.replace(lamb_optax.Policy.for_platform(jax.default_backend()), **changes)
    return lamb_optax.lamb(1e-3, weight_decay=0.01, layout=layout, policy=policy)

  return make


# Trials: lamb_optax with a changed platform policy, passed as `policy=` (nothing is patched),
# run only when --optimizers names them. They measure a choice of the policy on a machine before
# it is made; the README cites them. On CPU they switch off one guard of the CPU policy each; on
# a GPU the base is the accelerator policy, so they switch the CPU guards on there.
TRIALS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "lamb[other platform's policy]": lambda: lamb_optax.lamb(
    1e-3,
    weight_decay=0.01,
    policy=lamb_optax.Policy.for_platform("gpu" if jax.default_backend() == "cpu" else "cpu"),
  ),
  "lamb[quick sums toggled]": lambda: _trial(
    quick_sums_from=None
    if lamb_optax.Policy.for_platform(jax.default_backend()).quick_sums_from
    else 2**16
  )(),
  "lamb[row split toggled]": lambda: _trial(
    row_split=not lamb_optax.Policy.for_platform(jax.default_backend()).row_split
  )(),
  "lamb[own scalars toggled]": lambda: _trial(
    own_scalars=not lamb_optax.Policy.for_platform(jax.default_backend()).own_scalars
  )(),
  "lamb[no pass-2 barrier]": _trial(pass2_barrier=False),
  "packed[unordered]": _trial("packed", ordered_buckets=False),
  "packed[sliced]": _trial("packed", cut_below=0),
}


def _tree(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, jax.Array]:
  key = jax.random.key(seed)
  return {
    k: jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32)
    for i, (k, s) in enumerate(shapes.items())
  }


def triad_gbps(n: int = 64 * 2**20, reps: int = 20) -> float:
  """GB/s of a donated in-place ``a = a + s*c`` (3 words per element)."""
  a = jnp.ones(n, jnp.float32)
  c = jnp.ones(n, jnp.float32)
  f = jax.jit(lambda a, c: a + 1e-3 * c, donate_argnums=0)
  a = f(a, c).block_until_ready()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    a = f(a, c).block_until_ready()
    ts.append(time.perf_counter() - t0)
  return 3 * 4 * n / float(np.median(ts)) / 1e9


def bench_tree(
  name: str, steps: int, skip: set[str], only: set[str], hlo_dir: str = ""
) -> list[dict]:
  shapes = TREES[name]()
  n_params = int(sum(np.prod(s) for s in shapes.values()))
  param_bytes = 4 * n_params
  grads = _tree(shapes, 1)
  runs = {}
  makers = {**optimizers(), **TRIALS}
  for opt_name, make in makers.items():
    if f"{name}:{opt_name}" in skip or (only and opt_name not in only):
      continue
    if opt_name in TRIALS and opt_name not in only:
      continue  # trials run only when --optimizers names them
    tx = make()

    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    params = _tree(shapes, 0)
    state = jax.jit(tx.init)(params)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if hlo_dir:  # the optimised HLO, to read what XLA made of each step (fusions, command buffers)
      path = pathlib.Path(hlo_dir) / f"{name}__{re.sub(r'[^A-Za-z0-9_.=-]+', '_', opt_name)}.txt"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(compiled.as_text())
    noop = jax.jit(lambda p, s, g: (p, s), donate_argnums=(0, 1)).lower(params, state, grads)
    runs[opt_name] = {
      "compiled": compiled,
      "params": params,
      "state": state,
      "times": [],
      "faults": [],
      "noop": noop.compile(),
      "row": {
        "tree": name,
        "optimizer": opt_name,
        "leaves": len(shapes),
        "params": n_params,
        "compile_s": compile_s,
        "state_over_params": sum(x.nbytes for x in jax.tree.leaves(state)) / param_bytes,
        "temp_over_params": (mem.temp_size_in_bytes / param_bytes) if mem else None,
        "kernels": entry_kernels(compiled.as_text()),
      },
    }
  for r in runs.values():  # warm-up
    r["params"], r["state"] = r["compiled"](r["params"], r["state"], grads)
    jax.block_until_ready(r["params"])
  order = list(runs.values())
  for i in range(steps):
    # Each round starts one later, so that no optimizer always follows the same one: what a
    # step leaves behind (optax.lamb hands ~2x the parameters of temporaries back to the OS
    # every step) falls on every optimizer alike, not always on the next in the list.
    for r in order[i % len(order) :] + order[: i % len(order)]:
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter()
      r["params"], r["state"] = r["compiled"](r["params"], r["state"], grads)
      jax.block_until_ready((r["params"], r["state"]))
      r["times"].append(time.perf_counter() - t0)
      r["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  for r in runs.values():  # back to back, one wait at the end; then the same for the no-op
    for key, f in (("pipelined_ms", r["compiled"]), ("noop_ms", r["noop"])):
      r["params"], r["state"] = f(r["params"], r["state"], grads)
      jax.block_until_ready((r["params"], r["state"]))
      t0 = time.perf_counter()
      for _ in range(steps):
        r["params"], r["state"] = f(r["params"], r["state"], grads)
      jax.block_until_ready((r["params"], r["state"]))
      r["row"][key] = 1e3 * (time.perf_counter() - t0) / steps
  rows = []
  for r in runs.values():
    ms = 1e3 * float(np.median(r["times"]))
    row = dict(
      r["row"],
      ms=ms,
      gbps=WORDS * param_bytes / (ms / 1e3) / 1e9,
      faults_per_step=float(np.median(r["faults"])),
    )
    rows.append(row)
  del runs
  gc.collect()
  return rows


def table(rows: list[dict], triad: float) -> str:
  out = [
    "| tree | optimizer | ms/step | vs optax.lamb | GB/s @10 words | of triad | compile s |"
    " state/params | temp/params | minor faults/step | pipelined ms | no-op ms | kernels |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  base = {r["tree"]: r for r in rows if r["optimizer"] == "optax.lamb"}
  for r in rows:
    b = base.get(r["tree"])
    rel = f"{r['ms'] / b['ms']:.2f}x" if b else "n/a"
    temp = "n/a" if r["temp_over_params"] is None else f"{r['temp_over_params']:.2f}"
    out.append(
      f"| {r['tree']} ({r['leaves']} leaves, {r['params'] / 1e6:.1f}M) | {r['optimizer']} |"
      f" {r['ms']:.1f} | {rel} | {r['gbps']:.1f} | {r['gbps'] / triad:.2f} |"
      f" {r['compile_s']:.1f} | {r['state_over_params']:.2f} | {temp} |"
      f" {r.get('faults_per_step', float('nan')):.0f} |"
      f" {_num(r, 'pipelined_ms')} | {_num(r, 'noop_ms')} | {r.get('kernels', 'n/a')} |"
    )
  return "\n".join(out)


def _num(row: dict, key: str) -> str:
  return f"{row[key]:.1f}" if key in row else "n/a"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--trees", default=",".join(TREES), help=f"comma list of {list(TREES)}")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument(
    "--skip",
    default="16m_x4096:optax.lamb,16m_x4096:optax.adamw",
    help="tree:optimizer pairs not to run (optax.lamb did not compile 4096 leaves in 470 s)",
  )
  ap.add_argument(
    "--optimizers", default="", help=f"comma list of {list(optimizers())}; empty: all"
  )
  ap.add_argument("--out", default="benchmarks/results")
  ap.add_argument("--tag", default=jax.default_backend())
  ap.add_argument("--hlo-dir", default="", help="write each step's optimised HLO text here")
  args = ap.parse_args()
  skip = {s for s in args.skip.split(",") if s}
  triad = triad_gbps()
  print(f"triad: {triad:.1f} GB/s on {jax.devices()[0].device_kind}", flush=True)
  meta = {
    "command": "python benchmarks/step_bench.py "
    + " ".join(
      f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
      for k, v in vars(args).items()
      if k != "out" and v
    ),
    "machine": f"{platform.platform()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind}",
    "jax": jax.__version__,
    "optax": optax.__version__,
    "triad_gbps": triad,
  }
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for name in args.trees.split(","):  # the files are rewritten after each tree
    only = {o for o in args.optimizers.split(",") if o}
    rows += bench_tree(name, args.steps, skip, only, args.hlo_dir)
    print(table([r for r in rows if r["tree"] == name], triad), flush=True)
    (out / f"step_bench_{args.tag}.json").write_text(
      json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    (out / f"step_bench_{args.tag}.md").write_text(
      f"`{meta['command']}` on {meta['machine']} (jax {meta['jax']}, optax {meta['optax']}),"
      f" triad {triad:.1f} GB/s\n\n" + table(rows, triad) + "\n"
    )
  print(table(rows, triad))


if __name__ == "__main__":
  main()
