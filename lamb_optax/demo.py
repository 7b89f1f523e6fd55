"""``python -m lamb_optax.demo``: train a small Flax CNN with LAMB on real data.

The data are scikit-learn's 8x8 handwritten digits (1797 images that ship with
the package, no download), split into 1437 training and 360 test images. The
optimizer uses MindSpore-style parameter groups: convolution kernels are
centralized and decayed, the rest follows a polynomial learning-rate decay.
Needs the ``examples`` extra (flax, scikit-learn, tqdm, matplotlib for
``--plot``). The last line printed is the test accuracy.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lamb_optax


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value <= 0:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
  if not value > 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
  return value


_N_IMAGES = 1797  # scikit-learn's digits
N_TRAIN = int(0.8 * _N_IMAGES)  # 1437: load_digits' training split
_MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
  if not 0 <= value <= _MAX_SEED:
    raise argparse.ArgumentTypeError(f"expected a seed from 0 to {_MAX_SEED}, got {text!r}")
  return value


class _Parser(argparse.ArgumentParser):
  """Reports a bad flag in one line (no usage block, no traceback)."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {message}\n")


def _plain(text: str) -> str:
  """The module docstring without reStructuredText markup, for ``--help``."""
  return re.sub(r"``([^`]*)``", r"\1", text).strip()


def build_parser() -> argparse.ArgumentParser:
  """The demo's command-line flags."""
  p = _Parser(
    prog="python -m lamb_optax.demo",
    description=_plain(__doc__),
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="A bad flag is a one-line error with exit status 2, before any training.",
  )
  p.add_argument(
    "--steps", type=_positive_int, default=400, help="training steps (default: %(default)s)"
  )
  p.add_argument(
    "--batch-size",
    type=_positive_int,
    default=128,
    help=f"images per step, at most {N_TRAIN} (the training set; larger is an error)"
    " (default: %(default)s)",
  )
  p.add_argument(
    "--lr",
    type=_positive_float,
    default=None,
    help="peak learning rate (default: 0.01 for lamb, 0.003 for adamw)",
  )
  p.add_argument(
    "--optimizer",
    choices=("lamb", "adamw"),
    default="lamb",
    help="lamb (grouped lamb_optax.lamb) or adamw (optax.adamw, for comparison)"
    " (default: %(default)s)",
  )
  p.add_argument(
    "--seed",
    type=_seed,
    default=0,
    help=f"seed of the data split, the initial weights and the batches, 0 to {_MAX_SEED}"
    " (default: %(default)s)",
  )
  p.add_argument(
    "--plot",
    metavar="PATH",
    default=None,
    help="also write the training-loss curve to this PNG file, checked to be writable before"
    " training (default: no plot)",
  )
  return p


def _check_writable(path: str) -> str | None:
  """None if ``path`` can be written, else why not; leaves no file behind."""
  existed = os.path.exists(path)
  try:
    with open(path, "ab"):
      pass
  except OSError as e:
    return e.strerror or str(e)
  if not existed:
    os.remove(path)
  return None


def load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """scikit-learn's digits as (N, 8, 8, 1) float32 in [0, 1], split 80/20."""
  from sklearn.datasets import load_digits as sk_load_digits

  data = sk_load_digits()
  x = (data.images / 16.0).astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  n_train = int(0.8 * len(x))
  return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def make_model() -> Any:
  """A small channel-last CNN (Flax Linen)."""
  import flax.linen as nn

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
      x = nn.relu(nn.Conv(32, (3, 3), strides=2, name="conv2")(x))
      x = nn.LayerNorm(name="norm")(x.reshape(x.shape[0], -1))
      return nn.Dense(10, name="head")(x)

  return CNN()


def make_optimizer(name: str, lr: float, steps: int) -> optax.GradientTransformation:
  """LAMB with MindSpore-style groups, or AdamW for comparison."""
  decay = lamb_optax.mindspore_compat.PolynomialDecayLR(lr, lr * 0.01, steps, 1.0)
  if name == "adamw":
    return optax.adamw(decay, weight_decay=1e-4, mask=lamb_optax.masks.flax_weights)
  return lamb_optax.lamb(
    lr,
    groups=[
      {"params": r"^conv", "weight_decay": 1e-4, "grad_centralization": True},
      {"params": r"^(norm|head)", "lr": decay},
    ],
  )


