"""Per-device optimizer-state bytes and step time on 1, 2, 4 and 8 (fake) devices.

Each device count runs in its own process (``XLA_FLAGS`` must be set before JAX
starts). Params are sharded FSDP-style along their first axis; the optimizer
state is built by ``jax.jit(tx.init)`` on the sharded params, as a training
script would. Reported for ``lamb_optax.lamb`` and ``optax.lamb``: bytes of
optimizer state held by device 0, and the median jitted step time (params and
state donated). On fake CPU devices all "devices" share the same cores, so step
times show the overhead of partitioning, not a speed-up.

    python benchmarks/sharded.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

CHILD = "--child"


def child(n_devices: int, layers: int, width: int, steps: int) -> dict:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import lamb_optax

  mesh = jax.make_mesh((n_devices,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  host = {}
  for i in range(layers):
    host[f"layer_{i}"] = {
      "kernel": rng.normal(size=(width, 4 * width)).astype(np.float32),
      "bias": np.zeros(4 * width, np.float32),
    }
  spec = lambda x: P("fsdp") if x.shape[0] % n_devices == 0 else P()  # noqa: E731
  shardings = jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), host)
  params = jax.device_put(host, shardings)
  grads = jax.device_put(jax.tree.map(lambda x: 0.01 * np.ones_like(x), host), shardings)
  n_params = sum(x.size for x in jax.tree.leaves(host))
  out = {"devices": n_devices, "params": int(n_params)}
  for name, tx in (
    ("lamb_optax.lamb", lamb_optax.lamb(1e-3, weight_decay=0.01)),
    ("optax.lamb", optax.lamb(1e-3, weight_decay=0.01)),
  ):
    state = jax.jit(tx.init)(params)
    dev0 = jax.devices()[0]
    state_bytes = sum(
      s.data.nbytes
      for x in jax.tree.leaves(state)
      for s in x.addressable_shards
      if s.device == dev0
    )

    @jax.jit
    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    step = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    p, s = step(p, state, grads)
    jax.block_until_ready((p, s))
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      p, s = step(p, s, grads)
      jax.block_until_ready((p, s))
      times.append(time.perf_counter() - t0)
    out[name] = {
      "state_bytes_device0": int(state_bytes),
      "state_bytes_per_param_byte": state_bytes / (4 * n_params),
      "median_step_ms": 1e3 * float(np.median(times)),
    }
  return out


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == CHILD:
    n, layers, width, steps = map(int, sys.argv[2:6])
    print(json.dumps(child(n, layers, width, steps)))
    return
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--width", type=int, default=512)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--out", default="benchmarks/results")
  args = ap.parse_args()
  rows = []
  for n in (1, 2, 4, 8):
    cmd = [
      sys.executable,
      __file__,
      CHILD,
      str(n),
      str(args.layers),
      str(args.width),
      str(args.steps),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
  meta = {
    "command": f"python benchmarks/sharded.py --layers {args.layers} --width {args.width}",
    "machine": f"{platform.platform()}, {os.cpu_count()} cores (fake devices)",
  }
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "sharded.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
  print(f"{rows[0]['params'] / 1e6:.1f}M float32 params, FSDP over the first axis")
  print("| devices | lamb_optax state bytes on device 0 (x param bytes) | step ms |"
        " optax.lamb state bytes on device 0 (x param bytes) | step ms |")  # fmt: skip
  print("|---|---|---|---|---|")
  for r in rows:
    a, b = r["lamb_optax.lamb"], r["optax.lamb"]
    print(
      f"| {r['devices']} | {a['state_bytes_device0'] / 2**20:.1f} MiB"
      f" ({a['state_bytes_per_param_byte']:.3f}) | {a['median_step_ms']:.1f} |"
      f" {b['state_bytes_device0'] / 2**20:.1f} MiB ({b['state_bytes_per_param_byte']:.3f}) |"
      f" {b['median_step_ms']:.1f} |"
    )


if __name__ == "__main__":
  main()
