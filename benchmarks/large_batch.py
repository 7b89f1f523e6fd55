"""The paper's claim in miniature: LAMB vs AdamW as the batch grows, on real data.

Trains the demo CNN on scikit-learn's digits for a fixed number of epochs at
each batch size, with the learning rate scaled by sqrt(batch / 32), and writes
the test accuracies (JSON) and a plot of test error vs batch size (PNG).

    python benchmarks/large_batch.py --epochs 20 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import _plot
import jax

from lamb_optax import demo


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--epochs", type=int, default=20)
  ap.add_argument("--batch-sizes", default="32,64,128,256,512,1437")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="benchmarks/results")
  args = ap.parse_args()
  sizes = [int(b) for b in args.batch_sizes.split(",")]
  rows = demo.large_batch_study(sizes, args.epochs, seed=args.seed, progress=False)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = {
    "command": f"python benchmarks/large_batch.py --epochs {args.epochs}"
    f" --batch-sizes {args.batch_sizes} --seed {args.seed}",
    "machine": platform.platform(),
    "jax": jax.__version__,
  }
  slim = [{k: r[k] for k in ("optimizer", "batch_size", "steps", "lr", "accuracy")} for r in rows]
  (out / "large_batch.json").write_text(json.dumps({"meta": meta, "rows": slim}, indent=1))
  print("| batch | steps | LAMB lr | LAMB acc | AdamW lr | AdamW acc |")
  print("|---|---|---|---|---|---|")
  by = {(r["optimizer"], r["batch_size"]): r for r in slim}
  for bs in sorted({r["batch_size"] for r in slim}):
    a, b = by[("lamb", bs)], by[("adamw", bs)]
    print(
      f"| {bs} | {a['steps']} | {a['lr']:.4f} | {a['accuracy']:.3f} | {b['lr']:.4f} |"
      f" {b['accuracy']:.3f} |"
    )

  # Test error from 0, not accuracy from its minimum: the gaps are drawn to scale.
  fig, ax = _plot.axes()
  for opt, label in (("lamb", "LAMB"), ("adamw", "AdamW")):
    pts = sorted((r["batch_size"], r["accuracy"]) for r in slim if r["optimizer"] == opt)
    ax.plot([p[0] for p in pts], [100 * (1 - p[1]) for p in pts], "o-", label=label)
  ax.set_xscale("log", base=2)
  ax.set_ylim(bottom=0)
  _plot.save(
    fig,
    ax,
    out / "large_batch.png",
    xlabel="batch size (lr scaled by sqrt(batch/32))",
    ylabel=f"test error (%) after {args.epochs} epochs",
    title="digits: LAMB vs AdamW as the batch grows",
  )


if __name__ == "__main__":
  main()
