"""Writes the notebooks (source of truth for their cells) and executes them.

python notebooks/_make.py            # write the cells only (outputs dropped)
python notebooks/_make.py --execute  # write, then run each in full and save its outputs

``--execute`` runs a full (not smoke) CPU run of each notebook with nbclient,
merges each cell's stream outputs and resolves the progress bars' carriage
returns, so each bar is saved as its final line. It takes a few minutes on 2
cores; run it with ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).parent
REPO = "lamb-optax/lamb_optax"  # the GitHub path the Colab badges point at

INSTALL = f"""# On Colab only: install lamb_optax with its examples extra.
import sys, subprocess
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "lamb_optax[examples] @ git+https://github.com/{REPO}"], check=True)"""

SMOKE = """import os
SMOKE = os.environ.get("LAMB_OPTAX_SMOKE") == "1"   # the test suite runs a fast version"""


def header(name: str, title: str, text: str) -> list:
  badge = (
    f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name})"
  )
  return [new_markdown_cell(f"# {title}\n\n{text}\n\n{badge}"), new_code_cell(INSTALL)]


def code_lines(*sources: str) -> int:
  """Lines of code in ``sources``, blank lines and comment lines not counted."""
  lines = [ln.strip() for src in sources for ln in src.splitlines()]
  return sum(1 for ln in lines if ln and not ln.startswith("#"))


QUICKSTART_SETUP = """import jax, jax.numpy as jnp, numpy as np, optax
import matplotlib.pyplot as plt
from tqdm import tqdm                                       # a text bar: Jupyter, Colab, files
import lamb_optax
from lamb_optax import demo

x_tr, y_tr, x_te, y_te = demo.load_digits(seed=0)        # (N, 8, 8, 1) images in [0, 1]
model = demo.make_model()                                   # conv1, conv2, norm, head
params = model.init(jax.random.key(0), jnp.asarray(x_tr[:1]))["params"]
tx = lamb_optax.lamb(learning_rate=0.01, weight_decay=1e-4, mask=lamb_optax.masks.flax_weights)
state = tx.init(params)

@jax.jit
def step(params, state, x, y):
    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss"""

QUICKSTART_TRAIN = """rng = np.random.default_rng(0)
losses = []
for _ in tqdm(range(30 if SMOKE else 400)):
    idx = rng.choice(len(x_tr), 128, replace=False)
    params, state, loss = step(params, state, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]))
    losses.append(float(loss))"""

QUICKSTART_EVAL = """\
acc = np.mean(np.asarray(model.apply({"params": params}, jnp.asarray(x_te)).argmax(-1)) == y_te)
print(f"test accuracy: {acc:.3f}")
plt.semilogy(losses); plt.xlabel("step"); plt.ylabel("training loss"); plt.title("LAMB on digits")
plt.show()"""


def quickstart() -> list:
  n = code_lines(QUICKSTART_SETUP, QUICKSTART_TRAIN, QUICKSTART_EVAL)
  return [
    *header(
      "01_quickstart.ipynb",
      "lamb_optax quickstart",
      "Train a small Flax CNN on scikit-learn's 8x8 handwritten digits (they ship with the"
      f" package, no download) with LAMB, in {n} lines of code, and plot the loss.",
    ),
    new_code_cell(SMOKE),
    new_code_cell(QUICKSTART_SETUP),
    new_code_cell(QUICKSTART_TRAIN),
    new_code_cell(QUICKSTART_EVAL),
  ]


