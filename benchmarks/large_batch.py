"""Steps to a target test accuracy vs batch size on MNIST-1D: AdamW, LAMB, LAMB tuned.

The method of Shallue et al. (2019) and Nado et al. (2021): at each batch size, each
optimizer gets the same learning-rate tuning budget, the best learning rate is rerun
with fresh seeds, and the steps each needs to reach a target test accuracy are plotted
against the batch size (perfect scaling: slope -1 on log-log axes).

Protocol (the constants are in `FULL` below):
- data: MNIST-1D generated locally by the `mnist1d` package's `make_dataset` (seed 0,
  500,000 training and 10,000 test examples; the hash is recorded), never downloaded;
- model: the MNIST-1D paper's CNN (`lamb_optax.large_batch.cnn_apply`, 5210 params);
- optimizers (`lamb_optax.large_batch.OPTIMIZERS`): `optax.adamw` (weight decay 0.01
  on kernels), `lamb_optax.lamb` with its defaults (no weight decay, trust ratio on
  every leaf), and `lamb_optax.lamb` with practitioners' settings (weight decay 0.01 on
  kernels, biases excluded from decay and from the trust ratio, no ratio clipping);
- batch sizes 64, 256, 1024, 4096, 16384; batches drawn uniformly with replacement;
- step cap per batch size, the same for every optimizer: max(1000, 2**21 / batch);
- schedule: linear warmup from 0 over the first 5% of the cap, then constant;
- learning-rate grid: powers of 2 times 1e-3; 6 consecutive points per optimizer and
  batch size, starting at batch 1024 from 0.008 for AdamW and 0.002 for both LAMBs and
  one point higher per 4x batch size (`_grid_start`); when the best is the smallest or
  the largest point tried, 2 more points are added beyond it, up to 2 times;
- tuning runs use seed 0; a tuning group stops once it has run 1.5x the fewest steps
  any of its runs took to the top target (a run that is slower cannot be the best); a
  run with a non-finite loss or parameter is diverged;
- "best": not diverged, then fewest steps to 97%, then to 95%, then the highest test
  accuracy seen; it is rerun with seeds 1, 2, 3 until each reaches 97% (or the cap);
- stability: where it costs at most 2**22 examples (batch 4096 and below), the best
  learning rate also trains to the cap with seed 0 ("long" runs), whatever it reached;
- test accuracy on the 10,000 test examples every max(1, 2**14 / batch) steps (the
  granularity of steps-to-target).

Each optimizer and batch size trains all its learning rates (or seeds) side by side in
one `jax.vmap`, with `jax.lax.scan` over the steps between evaluations
(`lamb_optax.large_batch.run_grid`).

    python benchmarks/large_batch.py                  # the full study (2.2 CPU-hours)
    python benchmarks/large_batch.py --resume         # continue a killed run from its JSON
    python benchmarks/large_batch.py --sanity         # the paper's CNN on the default data
    python benchmarks/large_batch.py --report         # figure and table from the JSON only
    python benchmarks/large_batch.py --smoke --out D  # seconds, tiny; the tests run this

Writes `large_batch.json` (every trial; rewritten after each group), `large_batch.png`
and `large_batch.md` to `--out` (default `benchmarks/results`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import pathlib
import platform
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb_optax import large_batch as lb

LABELS = {
  "adamw": "AdamW",
  "lamb": "LAMB (defaults)",
  "lamb_tuned": "LAMB (wd, no ratio on biases)",
}


@dataclasses.dataclass(frozen=True)
class Study:
  """The constants of one study (the full one, or the smoke one the tests run)."""

  n_train: int = 500_000
  n_test: int = 10_000
  data_seed: int = 0
  batch_sizes: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
  optimizers: tuple[str, ...] = ("adamw", "lamb", "lamb_tuned")
  targets: tuple[float, ...] = (0.95, 0.97)
  n_lrs: int = 6  # initial grid points per (optimizer, batch size)
  n_extend: int = 2  # points added beyond an edge, at most `max_extensions` times
  max_extensions: int = 2
  tune_seed: int = 0
  seeds: tuple[int, ...] = (1, 2, 3)
  stop_factor: float = 1.5
  cap_examples: int = 2**21  # cap = max(min_cap, cap_examples / batch)
  min_cap: int = 1000
  eval_examples: int = 2**14  # eval every max(1, eval_examples / batch) steps
  warmup_frac: float = 0.05

  def cap(self, batch: int) -> int:
    steps = max(self.min_cap, self.cap_examples // batch)
    return steps - steps % self.eval_every(batch)

  def eval_every(self, batch: int) -> int:
    return max(1, self.eval_examples // batch)

  def warmup(self, batch: int) -> int:
    return round(self.warmup_frac * max(self.min_cap, self.cap_examples // batch))


# Long runs (the best lr to the cap, seed 0) where the cap costs at most this many examples.
LONG_MAX_EXAMPLES = 2**22
FULL = Study()
NORM_BATCHES = (256, 4096)  # the weight-norm figure's batch sizes (others: all the study's)
SMOKE = Study(  # one batch size, 2 runs per phase but the long one: 6 XLA compiles in all
  n_train=2000,
  n_test=500,
  batch_sizes=(64,),
  targets=(0.2, 0.3),
  n_lrs=2,
  n_extend=2,
  max_extensions=1,
  seeds=(1, 2),
  cap_examples=2**11,
  min_cap=16,
  eval_examples=2**8,
)

# LR grid: lr = 1e-3 * 2**k. The initial grid's first k at batch 1024, per optimizer,
# from a one-seed pilot at batch 1024 on 200k examples (best: AdamW 0.032, the largest it
# tried; LAMB defaults 0.008; LAMB tuned 0.016), so that the pilot's best is inside the
# grid; one point higher per factor of 4 in batch size (the square-root rule).
_K0 = {"adamw": 3, "lamb": 1, "lamb_tuned": 1}


def _grid_start(optimizer: str, batch: int) -> int:
  return _K0[optimizer] + round(math.log(batch / 1024, 4))


def _lr(k: int) -> float:
  return 1e-3 * 2.0**k


def _k(lr: float) -> int:
  return round(math.log2(lr / 1e-3))


class Results:
  """The JSON file: every trial, written after each group so a killed run resumes."""

  def __init__(self, path: pathlib.Path, meta: dict[str, Any], resume: bool) -> None:
    self.path = path
    self.data: dict[str, Any] = {"meta": meta, "groups": [], "trials": []}
    if resume and path.exists():
      old = json.loads(path.read_text())
      if old["meta"]["study"] != json.loads(json.dumps(meta["study"])):
        raise SystemExit(f"{path} was written by a different study; not resuming")
      self.data["groups"], self.data["trials"] = old["groups"], old["trials"]
      self.data["meta"]["resumed_from_cpu_s"] = sum(g["cpu_s"] for g in old["groups"])

  def find(self, phase: str, opt: str, batch: int, lrs: Sequence[float], seeds: Sequence[int]):
    want = {(lb._sig(lr), s) for lr, s in zip(lrs, seeds, strict=True)}
    got = [
      t
      for t in self.data["trials"]
      if t["phase"] == phase
      and t["optimizer"] == opt
      and t["batch_size"] == batch
      and (t["lr"], t["seed"]) in want
    ]
    return got if len(got) == len(want) else None

  def add(self, group: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    self.data["groups"].append(group)
    self.data["trials"].extend(trials)
    self.write()

  def write(self) -> None:
    tmp = self.path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(self.data, separators=(",", ":")))
    os.replace(tmp, self.path)


def _run_group(
  res: Results,
  study: Study,
  data: lb.Dataset,
  phase: str,
  opt: str,
  batch: int,
  lrs: Sequence[float],
  seeds: Sequence[int],
  *,
  stop: bool,
  known_best: int | None,
  log: Any,
  to_cap: bool = False,
) -> list[dict[str, Any]]:
  done = res.find(phase, opt, batch, lrs, seeds)
  if done is not None:
    return done
  timer = lb.Timer()
  trials = lb.run_grid(
    data,
    opt,
    batch,
    lrs,
    seeds,
    cap=study.cap(batch),
    eval_every=study.eval_every(batch),
    warmup_steps=study.warmup(batch),
    targets=study.targets,
    stop_factor=study.stop_factor if stop else None,
    known_best=known_best,
    to_cap=to_cap,
  )
  for t in trials:
    t["phase"] = phase
  group = {
    "phase": phase,
    "optimizer": opt,
    "batch_size": batch,
    "lrs": [lb._sig(v) for v in lrs],
    "seeds": list(seeds),
    "stopped_at": trials[0]["stopped_at"],
    "wall_s": round(timer.wall(), 1),
    "cpu_s": round(timer.cpu(), 1),
  }
  res.add(group, trials)
  top = f"{max(study.targets):g}"
  log(
    f"{phase:6} {opt:10} batch {batch:5}: lr "
    + " ".join(f"{t['lr']:g}" for t in trials)
    + f" | steps to {top}: "
    + " ".join(str(t["steps_to"][top]) if t["diverged_at"] is None else "div" for t in trials)
    + f" | {group['stopped_at']} steps, {group['wall_s']:.0f} s wall, {group['cpu_s']:.0f} s cpu"
  )
  return trials


def run_study(study: Study, data: lb.Dataset, res: Results, log: Any) -> None:
  """Tunes every (optimizer, batch size), extends grids at edges, reruns the best."""
  top = f"{max(study.targets):g}"
  for batch in study.batch_sizes:
    for opt in study.optimizers:
      k0 = _grid_start(opt, batch)
      tried = list(range(k0, k0 + study.n_lrs))
      trials = _run_group(
        res,
        study,
        data,
        "tune",
        opt,
        batch,
        [_lr(k) for k in tried],
        [study.tune_seed] * len(tried),
        stop=True,
        known_best=None,
        log=log,
      )
      for _ in range(study.max_extensions):
        best = lb.best_trial(trials, study.targets)
        kb = _k(best["lr"])
        if kb == min(tried):
          new = list(range(kb - study.n_extend, kb))
        elif kb == max(tried):
          new = list(range(kb + 1, kb + 1 + study.n_extend))
        else:
          break
        tried += new
        trials = trials + _run_group(
          res,
          study,
          data,
          "extend",
          opt,
          batch,
          [_lr(k) for k in new],
          [study.tune_seed] * len(new),
          stop=True,
          known_best=best["steps_to"][top],
          log=log,
        )
      best = lb.best_trial(trials, study.targets)
      _run_group(
        res,
        study,
        data,
        "seeds",
        opt,
        batch,
        [best["lr"]] * len(study.seeds),
        list(study.seeds),
        stop=False,
        known_best=None,
        log=log,
      )
      if study.cap(batch) * batch <= LONG_MAX_EXAMPLES:
        _run_group(
          res,
          study,
          data,
          "long",
          opt,
          batch,
          [best["lr"]],
          [study.tune_seed],
          stop=False,
          known_best=None,
          log=log,
          to_cap=True,
        )


def _status(trial: dict[str, Any] | None, top: str) -> str:
  """How one tuning run ended, in a few words."""
  if trial is None:
    return "not tried"
  if trial["diverged_at"] is not None:
    return f"non-finite at {trial['diverged_at']}"
  if trial["steps_to"][top] is not None:
    return f"{trial['steps_to'][top]}"
  if trial["best_accuracy"] - trial["final_accuracy"] > 0.2:
    return f"collapsed ({trial['best_accuracy']:.2f} to {trial['final_accuracy']:.2f})"
  return f"no ({trial['best_accuracy']:.3f} by {trial['stopped_at']})"


def summarize(data: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (optimizer, batch size): the tuned lr, the seeds' steps, what failed.

  ``blown_up_lrs``: tuning runs whose largest kernel norm grew 100x or more over its
  initial value while finite (healthy runs here stay under 30x); ``collapsed_lrs``:
  runs whose final test accuracy is more than 20 points below their best; ``at_2x``:
  how the run at twice the best learning rate ended.
  """
  study = data["meta"]["study"]
  targets = study["targets"]
  top = f"{max(targets):g}"
  rows = []
  for batch in study["batch_sizes"]:
    for opt in study["optimizers"]:
      mine = [t for t in data["trials"] if t["optimizer"] == opt and t["batch_size"] == batch]
      tune = [t for t in mine if t["phase"] in ("tune", "extend")]
      seeds = [t for t in mine if t["phase"] == "seeds"]
      long = [t for t in mine if t["phase"] == "long"]
      if not tune or not seeds:
        continue
      best = lb.best_trial(tune, targets)
      by_lr = {t["lr"]: t for t in tune}
      row = {
        "optimizer": opt,
        "batch_size": batch,
        "cap": study["caps"][str(batch)],
        "best_lr": best["lr"],
        "tuning_steps_to": best["steps_to"],
        "lrs_tried": sorted(by_lr),
        "diverged_lrs": sorted(t["lr"] for t in tune if t["diverged_at"] is not None),
        "blown_up_lrs": sorted(
          t["lr"] for t in tune if t["norm_growth"] is not None and t["norm_growth"] >= 100
        ),
        "collapsed_lrs": sorted(
          t["lr"] for t in tune if t["best_accuracy"] - t["final_accuracy"] > 0.2
        ),
        "at_2x": _status(by_lr.get(lb._sig(2 * best["lr"])), top),
        "seeds": [t["seed"] for t in seeds],
        "steps_to": {f"{tg:g}": [t["steps_to"][f"{tg:g}"] for t in seeds] for tg in targets},
        "final_accuracy": [t["final_accuracy"] for t in seeds],
        "diverged_seeds": [t["seed"] for t in seeds if t["diverged_at"] is not None],
        "long": None
        if not long
        else {
          "steps": long[0]["stopped_at"],
          "best_accuracy": long[0]["best_accuracy"],
          "final_accuracy": long[0]["final_accuracy"],
          "norm_growth": long[0]["norm_growth"],
          "diverged_at": long[0]["diverged_at"],
        },
      }
      rows.append(row)
  return rows


