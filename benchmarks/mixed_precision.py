"""bf16 training with LAMB tracks the float32 run (with and without master weights).

Trains the demo's CNN on scikit-learn digits three times from the same
initialisation and batches: float32 params, bfloat16 params, and bfloat16
params with ``master_weights=True``. Writes a JSON of the loss curves and test
accuracies and a PNG of the curves.

    python benchmarks/mixed_precision.py --steps 400 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import _plot
import jax
import jax.numpy as jnp
import numpy as np

import lamb_optax
from lamb_optax import demo


def run(dtype, master_weights: bool, steps: int, seed: int) -> dict:
  x_tr, y_tr, x_te, y_te = demo.load_digits(seed)
  model = demo.make_model()
  params = model.init(jax.random.key(seed), jnp.asarray(x_tr[:1]))["params"]
  params = jax.tree.map(lambda p: p.astype(dtype), params)
  tx = lamb_optax.lamb(1e-2, weight_decay=1e-4, mask="flax", master_weights=master_weights)
  state = tx.init(params)
  step = demo.make_train_step(model, tx, dtype)

  rng = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    idx = rng.choice(len(x_tr), size=128, replace=False)
    params, state, loss = step(params, state, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]))
    losses.append(float(loss))
  logits = model.apply({"params": params}, jnp.asarray(x_te).astype(dtype))
  acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y_te))
  return {"losses": losses, "test_accuracy": acc}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="benchmarks/results")
  args = ap.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  runs = {
    "float32": run(jnp.float32, False, args.steps, args.seed),
    "bfloat16": run(jnp.bfloat16, False, args.steps, args.seed),
    "bfloat16 + master_weights": run(jnp.bfloat16, True, args.steps, args.seed),
  }
  meta = {
    "command": f"python benchmarks/mixed_precision.py --steps {args.steps}",
    "machine": platform.platform(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
  }
  (out / "mixed_precision.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
  for name, r in runs.items():
    tail = np.mean(r["losses"][-50:])
    print(
      f"{name:>26}: final loss (mean of last 50) {tail:.4f}, test accuracy {r['test_accuracy']:.3f}"
    )

  fig, ax = _plot.axes(7)
  for name, r in runs.items():
    smooth = np.convolve(r["losses"], np.ones(10) / 10, mode="valid")
    ax.plot(smooth, label=f"{name} (test acc {r['test_accuracy']:.3f})")
  ax.set_yscale("log")
  _plot.save(
    fig,
    ax,
    out / "mixed_precision.png",
    xlabel="step",
    ylabel="training loss (10-step mean)",
    title="LAMB on digits: bfloat16 vs float32 parameters",
  )


if __name__ == "__main__":
  main()