def groups() -> list:
  return [
    *header(
      "02_parameter_groups.ipynb",
      "Parameter groups: MindSpore's nn.Lamb example, ported",
      "MindSpore's `nn.Lamb` docstring trains convolution parameters with weight decay 0.01 and"
      " gradient centralization, the rest with a polynomially decaying learning rate, and fixes"
      " the parameter order with `order_params`. Here is the same thing on a Flax model, the"
      " ready-made masks, and the learning rate each group gets.",
    ),
    new_code_cell(SMOKE),
    new_code_cell(
      """import jax, jax.numpy as jnp, numpy as np, optax
import matplotlib.pyplot as plt
import lamb_optax
from lamb_optax import demo
from lamb_optax.mindspore_compat import Lamb, PolynomialDecayLR

model = demo.make_model()
x_tr, y_tr, x_te, y_te = demo.load_digits(seed=0)
params = model.init(jax.random.key(0), jnp.asarray(x_tr[:1]))["params"]
paths = [p for p, _ in lamb_optax.masks.named_leaves(params)]
paths"""
    ),
    new_code_cell(
      """steps = 40 if SMOKE else 300
poly_decay_lr = PolynomialDecayLR(learning_rate=0.01, end_learning_rate=0.001,
                                  decay_steps=steps, power=0.5)
conv_params = [p for p in paths if "conv" in p]
no_conv_params = [p for p in paths if "conv" not in p]
group_params = [{"params": conv_params, "weight_decay": 0.01, "grad_centralization": True},
                {"params": no_conv_params, "lr": poly_decay_lr},
                {"order_params": paths}]
tx = Lamb(group_params, learning_rate=0.01, weight_decay=0.0)
# the same optimizer, optax-style:
tx_same = lamb_optax.lamb(0.01, weight_decay=0.0, groups=group_params)"""
    ),
    new_markdown_cell(
      "Masks look only at paths and shapes. MindSpore's default rule decays every leaf whose"
      " path has neither `beta` nor `gamma`; the Flax rule (`masks.flax_weights`, or"
      ' `mask="flax"`) decays kernels and embeddings and skips biases and norm scales.'
    ),
    new_code_cell(
      """print("mindspore:", lamb_optax.masks.mindspore(params)["norm"])
print("flax:     ", lamb_optax.masks.flax_weights(params)["conv1"])
print("regex:    ", lamb_optax.masks.from_regex("head")(params)["head"])"""
    ),
    new_code_cell(
      """state = tx.init(params)

@jax.jit
def step(params, state, x, y):
    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

rng = np.random.default_rng(0)
history = []   # each group's learning rate and weight decay, read from the state
for _ in range(steps):
    history.append(lamb_optax.group_hyperparams(state))   # what this step uses
    idx = rng.choice(len(x_tr), 128, replace=False)
    params, state, loss = step(params, state, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]))
acc = np.mean(np.asarray(model.apply({"params": params}, jnp.asarray(x_te)).argmax(-1)) == y_te)
print(f"test accuracy: {acc:.3f}")
lamb_optax.group_hyperparams(state)   # MindSpore's get_lr_parameter: the next step's values"""
    ),
    new_markdown_cell(
      "Each group's current learning rate and weight decay are part of the state (two"
      " scalars per group), so `lamb_optax.group_hyperparams(state)` reads them at any point,"
      " also inside a jitted step, without evaluating a schedule by hand."
    ),
    new_code_cell(
      """fig, (ax_lr, ax_wd) = plt.subplots(1, 2, figsize=(10, 3.5))
names = {0: "group 0: conv (fixed lr, wd 0.01, centralized)",
         1: "group 1: rest (PolynomialDecayLR, wd 0)"}
for g, name in names.items():
    ax_lr.plot([float(h[g]["learning_rate"]) for h in history], label=name)
    ax_wd.plot([float(h[g]["weight_decay"]) for h in history], label=name)
ax_lr.set(xlabel="step", ylabel="learning rate", title="per-group learning rates")
ax_wd.set(xlabel="step", ylabel="weight decay", title="per-group weight decay")
ax_lr.legend()
plt.tight_layout(); plt.show()"""
    ),
  ]


