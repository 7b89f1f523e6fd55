"""The large-batch study: its model, data, read-out and smoke run, checked independently."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamb_optax
from lamb_optax import large_batch as lb

ROOT = pathlib.Path(__file__).parent.parent


def _script():
  """benchmarks/large_batch.py as a module (benchmarks/ is not a package)."""
  import sys

  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location(
      "large_batch_script", ROOT / "benchmarks/large_batch.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
  finally:
    sys.path.remove(str(ROOT / "benchmarks"))
  return mod


class _FlaxConvBase(nn.Module):
  """The paper's ConvBase written with Flax's own layers (an independent implementation)."""

  @nn.compact
  def __call__(self, x):
    h = x[:, :, None]
    for name in ("conv1", "conv2", "conv3"):
      width = lb.CNN_SHAPES[name][0]
      h = nn.relu(nn.Conv(25, (width,), strides=2, padding=((1, 1),), name=name)(h))
    return nn.Dense(10, name="head")(h.reshape(h.shape[0], -1))


def test_cnn_matches_flax_layers_and_paper_size():
  params = lb.cnn_init(0)
  x = jax.random.normal(jax.random.key(1), (7, 40))
  flax_params = _FlaxConvBase().init(jax.random.key(2), x)["params"]
  assert jax.tree.map(jnp.shape, flax_params) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(
    lb.cnn_apply(params, x), _FlaxConvBase().apply({"params": params}, x), rtol=1e-5, atol=1e-5
  )
  # the MNIST-1D repository's ConvBase prints "5210 parameters"
  assert sum(p.size for p in jax.tree.leaves(params)) == 5210


def test_cnn_init_is_pytorch_default_uniform():
  from scipy import stats

  params = lb.cnn_init(0)
  scaled = []
  for name, shape in lb.CNN_SHAPES.items():
    bound = 1 / np.sqrt(np.prod(shape[:-1]))  # torch: kaiming_uniform(a=sqrt(5)) = 1/sqrt(fan_in)
    scaled += [np.ravel(leaf) / bound for leaf in params[name].values()]
  scaled = np.concatenate(scaled)
  assert np.abs(scaled).max() <= 1
  assert stats.kstest(scaled, stats.uniform(-1, 2).cdf).pvalue > 0.01


def test_mnist1d_is_the_package_default_split_and_keeps_global_rng():
  from mnist1d.data import get_dataset_args, make_dataset

  np.random.seed(123)
  before = np.random.random()
  np.random.seed(123)
  data = lb.mnist1d()
  assert np.random.random() == before  # the package reseeds numpy; we restore it
  ref = make_dataset(get_dataset_args())
  np.testing.assert_array_equal(data.x, ref["x"].astype(np.float32))
  np.testing.assert_array_equal(data.x_test, ref["x_test"].astype(np.float32))
  np.testing.assert_array_equal(data.y, ref["y"])
  np.testing.assert_array_equal(data.y_test, ref["y_test"])
  assert data.x.shape == (4000, 40) and data.x_test.shape == (1000, 40)


def test_mnist1d_cache_round_trip(tmp_path):
  a = lb.mnist1d(90, 10, seed=3, cache_dir=tmp_path)
  b = lb.mnist1d(90, 10, seed=3, cache_dir=tmp_path)
  assert list(tmp_path.iterdir()) and a.sha256 == b.sha256
  np.testing.assert_array_equal(a.x, b.x)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.93, 0.99])
def test_steps_to_target_against_numpy(target):
  rng = np.random.default_rng(0)
  steps = np.arange(1, 41) * 25
  accs = np.clip(np.linspace(0.1, 0.95, 40) + rng.normal(0, 0.03, 40), 0, 1)
  hit = accs >= target
  expected = int(steps[np.argmax(hit)]) if hit.any() else None
  assert lb.steps_to_target(steps, accs, target) == expected


def test_median_counts_not_reached_as_largest():
  script = _script()
  assert script._median([30, 10, 20]) == np.median([30, 10, 20])
  assert script._median([40, 10, 20, 30]) == np.median([40, 10, 20, 30])
  assert script._median([10, None, 30]) == 30
  assert script._median([10, None, None]) is None


def test_best_trial_rule():
  def trial(lr, s95, s97, acc, div=None):
    return {
      "lr": lr,
      "steps_to": {"0.95": s95, "0.97": s97},
      "best_accuracy": acc,
      "diverged_at": div,
    }

  targets = (0.95, 0.97)
  a, b = trial(1, 100, 300, 0.98), trial(2, 50, 200, 0.975, div=400)
  c, d = trial(3, 80, 300, 0.97), trial(4, 60, None, 0.969)
  assert lb.best_trial([a, b, c, d], targets) is c  # b diverged; a, c tie on 97%, c on 95%
  assert lb.best_trial([a, d], targets) is a
  e = trial(5, None, None, 0.9)
  assert lb.best_trial([d, e], targets) is d
  assert lb.best_trial([trial(6, None, None, 0.8), e], targets) is e


def test_practitioner_lamb_leaves_biases_alone():
  params = lb.cnn_init(0)
  grads = jax.tree.map(jnp.ones_like, params)
  tx = lb.make_optimizer("lamb_tuned", 0.1, warmup_steps=0)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  ratios = lamb_optax.trust_ratios(state)
  for name in lb.CNN_SHAPES:
    assert float(ratios[name]["bias"]) == 1.0
    expected = np.linalg.norm(params[name]["kernel"]) / np.linalg.norm(
      1.0 / (1.0 + 1e-6) + lb.WEIGHT_DECAY * np.asarray(params[name]["kernel"])
    )
    np.testing.assert_allclose(float(ratios[name]["kernel"]), expected, rtol=1e-5)
    # bias: Adam's first step is g / (|g| + eps) = 1/(1+eps), times the lr, no decay
    np.testing.assert_allclose(updates[name]["bias"], -0.1 / (1 + 1e-6), rtol=1e-6)


def test_warmup_schedule_and_unknown_name():
  params = {"w": jnp.ones((2, 2))}
  tx = lb.make_optimizer("adamw", 1.0, warmup_steps=4)
  state = tx.init(params)
  sizes = []
  for _ in range(6):
    updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    sizes.append(float(-updates["w"][0, 0]))
  # AdamW: lr_t * (1/(1+eps) + 0.01 * w), lr_t = 0, .25, .5, .75, 1, 1 (optax bias
  # correction in float32 is good to ~1e-5)
  np.testing.assert_allclose(sizes, np.array([0, 0.25, 0.5, 0.75, 1, 1]) * (1 + 0.01), rtol=5e-5)
  with pytest.raises(ValueError, match="unknown optimizer"):
    lb.make_optimizer("sgd", 0.1, 0)


@pytest.fixture(scope="module")
def tiny_data():
  return lb.mnist1d(600, 200, seed=1)


def test_vmapped_runs_equal_runs_alone(tiny_data):
  kw = dict(cap=12, eval_every=4, warmup_steps=2, targets=(0.99,))
  both = lb.run_grid(tiny_data, "lamb", 16, [0.01, 0.05], [0, 1], **kw)
  alone = [
    lb.run_grid(tiny_data, "lamb", 16, [lr], [s], **kw)[0] for lr, s in ((0.01, 0), (0.05, 1))
  ]
  for b, a in zip(both, alone, strict=True):
    np.testing.assert_allclose(b["curve"]["train_loss"], a["curve"]["train_loss"], rtol=1e-3)
    np.testing.assert_allclose(b["kernel_norms"]["final"], a["kernel_norms"]["final"], rtol=1e-3)
  assert both[0]["kernel_norms"]["final"] != both[1]["kernel_norms"]["final"]


def test_run_grid_trains_like_a_plain_optax_loop(tiny_data):
  """One run of run_grid against a hand-written loop: same batches, same optimizer."""
  lr, seed, batch, steps = 0.02, 5, 32, 6
  (trial,) = lb.run_grid(
    tiny_data,
    "adamw",
    batch,
    [lr],
    [seed],
    cap=steps,
    eval_every=steps,
    warmup_steps=2,
    targets=(1.0,),
  )
  params = lb.cnn_init(seed)
  tx = optax.adamw(
    optax.warmup_constant_schedule(0.0, lr, 2),
    weight_decay=0.01,
    mask=lamb_optax.masks.flax_weights,
  )
  state = tx.init(params)
  losses = []
  for t in range(steps):
    idx = np.random.default_rng([seed, t]).integers(0, 600, batch)
    x, y = tiny_data.x[idx], tiny_data.y[idx]

    def loss_fn(p, x=x, y=y):
      logits = lb.cnn_apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    losses.append(float(loss))
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(trial["curve"]["train_loss"][0], np.mean(losses), rtol=1e-3)
  acc = np.mean(
    np.argmax(np.asarray(lb.cnn_apply(params, tiny_data.x_test)), -1) == tiny_data.y_test
  )
  assert abs(trial["final_accuracy"] - acc) <= 1 / 200  # one test example of 200, at most
  norms = [np.linalg.norm(params[n]["kernel"]) for n in lb.CNN_SHAPES]
  np.testing.assert_allclose(trial["kernel_norms"]["final"], norms, rtol=1e-3)


def test_divergence_is_reported(tiny_data):
  (trial,) = lb.run_grid(
    tiny_data, "adamw", 16, [1e30], [0], cap=8, eval_every=4, warmup_steps=0, targets=(0.9,)
  )
  assert trial["diverged_at"] == 4
  assert trial["steps_to"] == {"0.9": None}


def test_smoke_study(tmp_path):
  script = _script()
  assert script.main(["--smoke", "--out", str(tmp_path)]) == 0
  data = json.loads((tmp_path / "large_batch.json").read_text())
  study = data["meta"]["study"]
  targets = study["targets"]
  trials = data["trials"]
  for t in trials:
    for key in (
      "optimizer",
      "batch_size",
      "lr",
      "seed",
      "steps_to",
      "final_accuracy",
      "diverged_at",
    ):
      assert key in t
    # steps to each target, recomputed from the stored curve with NumPy
    steps, accs = np.array(t["curve"]["step"]), np.array(t["curve"]["accuracy"])
    for tg in targets:
      hit = accs >= tg
      want = int(steps[np.argmax(hit)]) if hit.any() else None
      if t["diverged_at"] is None:
        assert t["steps_to"][f"{tg:g}"] == want
    assert steps[-1] == t["stopped_at"] <= study["caps"][str(t["batch_size"])]
    assert np.all(np.diff(steps) > 0)
  for opt in study["optimizers"]:
    for batch in study["batch_sizes"]:
      mine = [t for t in trials if t["optimizer"] == opt and t["batch_size"] == batch]
      tuned = [t for t in mine if t["phase"] in ("tune", "extend")]
      assert len(tuned) >= study["n_lrs"]
      assert sorted(t["seed"] for t in mine if t["phase"] == "seeds") == study["seeds"]
      # every seed rerun uses the tuning winner
      best = lb.best_trial(tuned, targets)
      assert {t["lr"] for t in mine if t["phase"] in ("seeds", "long")} == {best["lr"]}
      (long,) = [t for t in mine if t["phase"] == "long"]  # the smoke caps are small
      assert long["stopped_at"] == study["caps"][str(batch)] or long["diverged_at"]
  assert len(data["summary"]) == len(study["optimizers"]) * len(study["batch_sizes"])
  assert (tmp_path / "large_batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (tmp_path / "large_batch_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  lines = (tmp_path / "large_batch.md").read_text().split("\n\n")[0].splitlines()
  assert lines[0].startswith("| batch (cap) |") and len(lines) == 2 + len(data["summary"])
  # resuming a finished study trains nothing more
  n_groups = len(data["groups"])
  assert script.main(["--smoke", "--resume", "--out", str(tmp_path)]) == 0
  assert len(json.loads((tmp_path / "large_batch.json").read_text())["groups"]) == n_groups


def test_protocol_numbers():
  full = _script().FULL
  for batch, cap, every, warmup in [
    (64, 32768, 256, 1638),
    (256, 8192, 64, 410),
    (1024, 2048, 16, 102),
    (4096, 1000, 4, 50),
    (16384, 1000, 1, 50),
  ]:  # cap = max(1000, 2**21 / batch), eval every max(1, 2**14 / batch), warmup 5% of cap
    assert (full.cap(batch), full.eval_every(batch), full.warmup(batch)) == (cap, every, warmup)
  script = _script()  # the grid starts: 8e-3 (AdamW), 2e-3 (LAMB) at 1024, 2x per 4x batch
  assert script._lr(script._grid_start("adamw", 1024)) == 8e-3
  assert script._lr(script._grid_start("lamb", 16384)) == 8e-3
  assert script._lr(script._grid_start("lamb_tuned", 64)) == 5e-4


def _fake_trial(
  opt, batch, phase, lr, seed, steps, *, acc=0.98, final=0.98, growth=5.0, norms=None
):
  norms = norms or [3.0, 4.0]
  return {
    "optimizer": opt,
    "batch_size": batch,
    "phase": phase,
    "lr": lr,
    "seed": seed,
    "steps_to": {"0.95": None if steps is None else steps // 2, "0.97": steps},
    "best_accuracy": acc,
    "final_accuracy": final,
    "stopped_at": 100 if steps is None else steps,
    "diverged_at": None,
    "norm_growth": growth,
    "kernel_norms": {"init": [3.0], "max": [3.0 * growth], "final": [3.0]},
    "curve": {"step": [50, 100], "accuracy": [acc, final], "max_kernel_norm": norms},
  }


def test_report_on_hand_made_trials(tmp_path):
  """The table's medians, ratios and blow-up rates on trials whose answers are known."""
  script = _script()
  trials = []
  for batch, base in ((64, 400), (256, 100)):
    for opt, factor in (("adamw", 1), ("lamb", 3), ("lamb_tuned", 2)):
      for k, lr in enumerate((0.01, 0.02, 0.04)):
        steps = base * factor * (2 if k != 1 else 1)
        trials.append(_fake_trial(opt, batch, "tune", lr, 0, steps))
      for seed, extra in ((1, 0), (2, 10), (3, 30)):
        trials.append(_fake_trial(opt, batch, "seeds", 0.02, seed, base * factor + extra))
  # one blow-up: the norm goes from 3 to 3 * e**5 in 50 steps -> log-rate 0.1 per step
  trials.append(
    _fake_trial(
      "lamb",
      64,
      "tune",
      0.08,
      0,
      None,
      acc=0.9,
      final=0.1,
      growth=150.0,
      norms=[3.0, 3.0 * np.exp(5.0)],
    )
  )
  data = {
    "meta": {
      "study": {
        "targets": [0.95, 0.97],
        "batch_sizes": [64, 256],
        "optimizers": ["adamw", "lamb", "lamb_tuned"],
        "seeds": [1, 2, 3],
        "caps": {"64": 1000, "256": 500},
      }
    },
    "trials": trials,
  }
  rows = {(r["optimizer"], r["batch_size"]): r for r in script.summarize(data)}
  assert rows["lamb", 64]["best_lr"] == 0.02
  assert rows["lamb", 64]["steps_to"]["0.97"] == [1200, 1210, 1230]
  assert rows["lamb", 64]["at_2x"] == "2400"  # the 0.04 run
  assert rows["lamb", 64]["blown_up_lrs"] == [0.08] and rows["lamb", 64]["collapsed_lrs"] == [0.08]
  md = script.table(data)
  row = next(line for line in md.splitlines() if line.startswith("| 256 (500) | LAMB (defaults)"))
  assert "310 [300, 310, 330]" in row and "2.82x" in row  # median 310 vs AdamW 110
  (blow,) = script.blowups(data)
  np.testing.assert_allclose(blow["max_rate"], 0.1, rtol=1e-3)
  assert blow["lr_over_best"] == 4
  script.figure(data, tmp_path / "f.png")
  script.norms_figure(data, tmp_path / "n.png", (64,))