def _median(values: Sequence[int | None]) -> float | None:
  """Median with "not reached" counted as larger than any number (None if it is one)."""
  v = sorted(math.inf if x is None else x for x in values)
  m = v[(len(v) - 1) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
  return None if m == math.inf else m


def table(data: dict[str, Any]) -> str:
  """The markdown table of `summarize`."""
  rows = summarize(data)
  targets = data["meta"]["study"]["targets"]
  top = f"{max(targets):g}"
  adamw = {r["batch_size"]: _median(r["steps_to"][top]) for r in rows if r["optimizer"] == "adamw"}
  head = "| batch (cap) | optimizer | best lr |"
  head += "".join(f" steps to {t:.0%}: median [seeds] |" for t in targets)
  head += f" vs AdamW ({float(top):.0%}) | at 2x best lr: steps to {float(top):.0%} |"
  head += " lrs tried / non-finite / norm 100x+ / collapsed |"
  head += " best lr to the cap: test acc best, final; norm growth |"
  lines = [head, "|" + "---|" * (7 + len(targets))]
  for r in rows:
    cells = [f"{r['batch_size']} ({r['cap']})", LABELS[r["optimizer"]], f"{r['best_lr']:g}"]
    for t in targets:
      s = r["steps_to"][f"{t:g}"]
      med = _median(s)
      shown = ", ".join("–" if x is None else str(x) for x in s)
      cells.append(f"{'not reached' if med is None else f'{med:g}'} [{shown}]")
    mine, ref = _median(r["steps_to"][top]), adamw.get(r["batch_size"])
    cells.append("–" if r["optimizer"] == "adamw" or not (mine and ref) else f"{mine / ref:.2f}x")
    cells.append(r["at_2x"])
    cells.append(
      f"{len(r['lrs_tried'])} / {len(r['diverged_lrs'])} / {len(r['blown_up_lrs'])}"
      f" / {len(r['collapsed_lrs'])}"
    )
    g = r["long"]
    cells.append(
      "not run"
      if g is None
      else f"{g['best_accuracy']:.3f}, {g['final_accuracy']:.3f}; {g['norm_growth']:.3g}x"
      + ("" if g["diverged_at"] is None else f"; non-finite at {g['diverged_at']}")
    )
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def blowups(data: dict[str, Any]) -> list[dict[str, Any]]:
  """Every run whose largest kernel norm grew 100x or more, with its fastest growth.

  ``max_rate`` is the largest per-step growth of the log of the largest kernel
  norm between two evaluations. A LAMB step moves each layer by ``lr * ||w||``,
  so ``log(1 + lr)`` is the fastest possible: reached when the update points
  along ``w`` itself.
  """
  rows = []
  best = {(r["optimizer"], r["batch_size"]): r["best_lr"] for r in summarize(data)}
  for t in data["trials"]:
    if t["norm_growth"] is None or t["norm_growth"] < 100:
      continue
    c = t["curve"]
    pts = [(s, math.log(v)) for s, v in zip(c["step"], c["max_kernel_norm"], strict=True) if v]
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(pts)]
    ref = best.get((t["optimizer"], t["batch_size"]))
    rows.append(
      {
        "optimizer": t["optimizer"],
        "batch_size": t["batch_size"],
        "phase": t["phase"],
        "seed": t["seed"],
        "lr": t["lr"],
        "lr_over_best": None if ref is None else lb._sig(t["lr"] / ref),
        "norm_growth": t["norm_growth"],
        "max_rate": lb._sig(max(rates)) if rates else None,
        "log1p_lr": lb._sig(math.log1p(t["lr"])),
        "best_accuracy": t["best_accuracy"],
        "final_accuracy": t["final_accuracy"],
        "stopped_at": t["stopped_at"],
        "diverged_at": t["diverged_at"],
      }
    )
  return rows


