"""One of the two processes that ``tests/test_multiprocess.py`` starts on this machine.

Run as ``python tests/_multiprocess_worker.py MODE PROCESS_ID PORT OUT_DIR DEADLINE PARENT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in the environment: it joins the other
process through ``jax.distributed`` (coordinator on 127.0.0.1, gloo CPU collectives), builds
an 8-device FSDP mesh over both processes' devices and, for each optimizer of ``OPTIMIZERS``:

- ``MODE="run"``: runs ``STEPS`` sharded steps from the initial params, saving params and
  state with orbax after ``SAVE_AT`` steps;
- ``MODE="resume"``: restores that checkpoint (fresh processes) and runs the remaining steps.

Each process writes ``OUT_DIR/MODE-PROCESS_ID.npz``: the params after every step, the final
state (gathered from both processes) and how the params and moments are sharded.

The test process imports this module too, for the same tree, gradients and step on one device
(the reference). A watchdog thread ends the process at ``DEADLINE`` (a ``time.time()``) or
when its parent (the process ``PARENT``) is gone, so no worker outlives the test that started
it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import optax
from test_sharding import FSDP, GROUPS, _tree

import lamb_optax

STEPS = 4  # steps of the uninterrupted run
SAVE_AT = 2  # the "run" pair checkpoints after this many; the "resume" pair continues from it
LAYER_AXES = lamb_optax.layer_axes_from_regex("^blocks/")
OPTIMIZERS = {
  "plain": lambda: lamb_optax.lamb(0.05, weight_decay=0.01, layer_axes=LAYER_AXES),
  "grouped": lambda: lamb_optax.lamb(0.05, groups=GROUPS, layer_axes=LAYER_AXES),
}


def host_params() -> dict:
  """The initial params as float32 NumPy arrays (``tests/test_sharding.py``'s tree)."""
  return jax.tree.map(lambda x: np.asarray(x, np.float32), _tree())


def host_grads() -> list[dict]:
  """The gradients of every step, as float32 NumPy arrays: the same in every process."""
  rng = np.random.default_rng(1)
  params = host_params()
  return [
    jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    for _ in range(STEPS)
  ]


def make_step(tx: optax.GradientTransformation):
  """The jitted training step: ``(params, state, grads) -> (params, state)``."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step)


def flat(prefix: str, tree) -> dict[str, np.ndarray]:
  """``{prefix + key path: NumPy array}`` of a pytree of host-readable arrays."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {prefix + jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def _log(msg: str) -> None:
  """Progress in the worker's log, which a failing test shows."""
  now, cpu = time.strftime("%H:%M:%S"), time.process_time()
  print(f"[{now}, {cpu:5.1f} s cpu] {msg}", file=sys.stderr, flush=True)


def _watchdog(deadline: float, parent: int) -> None:
  """Ends this process at ``deadline`` (a ``time.time()``) or once ``parent`` is gone."""

  def watch():
    while time.time() < deadline and os.getppid() == parent:
      time.sleep(0.5)
    _log("deadline passed or parent gone: exiting")
    os._exit(3)

  threading.Thread(target=watch, daemon=True).start()


def _put(host, shardings):
  """Global arrays over both processes' devices, each process filling its own shards."""
  return jax.tree.map(
    lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx]), host, shardings
  )


def _sharding_facts(prefix: str, state, params, shardings) -> dict[str, np.ndarray]:
  """For params, m and v: sharded exactly as FSDP says, over both processes."""
  out = {}
  trees = {"params": params, "mu": state.mu.as_tree(), "nu": state.nu.as_tree()}
  for what, tree in trees.items():
    same = jax.tree.map(
      lambda x, sh: (
        x.sharding.is_equivalent_to(sh, x.ndim)
        and not x.sharding.is_fully_replicated
        and not x.is_fully_addressable  # half the shards live in the other process
        and len(x.addressable_shards) == jax.local_device_count()
      ),
      tree,
      shardings,
    )
    out.update(flat(f"{prefix}/{what}", same))
  return out


def main(mode: str, process_id: int, port: int, out_dir: Path, deadline: float) -> None:
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding

  _log("imported")
  jax.config.update("jax_numpy_rank_promotion", "raise")  # as tests/conftest.py
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    coordinator_bind_address=f"127.0.0.1:{port}",
    num_processes=2,
    process_id=process_id,
    cluster_detection_method="deactivate",
    initialization_timeout=max(int(deadline - time.time()), 1),
    shutdown_timeout_seconds=max(int(deadline - time.time()), 1),
  )
  _log("initialized")
  assert (jax.process_count(), jax.local_device_count(), jax.device_count()) == (2, 4, 8)
  auto = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((8,), ("d",), axis_types=(auto,))
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), FSDP)
  host, grads = host_params(), host_grads()
  results = {}
  for name, make_tx in OPTIMIZERS.items():
    _log(name)
    tx = make_tx()
    step = make_step(tx)
    ckpt = out_dir / "ckpt" / name
    with ocp.StandardCheckpointer() as ckptr:
      if mode == "run":
        start, params = 0, _put(host, shardings)
        state = jax.jit(tx.init)(params)
      else:
        start = SAVE_AT
        target_p = jax.tree.map(
          lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), host, shardings
        )
        target_s = jax.tree.map(
          lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
          jax.eval_shape(tx.init, host),
          lamb_optax.state_shardings(tx, target_p),
        )
        restored = ckptr.restore(ckpt, {"params": target_p, "opt_state": target_s})
        params, state = restored["params"], restored["opt_state"]
        results.update(
          flat(f"{name}/saved", multihost_utils.process_allgather(restored, tiled=True))
        )
        _log("restored")
      assert all(b.solo for b in state.mu.layout.blocks)  # few leaves: each its own m and v
      results.update(_sharding_facts(f"{name}/sharded/start", state, params, shardings))
      for i in range(start, STEPS):
        params, state = step(params, state, _put(grads[i], shardings))
        _log(f"step {i + 1}")
        results.update(
          flat(f"{name}/params/{i + 1}", multihost_utils.process_allgather(params, tiled=True))
        )
        if mode == "run" and i + 1 == SAVE_AT:
          saved = {"params": params, "opt_state": state}
          ckptr.save(ckpt, saved)
          ckptr.wait_until_finished()
          results.update(
            flat(f"{name}/saved", multihost_utils.process_allgather(saved, tiled=True))
          )
          _log("saved")
    results.update(_sharding_facts(f"{name}/sharded/end", state, params, shardings))
    results.update(flat(f"{name}/state", multihost_utils.process_allgather(state, tiled=True)))
  _log("gathered")
  np.savez(out_dir / f"{mode}-{process_id}.npz", **results)
  jax.distributed.shutdown()
  _log("done")


if __name__ == "__main__":
  mode, process_id, port, out_dir, deadline, parent = sys.argv[1:]
  _watchdog(float(deadline), int(parent))
  main(mode, int(process_id), int(port), Path(out_dir), float(deadline))