def large_batch() -> list:
  return [
    *header(
      "03_large_batch.ipynb",
      "Large batches: steps to a target accuracy, learning rate tuned per batch size",
      "LAMB was built so that the batch can grow without costing more steps than it saves."
      " The fair test (Shallue et al. 2019, Nado et al. 2021) tunes the learning rate of each"
      " optimizer at each batch size and counts the steps each needs to reach a target test"
      " accuracy. This is a small version of the repository's study (`benchmarks/large_batch.py`,"
      " results in the README): MNIST-1D generated locally by the `mnist1d` package (no"
      " download), the MNIST-1D paper's CNN, AdamW against LAMB with its defaults and LAMB with"
      " practitioners' settings, three batch sizes, four learning rates each, one seed. Then"
      " what happens inside LAMB when its learning rate is too high: the weight norms and the"
      " per-layer trust ratios over training.",
    ),
    new_code_cell(SMOKE),
    new_code_cell(
      """import numpy as np
import matplotlib.pyplot as plt
from lamb_optax import large_batch as lb

timer = lb.Timer()
data = lb.mnist1d(2_000, 500, seed=0) if SMOKE else lb.mnist1d(100_000, 5_000, seed=0)
print(f"{len(data.y)} training and {len(data.y_test)} test signals of length {data.x.shape[1]}")
fig, axes = plt.subplots(1, 5, figsize=(10, 1.8), sharey=True)
for ax, x, y in zip(axes, data.x, data.y):
    ax.plot(x); ax.set_title(f"digit {y}"); ax.set_xticks([])
plt.show()"""
    ),
    new_markdown_cell(
      "The optimizers (`lb.OPTIMIZERS`): `optax.adamw` with weight decay 0.01 on kernels;"
      " `lamb_optax.lamb` with its defaults (no weight decay, trust ratio on every leaf); and"
      " `lamb_optax.lamb` with weight decay 0.01 and biases left out of decay and of the trust"
      " ratio (`mask=` and `trust_ratio_mask=`). Every run warms the learning rate up from 0"
      " over 5% of the step cap, then holds it. A group of learning rates trains side by side"
      " (`jax.vmap`) and stops at 1.5x the steps of the first run to reach the higher target."
    ),
    new_code_cell(
      """batch_sizes = [128] if SMOKE else [32, 256, 2048]
targets = (0.3, 0.4) if SMOKE else (0.9, 0.95)
top = f"{targets[-1]:g}"
first_k = {"adamw": 3, "lamb": 1, "lamb_tuned": 1}   # lr = 1e-3 * 2**k at batch 256


def grid(opt, batch):   # 4 points, one higher per 4x batch (the square-root rule)
    k0 = first_k[opt] + int(np.floor(np.log(batch / 256) / np.log(4) + 0.5))
    return [1e-3 * 2.0**k for k in range(k0, k0 + 4)]


def protocol(batch):   # step cap (the same for every optimizer), evaluation interval
    every = max(1, (2**8 if SMOKE else 2**13) // batch)
    cap = 64 if SMOKE else max(600, 2**20 // batch)
    return cap - cap % every, every


results = {}
for batch in batch_sizes:
    cap, every = protocol(batch)
    for opt in lb.OPTIMIZERS:
        lrs = grid(opt, batch)
        trials = lb.run_grid(data, opt, batch, lrs, [0] * len(lrs), cap=cap, eval_every=every,
                             warmup_steps=cap // 20, targets=targets, stop_factor=1.5)
        results[opt, batch] = trials
        line = "  ".join(f"{t['lr']:g}: {t['steps_to'][top] or '-'}" for t in trials)
        print(f"batch {batch:5}, cap {cap:5}  {opt:10}  steps to {targets[-1]:.0%} by lr  {line}")
print(f"{timer.wall():.0f} s, {timer.cpu():.0f} s of CPU time")"""
    ),
    new_code_cell(
      """fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, target in zip(axes, targets):
    for opt in lb.OPTIMIZERS:
        xs, ys, missed = [], [], []
        for batch in batch_sizes:
            best = lb.best_trial(results[opt, batch], targets)
            steps = best["steps_to"][f"{target:g}"]
            if steps is None:
                missed.append((batch, protocol(batch)[0]))
            else:
                xs.append(batch); ys.append(steps)
        (line,) = ax.plot(xs, ys, "o-", label=opt)
        if missed:
            ax.plot(*zip(*missed), "x", color=line.get_color(), ms=9, mew=2)
    ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("batch size"); ax.set_title(f"steps to {target:.0%} (x: not reached by the cap)")
axes[0].set_ylabel("steps, best learning rate"); axes[0].legend(); plt.show()"""
    ),
    new_markdown_cell(
      "LAMB's step for a layer is `lr * ||w||` long whatever the gradient's size, so the"
      " weight norm moves geometrically: outwards by up to a factor `1 + lr` per step when"
      " the updates keep pointing away from zero (LAMB's defaults have no weight decay to"
      " hold it), and inwards by `1 - lr` per step once the gradients vanish and weight decay"
      " is all that is left of `u = adam + wd * w` (the trust ratio `||w|| / ||wd * w||`"
      " cancels `wd`: the decay acts at rate `lr`, not `lr * wd`). The largest kernel norm of"
      " every run at the largest batch (dashed: the loss went non-finite):"
    ),
    new_code_cell(
      """batch = batch_sizes[-1]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for ax, opt in zip(axes, lb.OPTIMIZERS):
    for t in results[opt, batch]:
        c = t["curve"]
        pts = [(0, max(t["kernel_norms"]["init"]))]
        pts += [(s, v) for s, v in zip(c["step"], c["max_kernel_norm"]) if v is not None]
        ax.plot(*zip(*pts), "--" if t["diverged_at"] else "-", label=f"lr {t['lr']:g}")
    ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_title(f"{opt}, batch {batch}")
    ax.legend(fontsize=7)
axes[0].set_ylabel("largest kernel norm"); plt.tight_layout(); plt.show()"""
    ),
    new_markdown_cell(
      "`lamb_optax.trust_ratios(state)` returns the ratio `||w|| / ||u||` each leaf got at the"
      " last step; `run_grid` records it along the way. Per-layer ratios of the best LAMB run"
      " with practitioners' settings at the largest batch (biases are left out: their ratio"
      " is 1):"
    ),
    new_code_cell(
      """best = lb.best_trial(results["lamb_tuned", batch], targets)
c = best["curve"]
for path, ratios in c["trust_ratios"].items():
    if path.endswith("kernel"):
        plt.semilogy(c["trust_ratio_step"], ratios, label=path)
plt.xlabel("step"); plt.ylabel("trust ratio ||w|| / ||u||"); plt.legend()
plt.title(f"lamb_tuned, batch {batch}, lr {best['lr']:g}"); plt.show()"""
    ),
  ]