def blowup_table(data: dict[str, Any]) -> str:
  """The markdown table of `blowups`."""
  lines = [
    "| optimizer | batch | run | lr (x best) | norm growth | fastest growth per step"
    " (log) | log(1 + lr) | test acc: best, final | steps run |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in blowups(data):
    run = {"seeds": f"seed {r['seed']}", "long": "long, seed 0"}.get(r["phase"], "tuning")
    ratio = "" if r["lr_over_best"] is None else f" ({r['lr_over_best']:g}x)"
    end = f"{r['stopped_at']}" + ("" if r["diverged_at"] is None else ", then non-finite")
    lines.append(
      f"| {LABELS[r['optimizer']]} | {r['batch_size']} | {run} | {r['lr']:g}{ratio} |"
      f" {r['norm_growth']:.3g}x | {r['max_rate']:.4f} | {r['log1p_lr']:.4f} |"
      f" {r['best_accuracy']:.3f}, {r['final_accuracy']:.3f} | {end} |"
    )
  return "\n".join(lines) + "\n"


def _pyplot() -> Any:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def figure(data: dict[str, Any], path: pathlib.Path) -> None:
  """Steps to each target vs batch size, log-log: seed median, band from min to max."""
  rows = summarize(data)
  study = data["meta"]["study"]
  targets = study["targets"]
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.2), sharey=True)
  axes = np.atleast_1d(axes)
  for ax, tg in zip(axes, targets, strict=True):
    key = f"{tg:g}"
    for j, opt in enumerate(study["optimizers"]):
      pts = [r for r in rows if r["optimizer"] == opt]
      xs, med, lo, hi, missing = [], [], [], [], []
      for r in pts:
        s = r["steps_to"][key]
        reached = [x for x in s if x is not None]
        if _median(s) is None:
          missing.append(r)
          continue
        xs.append(r["batch_size"])
        med.append(_median(s))
        lo.append(min(reached))
        hi.append(max(reached) if len(reached) == len(s) else r["cap"])
      (line,) = ax.plot(xs, med, "o-", label=LABELS[opt])
      ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
      if missing:  # at the cap, nudged sideways so the optimizers' marks do not hide each other
        nudge = 2 ** (0.08 * (j - 1))
        ax.plot(
          [r["batch_size"] * nudge for r in missing],
          [r["cap"] for r in missing],
          "x",
          color=line.get_color(),
          ms=9,
          mew=2,
        )
    b = np.array(study["batch_sizes"], float)
    first = [r for r in rows if r["batch_size"] == b[0] and _median(r["steps_to"][key])]
    if first:
      s0 = min(_median(r["steps_to"][key]) for r in first)
      ax.plot(b, s0 * b[0] / b, "k:", lw=1, label="perfect scaling (slope -1)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_title(f"steps to {tg:.0%} test accuracy")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("steps")
  axes[0].legend(fontsize=8)
  fig.suptitle(
    f"MNIST-1D CNN, lr tuned per batch size; line: median of {len(study['seeds'])} seeds,"
    " band: min to max, x: not reached by the step cap",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def norms_figure(data: dict[str, Any], path: pathlib.Path, batches: Sequence[int]) -> None:
  """Largest kernel norm over training, every tuning lr, one panel per optimizer and batch."""
  study = data["meta"]["study"]
  batches = [b for b in batches if b in study["batch_sizes"]] or study["batch_sizes"]
  plt = _pyplot()
  opts = study["optimizers"]
  fig, axes = plt.subplots(
    len(batches), len(opts), figsize=(4.2 * len(opts), 3.2 * len(batches)), squeeze=False
  )
  for row, batch in zip(axes, batches, strict=True):
    for ax, opt in zip(row, opts, strict=True):
      tune = sorted(
        (
          t
          for t in data["trials"]
          if t["optimizer"] == opt and t["batch_size"] == batch and t["phase"] in ("tune", "extend")
        ),
        key=lambda t: t["lr"],
      )
      colors = plt.cm.viridis(np.linspace(0, 0.9, len(tune)))
      for t, color in zip(tune, colors, strict=True):
        c = t["curve"]
        pts = [(0, max(t["kernel_norms"]["init"]))]
        pts += [(s, v) for s, v in zip(c["step"], c["max_kernel_norm"], strict=True) if v]
        style = "--" if t["diverged_at"] is not None else "-"
        ax.plot(*zip(*pts, strict=True), style, color=color, label=f"{t['lr']:g}")
      ax.set_yscale("log")
      ax.set_title(f"{LABELS[opt]}, batch {batch}", fontsize=9)
      ax.set_xlabel("step")
      ax.grid(True, which="both", alpha=0.3)
      ax.legend(fontsize=6, title="lr (dashed: non-finite)", title_fontsize=6, ncol=2)
    row[0].set_ylabel("largest kernel norm")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def sanity(seeds: Sequence[int] = (0, 1, 2, 3, 4), steps: int = 8000) -> dict[str, Any]:
  """The paper's training of its CNN on the package's default data, one run per seed.

  As greydanus/mnist1d's notebooks/train.py: Adam, learning rate 1e-2, no weight
  decay, batch 100 taken in order from the 4000 training examples (no shuffling),
  8000 steps, test accuracy every 250 steps on the 1000 test examples.
  """
  data = lb.mnist1d()
  x, y = jnp.asarray(data.x), jnp.asarray(data.y)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  tx = optax.adam(1e-2)
  every, batch = 250, 100

  def train(params):
    def step(carry, t):
      params, state = carry
      start = (t * batch) % x.shape[0]
      xb = jax.lax.dynamic_slice_in_dim(x, start, batch)
      yb = jax.lax.dynamic_slice_in_dim(y, start, batch)
      grads = jax.grad(lb._loss)(params, xb, yb)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    def block(carry, t0):
      carry, _ = jax.lax.scan(step, carry, t0 + jnp.arange(every))
      acc = jnp.mean(jnp.argmax(lb.cnn_apply(carry[0], x_test), -1) == y_test)
      return carry, acc

    _, accs = jax.lax.scan(block, (params, tx.init(params)), jnp.arange(0, steps, every))
    return accs

  timer = lb.Timer()
  params = jax.tree.map(lambda *p: jnp.stack(p), *[lb.cnn_init(s) for s in seeds])
  accs = np.asarray(jax.jit(jax.vmap(train))(params))
  return {
    "what": "Adam 1e-2, batch 100 in order, 8000 steps, default MNIST-1D (4000/1000, seed 42)",
    "published_test_accuracy": 0.94,
    "published_source": "mnist1d README and Greydanus 2020, table of test accuracies (CNN: 94%)",
    "data_sha256": data.sha256,
    "seeds": list(seeds),
    "final_accuracy": [float(a) for a in accs[:, -1]],
    "max_accuracy": [float(a) for a in accs.max(1)],
    "eval_steps": list(range(every, steps + 1, every)),
    "accuracy_curves": accs.round(4).tolist(),
    "wall_s": round(timer.wall(), 1),
    "cpu_s": round(timer.cpu(), 1),
  }


def _meta(study: Study, args: argparse.Namespace, data: lb.Dataset | None) -> dict[str, Any]:
  s = dataclasses.asdict(study)
  s["caps"] = {str(b): study.cap(b) for b in study.batch_sizes}
  s["eval_every"] = {str(b): study.eval_every(b) for b in study.batch_sizes}
  s["warmup_steps"] = {str(b): study.warmup(b) for b in study.batch_sizes}
  s["grid_start"] = {
    o: {str(b): _lr(_grid_start(o, b)) for b in study.batch_sizes} for o in study.optimizers
  }
  from importlib.metadata import version

  import mnist1d  # noqa: F401

  return {
    "command": "python benchmarks/large_batch.py " + " ".join(sys.argv[1:]),
    "machine": platform.platform(),
    "cpus": os.cpu_count(),
    "versions": {p: version(p) for p in ("jax", "optax", "mnist1d", "lamb_optax")},
    "optimizers": {o: lb.OPTIMIZERS[o] for o in study.optimizers},
    "study": s,
    "data": None
    if data is None
    else {
      "generator": "mnist1d.data.make_dataset (package default args but num_samples, seed)",
      "n_train": len(data.y),
      "n_test": len(data.y_test),
      "seed": study.data_seed,
      "sha256": data.sha256,
    },
  }


def report(path: pathlib.Path, out: pathlib.Path) -> str:
  data = json.loads(path.read_text())
  md = table(data)
  md += "\nRuns whose largest kernel norm grew 100x or more:\n\n" + blowup_table(data)
  (out / "large_batch.md").write_text(md)
  figure(data, out / "large_batch.png")
  norms_figure(data, out / "large_batch_norms.png", NORM_BATCHES)
  return md


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="benchmarks/results")
  ap.add_argument("--smoke", action="store_true", help="a tiny study in seconds (for tests)")
  ap.add_argument("--resume", action="store_true", help="keep the trials already in the JSON")
  ap.add_argument("--sanity", action="store_true", help="only the paper-accuracy check")
  ap.add_argument("--report", action="store_true", help="only the figure and table, from JSON")
  ap.add_argument("--cache", default=os.path.expanduser("~/.cache/lamb_optax"))
  args = ap.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "large_batch.json"
  log = print

  if args.report:
    print(report(path, out))
    return 0
  if args.sanity:
    result = {"command": "python benchmarks/large_batch.py --sanity", **sanity()}
    result["machine"] = platform.platform()
    result["versions"] = {p: version(p) for p in ("jax", "optax", "mnist1d", "lamb_optax")}
    log(
      f"sanity: final test accuracy {np.mean(result['final_accuracy']):.4f} "
      f"(seeds {result['final_accuracy']}), published 0.94; {result['cpu_s']} s cpu"
    )
    (out / "large_batch_sanity.json").write_text(json.dumps(result, separators=(",", ":")))
    return 0

  study = SMOKE if args.smoke else FULL
  timer = lb.Timer()
  data = lb.mnist1d(
    study.n_train,
    study.n_test,
    seed=study.data_seed,
    cache_dir=None if args.smoke else args.cache,
  )
  log(f"data: {len(data.y)} train, {len(data.y_test)} test, sha256 {data.sha256[:16]}…")
  res = Results(path, _meta(study, args, data), resume=args.resume)
  res.data["meta"]["data_cpu_s"] = round(timer.cpu(), 1)
  run_study(study, data, res, log)
  meta = res.data["meta"]
  meta["cpu_s_groups"] = round(sum(g["cpu_s"] for g in res.data["groups"]), 1)
  meta["wall_s_groups"] = round(sum(g["wall_s"] for g in res.data["groups"]), 1)
  meta["this_process"] = {"wall_s": round(timer.wall(), 1), "cpu_s": round(timer.cpu(), 1)}
  res.data["summary"] = summarize(res.data)
  res.write()
  log(report(path, out))
  log(f"{timer.wall():.0f} s wall, {timer.cpu():.0f} s cpu (this process)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
