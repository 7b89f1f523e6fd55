"""Two processes on this machine, run as two hosts would be: JAX's multi-process runtime.

Two worker processes (``tests/_multiprocess_worker.py``, 4 CPU devices each) join through
``jax.distributed`` with a coordinator on 127.0.0.1 and gloo CPU collectives, and run the
jitted ``lamb`` step with FSDP over all 8 devices, plain and grouped, with ``layer_axes``.
Checked here:
- every step's params and the final state (m, v, trust ratios, count) equal the same steps
  on one device in this process, to rtol 1e-5 (sharded sums add in another order);
- params, m and v are sharded as FSDP says, each process holding its half of the shards, after
  init, after a restore and after the last step;
- both processes gathered the same numbers;
- an orbax checkpoint written by both processes after 2 of 4 steps, restored by a fresh pair
  of processes against ``eval_shape`` targets with the mesh shardings, holds exactly what was
  saved and continues bit for bit as the run that never stopped.

Both pairs together must end within ``BUDGET_S``: a failing worker ends the test at once,
the test kills every worker it started before it returns, and each worker also ends itself
at the same deadline (plus a margin) or when this process dies. Workers write to log files,
which a failure shows.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _multiprocess_worker as worker
import jax
import jax.numpy as jnp
import numpy as np

BUDGET_S = 170  # both pairs; a passing run took 40 to 70 s on 2 busy cores, under xdist too


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # 127.0.0.1 only
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # read when jax is imported
  env["JAX_PLATFORMS"] = "cpu"
  return env


@contextlib.contextmanager
def _pair(mode: str, out: Path, deadline: float):
  """Starts the two workers of ``mode``; yields ``wait() -> [results of process 0, of 1]``.

  No worker is left running when the ``with`` block exits, however it exits.
  """
  port, procs, logs = _free_port(), [], []
  ends_at = time.time() + (deadline - time.monotonic()) + 10  # the workers' own limit
  try:
    for i in range(2):
      log = open(out / f"{mode}-{i}.log", "w+b")  # noqa: SIM115 (closed in finally)
      logs.append(log)
      args = [mode, i, port, out, ends_at, os.getpid()]
      cmd = [sys.executable, worker.__file__, *map(str, args)]
      procs.append(subprocess.Popen(cmd, env=_worker_env(), stdout=log, stderr=subprocess.STDOUT))

    def wait():
      while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if all(c == 0 for c in codes) or any(c not in (None, 0) for c in codes):
          break
        time.sleep(0.2)
      codes = [p.poll() for p in procs]
      if codes != [0, 0]:
        _end(procs)
        raise AssertionError(
          f"{mode} workers: exit codes {codes} (None: still running at the deadline)\n"
          + _tails(logs)
        )
      return [dict(np.load(out / f"{mode}-{i}.npz")) for i in range(2)]

    yield wait
  finally:
    _end(procs)
    for log in logs:
      log.close()


def _end(procs) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    p.wait(timeout=30)  # SIGKILL cannot be ignored


def _tails(logs, chars=5000) -> str:
  out = []
  for i, log in enumerate(logs):
    log.seek(0)
    text = log.read().decode(errors="replace")
    out.append(f"--- process {i}, last {chars} characters ---\n{text[-chars:]}")
  return "\n".join(out)


def _single_device() -> dict[str, np.ndarray]:
  """The same steps on one device of this process, under the workers' keys."""
  grads = worker.host_grads()
  out = {}
  for name, make_tx in worker.OPTIMIZERS.items():
    tx = make_tx()
    step = worker.make_step(tx)
    params = jax.tree.map(jnp.asarray, worker.host_params())
    state = tx.init(params)
    for i in range(worker.STEPS):
      params, state = step(params, state, grads[i])
      out.update(worker.flat(f"{name}/params/{i + 1}", params))
    out.update(worker.flat(f"{name}/state", state))
  return out


def test_two_processes_equal_one_device_and_resume_bit_identically(tmp_path):
  deadline = time.monotonic() + BUDGET_S
  with _pair("run", tmp_path, deadline) as wait:
    expected = _single_device()  # while the workers run
    run = wait()
  with _pair("resume", tmp_path, deadline) as wait:
    resume = wait()

  for results in (*run, *resume):
    facts = {k: v for k, v in results.items() if "/sharded/" in k}
    assert len(facts) == 2 * 2 * 3 * 6, sorted(facts)  # optimizers, start/end, p/m/v, leaves
    wrong = [k for k, v in facts.items() if not v]
    assert not wrong, wrong
  for a, b in (run, resume):  # what process 0 gathered, process 1 gathered too
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  run, resume = run[0], resume[0]

  assert set(expected) <= set(run)
  assert any("/state.mu" in k for k in expected), sorted(expected)
  for k in expected:  # 2 processes x 4 devices == 1 device
    np.testing.assert_allclose(run[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=k)

  before = tuple(
    f"{n}/params/{i}[" for n in worker.OPTIMIZERS for i in range(1, worker.SAVE_AT + 1)
  )
  assert set(resume) == {k for k in run if not k.startswith(before)}
  for k in resume:  # the checkpoint as saved, then the steps after it, bit for bit
    if "/sharded/" not in k:
      np.testing.assert_array_equal(resume[k], run[k], err_msg=k)