NOTEBOOKS = {
  "01_quickstart.ipynb": quickstart,
  "02_parameter_groups.ipynb": groups,
  "03_large_batch.ipynb": large_batch,
}


def execute(nb: nbformat.NotebookNode) -> None:
  """Runs ``nb`` in full in a fresh kernel and keeps its outputs, bars as their last line."""
  from nbclient import NotebookClient

  os.environ.pop("LAMB_OPTAX_SMOKE", None)
  NotebookClient(
    nb,
    timeout=1800,
    kernel_name="python3",
    resources={"metadata": {"path": str(HERE)}},
    coalesce_streams=True,  # one stream per cell; "\r" progress updates collapse to the last
    record_timing=False,  # no timestamps in the committed files
  ).execute()


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description="Write (and with --execute, run) the notebooks.")
  ap.add_argument("--execute", action="store_true", help="run each notebook and keep outputs")
  ap.add_argument("names", nargs="*", help="notebooks to write (default: all)")
  args = ap.parse_args(argv)
  for name, cells in NOTEBOOKS.items():
    if args.names and name not in args.names:
      continue
    nb = new_notebook(cells=cells())
    nb.metadata["kernelspec"] = {
      "name": "python3",
      "display_name": "Python 3",
      "language": "python",
    }
    if args.execute:
      execute(nb)
    nbformat.write(nb, HERE / name)
    print(f"wrote {name}")


if __name__ == "__main__":
  main()
