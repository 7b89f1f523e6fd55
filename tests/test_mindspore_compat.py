"""MindSpore schedules and dynamic-lr lists against values read from MindSpore 2.10."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamb_optax
from lamb_optax import mindspore_compat as ms

GOLDEN = json.loads(
  (pathlib.Path(__file__).parent / "data" / "mindspore_lr_schedules.json").read_text()
)
CLASSES = [e for e in GOLDEN if "cls" in e]
FUNCTIONS = [e for e in GOLDEN if "fn" in e]


def _id(e):
  return (e.get("cls") or e["fn"]) + "-" + "-".join(f"{k}={v}" for k, v in e["kwargs"].items())


def test_golden_file_covers_every_class_and_function():
  assert {e["cls"] for e in CLASSES} == {
    "PolynomialDecayLR", "ExponentialDecayLR", "NaturalExpDecayLR", "InverseDecayLR",
    "CosineDecayLR", "WarmUpLR",
  }  # fmt: skip
  assert {e["fn"] for e in FUNCTIONS} == {
    "piecewise_constant_lr", "exponential_decay_lr", "natural_exp_decay_lr", "inverse_decay_lr",
    "cosine_decay_lr", "polynomial_decay_lr", "warmup_lr",
  }  # fmt: skip


@pytest.mark.parametrize("entry", CLASSES, ids=_id)
def test_schedule_class_matches_mindspore(entry):
  sched = getattr(ms, entry["cls"])(**entry["kwargs"])
  eager = [float(sched(jnp.asarray(s, jnp.int32))) for s in range(entry["steps"])]
  np.testing.assert_allclose(eager, entry["values"], rtol=1e-5, atol=1e-9)
  traced = jax.jit(jax.vmap(sched))(jnp.arange(entry["steps"], dtype=jnp.int32))
  np.testing.assert_allclose(traced, entry["values"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("entry", FUNCTIONS, ids=_id)
def test_list_function_matches_mindspore(entry):
  values = getattr(ms, entry["fn"])(**entry["kwargs"])
  assert isinstance(values, list) and all(isinstance(v, float) for v in values)
  np.testing.assert_allclose(values, entry["values"], rtol=1e-5)


def test_schedule_drives_lamb_learning_rate():
  sched = ms.WarmUpLR(0.1, 4)
  tx = lamb_optax.scale_by_learning_rate(sched)
  s = tx.init(jnp.ones(1))
  lrs = []
  for _ in range(6):
    u, s = jax.jit(tx.update)(jnp.ones(1), s)
    lrs.append(-float(u[0]))
  np.testing.assert_allclose(lrs, [0.0, 0.025, 0.05, 0.075, 0.1, 0.1], rtol=1e-6)


@pytest.mark.parametrize(
  "factory,kwargs,exc,name",
  [
    (
      ms.ExponentialDecayLR,
      dict(learning_rate=1, decay_rate=0.9, decay_steps=4),
      TypeError,
      "learning_rate",
    ),
    (
      ms.ExponentialDecayLR,
      dict(learning_rate=0.1, decay_rate=0.9, decay_steps=0),
      ValueError,
      "decay_steps",
    ),
    (
      ms.ExponentialDecayLR,
      dict(learning_rate=0.1, decay_rate=0.9, decay_steps=4.0),
      TypeError,
      "decay_steps",
    ),
    (
      ms.ExponentialDecayLR,
      dict(learning_rate=0.1, decay_rate=0.9, decay_steps=4, is_stair=1),
      TypeError,
      "is_stair",
    ),
    (
      ms.NaturalExpDecayLR,
      dict(learning_rate=0.1, decay_rate=-0.9, decay_steps=4),
      ValueError,
      "decay_rate",
    ),
    (
      ms.InverseDecayLR,
      dict(learning_rate=-0.1, decay_rate=0.9, decay_steps=4),
      ValueError,
      "learning_rate",
    ),
    (ms.CosineDecayLR, dict(min_lr=0.1, max_lr=0.01, decay_steps=4), ValueError, "max_lr"),
    (ms.CosineDecayLR, dict(min_lr=-0.1, max_lr=0.1, decay_steps=4), ValueError, "min_lr"),
    (
      ms.PolynomialDecayLR,
      dict(learning_rate=0.1, end_learning_rate=0.01, decay_steps=4, power=0.0),
      ValueError,
      "power",
    ),
    (
      ms.PolynomialDecayLR,
      dict(learning_rate=0.1, end_learning_rate=0.01, decay_steps=True, power=0.5),
      TypeError,
      "decay_steps",
    ),
    (ms.WarmUpLR, dict(learning_rate=0.1, warmup_steps=-1), ValueError, "warmup_steps"),
    (
      ms.piecewise_constant_lr,
      dict(milestone=[2, 2], learning_rates=[0.1, 0.2]),
      ValueError,
      "milestone",
    ),
    (
      ms.piecewise_constant_lr,
      dict(milestone=[2], learning_rates=[0.1, 0.2]),
      ValueError,
      "same length",
    ),
    (
      ms.piecewise_constant_lr,
      dict(milestone=[2, 3], learning_rates=[0.1, 1]),
      TypeError,
      "learning_rates",
    ),
    (
      ms.exponential_decay_lr,
      dict(learning_rate=0.1, decay_rate=0.9, total_step=0, step_per_epoch=1, decay_epoch=1),
      ValueError,
      "total_step",
    ),
    (
      ms.cosine_decay_lr,
      dict(min_lr=0.1, max_lr=0.1, total_step=4, step_per_epoch=1, decay_epoch=1),
      ValueError,
      "max_lr",
    ),
    (
      ms.polynomial_decay_lr,
      dict(
        learning_rate=0.1,
        end_learning_rate=0.01,
        total_step=4,
        step_per_epoch=1,
        decay_epoch=1,
        power=0.5,
        update_decay_epoch="no",
      ),
      TypeError,
      "update_decay_epoch",
    ),
    (
      ms.warmup_lr,
      dict(learning_rate=0.1, total_step=4, step_per_epoch=1.5, warmup_epoch=1),
      TypeError,
      "step_per_epoch",
    ),
  ],
)
def test_mindspore_argument_checks(factory, kwargs, exc, name):
  with pytest.raises(exc, match=name):
    factory(**kwargs)


def test_polynomial_update_decay_steps_edge_at_decay_steps():
  sched = ms.PolynomialDecayLR(0.1, 0.01, 4, 0.5, update_decay_steps=True)
  # at step == decay_steps the horizon is still decay_steps: end_learning_rate
  np.testing.assert_allclose(float(sched(4)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(sched(8)), 0.01, rtol=1e-6)


def test_lamb_signature_with_params_tree_uses_beta_gamma_rule():
  params = {"dense": {"weight": jnp.array([1.0, 2.0])}, "bn": {"gamma": jnp.array([3.0, 1.0])}}
  a = ms.Lamb(params, learning_rate=0.1, beta1=0.8, beta2=0.99, eps=1e-5, weight_decay=0.1)
  b = lamb_optax.lamb(0.1, b1=0.8, b2=0.99, eps=1e-5, weight_decay=0.1, mask="mindspore")
  g = {"dense": {"weight": jnp.array([0.1, -0.2])}, "bn": {"gamma": jnp.array([0.3, 0.1])}}
  ua, _ = a.update(g, a.init(params), params)
  ub, _ = b.update(g, b.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, ua, ub)


def test_lamb_signature_with_dynamic_lr_list():
  lrs = ms.polynomial_decay_lr(0.1, 0.01, total_step=6, step_per_epoch=2, decay_epoch=2, power=0.5)
  params = {"w": jnp.ones(2)}
  tx = ms.Lamb(params, learning_rate=lrs)
  s = tx.init(params)
  assert int(optax.tree_utils.tree_get(s, "count")) == 0


def test_lamb_signature_rejects_bad_params():
  with pytest.raises(ValueError, match="non-empty"):
    ms.Lamb({}, learning_rate=0.1)
  with pytest.raises(TypeError, match="floating"):
    ms.Lamb({"w": jnp.ones(2, jnp.int32)}, learning_rate=0.1)