def make_train_step(model: Any, tx: optax.GradientTransformation, dtype: Any = None) -> Any:
  """The jitted step ``(params, opt_state, x, y) -> (params, opt_state, loss)``.

  Cross-entropy loss in float32; with ``dtype``, the inputs are cast to it first
  (for low-precision parameters).
  """

  def loss_fn(p, x, y):
    if dtype is not None:
      x = x.astype(dtype)
    logits = model.apply({"params": p}, x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def train(args: argparse.Namespace, *, progress: bool = True, bar: Any = None) -> dict[str, Any]:
  """Trains one model; returns its losses, test accuracy and trust ratios.

  Each step draws its batch independently: ``batch_size`` distinct training
  images at random, with no epochs and no reshuffling.

  Args:
    args: ``steps``, ``batch_size``, ``lr`` (None: 0.01 for lamb, 0.003 for
      adamw), ``optimizer`` and ``seed``, as :func:`build_parser` parses them.
    progress: show a text progress bar for this run.
    bar: an open ``tqdm`` bar to advance by one per step instead of a bar of
      this run's own (one bar for many runs).

  Returns:
    A dict with ``losses`` (one per step), ``accuracy`` (on the test split),
    ``lr`` and, for lamb, ``trust_ratios`` (one dict path -> ratio per step).

  Raises:
    ValueError: if ``batch_size`` is larger than the training set.
  """
  from tqdm import tqdm  # a text bar: it renders in terminals, Jupyter and Colab alike

  x_tr, y_tr, x_te, y_te = load_digits(args.seed)
  if args.batch_size > len(x_tr):
    raise ValueError(f"batch size {args.batch_size} is more than the {len(x_tr)} training images.")
  model = make_model()
  lr = args.lr if args.lr is not None else (0.01 if args.optimizer == "lamb" else 3e-3)
  tx = make_optimizer(args.optimizer, lr, args.steps)
  params = model.init(jax.random.key(args.seed), jnp.asarray(x_tr[:1]))["params"]
  opt_state = tx.init(params)
  step = make_train_step(model, tx)

  rng = np.random.default_rng(args.seed)
  losses, ratios = [], []
  own_bar = bar is None
  if own_bar:
    bar = tqdm(total=args.steps, desc=f"{args.optimizer} lr={lr:g}", disable=not progress)
  else:
    bar.set_description(f"{args.optimizer} batch {args.batch_size}", refresh=False)
  try:
    for _ in range(args.steps):
      idx = rng.choice(len(x_tr), size=args.batch_size, replace=False)
      params, opt_state, loss = step(
        params, opt_state, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx])
      )
      losses.append(float(loss))
      if args.optimizer == "lamb":
        named = lamb_optax.masks.named_leaves(lamb_optax.trust_ratios(opt_state))
        ratios.append({path: float(r) for path, r in named})
      bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
      bar.update()
  finally:
    if own_bar:
      bar.close()
  logits = jax.jit(model.apply)({"params": params}, jnp.asarray(x_te))
  accuracy = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y_te))
  return {"losses": losses, "accuracy": accuracy, "lr": lr, "trust_ratios": ratios}


def _plot(path: str, losses: Sequence[float], label: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(losses, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_yscale("log")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; returns the process exit code (bad flags exit with status 2)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  needed = ["flax", "sklearn", "tqdm"] + (["matplotlib"] if args.plot else [])
  try:
    for name in needed:
      __import__(name)
  except ImportError as e:
    parser.error(f'the demo needs the examples extra: pip install "lamb_optax[examples]" ({e})')
  if args.batch_size > N_TRAIN:
    parser.error(
      f"argument --batch-size: {args.batch_size} is more than the {N_TRAIN} training images;"
      f" use at most {N_TRAIN}"
    )
  if args.plot and (why := _check_writable(args.plot)):
    parser.error(f"argument --plot: cannot write {args.plot!r}: {why}")
  result = train(args)
  print(f"test accuracy: {result['accuracy']:.3f}")  # first, so a failing plot cannot hide it
  if args.plot:
    try:
      _plot(args.plot, result["losses"], f"{args.optimizer} (lr {result['lr']:g})")
    except (OSError, ImportError) as e:
      print(f"{parser.prog}: error: cannot write the plot to {args.plot!r}: {e}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
