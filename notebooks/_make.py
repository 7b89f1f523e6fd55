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
      "Large batches: LAMB vs AdamW",
      "You et al. built LAMB so that the batch can grow without losing accuracy. In miniature,"
      " on real data: both optimizers train the same CNN on digits for a fixed number of epochs"
      " at batch sizes from 32 to the whole training set, with the learning rate scaled by"
      " sqrt(batch / 32). Then the per-layer trust ratios LAMB applied during training.",
    ),
    new_code_cell(SMOKE),
    new_code_cell(
      """import numpy as np
import matplotlib.pyplot as plt
from lamb_optax import demo

batch_sizes = [32, 1437] if SMOKE else [32, 64, 128, 256, 512, 1437]
epochs = 2 if SMOKE else 20
rows = demo.large_batch_study(batch_sizes, epochs)   # one progress bar for all the runs"""
    ),
    new_code_cell(
      """for r in rows:
    print(f"{r['optimizer']:>5}  batch {r['batch_size']:>4}  steps {r['steps']:>4}"
          f"  lr {r['lr']:.4f}  test accuracy {r['accuracy']:.3f}")"""
    ),
    new_markdown_cell(
      "Both panels start at 0: accuracy on the left, test error (1 - accuracy) on the right,"
      " where the gaps between the two optimizers are easier to read."
    ),
    new_code_cell(
      """fig, (acc_ax, err_ax) = plt.subplots(1, 2, figsize=(10, 4))
for opt, label in (("lamb", "LAMB"), ("adamw", "AdamW")):
    bs, acc = zip(*sorted((r["batch_size"], r["accuracy"]) for r in rows if r["optimizer"] == opt))
    acc_ax.plot(bs, acc, "o-", label=label)
    err_ax.plot(bs, 100 * (1 - np.array(acc)), "o-", label=label)
for ax, ylabel in ((acc_ax, f"test accuracy, {epochs} epochs"), (err_ax, "test error (%)")):
    ax.set_xscale("log", base=2); ax.set_xlabel("batch size"); ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
acc_ax.set_ylim(top=1.0); acc_ax.legend(loc="lower left"); err_ax.legend(loc="upper left")
fig.suptitle("accuracy vs batch size"); plt.show()"""
    ),
    new_markdown_cell(
      "`lamb_optax.trust_ratios(state)` returns the ratio ||w|| / ||u|| each leaf got at the"
      " last step; the demo logs it every step. Kernels of the small-batch LAMB run, above the"
      " loss of each step's batch:"
    ),
    new_code_cell(
      """small = batch_sizes[0]
run = next(r for r in rows if r["optimizer"] == "lamb" and r["batch_size"] == small)
fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
for path in run["trust_ratios"][0]:
    if path.endswith("kernel"):
        top.semilogy([step[path] for step in run["trust_ratios"]], label=path)
top.set_ylabel("trust ratio ||w|| / ||u||"); top.legend(loc="upper left")
top.set_title(f"per-layer trust ratios, batch {small}")
# the 20 steps where conv1's ratio drops most, marked on the batch loss
drop = np.diff(np.log([step["conv1/kernel"] for step in run["trust_ratios"]]))
worst = np.argsort(drop)[:20] + 1
bottom.semilogy(run["losses"], color="gray", lw=0.8, label="batch loss")
bottom.semilogy(worst, np.array(run["losses"])[worst], "o", color="C3",
                label="the 20 largest drops of conv1's ratio")
bottom.set_xlabel("step"); bottom.set_ylabel("batch loss"); bottom.legend(loc="lower left")
plt.show()"""
    ),
    new_markdown_cell(
      "**Why the sawtooth.** The teeth are not epochs: the demo draws each batch independently"
      " (no epochs, no reshuffling), and the teeth come at irregular intervals. Most sharp"
      " drops come at a step whose batch loss jumps well above the steps before it (the red"
      " dots in the lower panel sit on the loss spikes). That step's large gradient raises"
      " the first moment m, which remembers about 10 steps (b1 = 0.9), far more than the"
      " square root of the second"
      " moment v, which averages over about 1000 steps (b2 = 0.999). So the Adam direction"
      " u = m̂ / (sqrt(v̂) + eps) grows and r = ||w|| / ||u|| drops. Over the next tens of steps"
      " m forgets the spike while v still holds it, so ||u|| shrinks and r climbs back.\n\n"
      "The overall rise has two causes. ||u|| falls: once the model fits the training set,"
      " most gradients are small and point in no consistent direction, so m averages out"
      " while sqrt(v) does not. And ||w|| grows (about 4x for `conv1/kernel` here): LAMB moves"
      " each layer by lr · ||w|| per step whatever the gradient's scale."
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
