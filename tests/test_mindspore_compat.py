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
  # one step at a time under jit, as lamb evaluates it (XLA may then divide by a constant as a
  # multiplication by its reciprocal: PolynomialDecayLR was NaN at step == decay_steps)
  one = jax.jit(sched)
  scalar = [float(one(jnp.asarray(s, jnp.int32))) for s in range(entry["steps"])]
  np.testing.assert_allclose(scalar, entry["values"], rtol=1e-5, atol=1e-9)


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


# --- nn.Lamb(params=...) trains only the parameters it is given ------------------------------


def _model():
  k = jax.random.split(jax.random.key(3), 5)
  return {
    "conv": {"kernel": jax.random.normal(k[0], (3, 3, 1, 4)), "bias": jnp.full(4, 0.5)},
    "bn": {"gamma": 1.0 + jax.random.normal(k[1], (4,)), "beta": jax.random.normal(k[2], (4,))},
    "fc": {"kernel": jax.random.normal(k[3], (16, 3)), "bias": jax.random.normal(k[4], (3,))},
  }


def _grads(tree):  # elementwise, so the subset's gradients are the full tree's at its paths
  return jax.tree.map(lambda x: jnp.cos(3.0 * x) + 0.1 * x * x, tree)


def _run(tx, params, steps=10, roundtrip_at=None):
  """`steps` jitted steps; the state goes through NumPy and back at step `roundtrip_at`."""
  state = tx.init(params)
  step = jax.jit(tx.update)
  for i in range(steps):
    if i == roundtrip_at:  # a checkpoint: host arrays, then back
      saved = jax.tree.map(np.asarray, state)
      assert jax.tree.structure(saved) == jax.tree.structure(state)
      state = jax.tree.map(jnp.asarray, saved)
    updates, state = step(_grads(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


_HYPER = dict(beta1=0.8, beta2=0.99, eps=1e-5, weight_decay=0.05)
_LAMB = dict(b1=0.8, b2=0.99, eps=1e-5, weight_decay=0.05)
_GROUPS = [
  {"params": "^fc/", "weight_decay": 0.01},
  {"params": ["bn/gamma", "bn/beta"], "lr": 0.05},
]


@pytest.mark.parametrize("how", ["subset", "groups"])
def test_lamb_with_a_subset_freezes_the_other_leaves(how):
  full = _model()
  subset = {"fc": full["fc"], "bn": full["bn"]}
  if how == "subset":
    tx = ms.Lamb(subset, 0.1, **_HYPER)
    ref = lamb_optax.lamb(0.1, **_LAMB, mask="mindspore")
  else:
    tx = ms.Lamb(_GROUPS, 0.1, **_HYPER)
    ref = lamb_optax.lamb(0.1, **_LAMB, mask="mindspore", groups=_GROUPS)
  trained, state = _run(tx, full, roundtrip_at=5)
  expected, _ = _run(ref, subset)
  # the conv layer, in no group and not in the subset: bit-identical after 10 steps
  jax.tree.map(np.testing.assert_array_equal, trained["conv"], full["conv"])
  # the rest is lamb on the subset alone
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    {"fc": trained["fc"], "bn": trained["bn"]},
    expected,
  )
  assert not np.allclose(trained["fc"]["kernel"], full["fc"]["kernel"])
  # a frozen leaf keeps only set_to_zero's (empty) state
  assert isinstance(state, optax.PartitionState)
  assert jax.tree.leaves(state.inner_states["frozen"]) == []
  assert int(optax.tree_utils.tree_get(state, "count")) == 10


def test_lamb_given_the_tree_it_is_initialized_with_is_plain_lamb():
  params = _model()
  for tx, ref in [
    (ms.Lamb(params, 0.1, **_HYPER), lamb_optax.lamb(0.1, **_LAMB, mask="mindspore")),
    (
      ms.Lamb([{"params": "^conv/"}, *_GROUPS], 0.1, **_HYPER),
      lamb_optax.lamb(0.1, **_LAMB, groups=[{"params": "^conv/"}, *_GROUPS]),
    ),
  ]:
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(ref.init(params))
    got, _ = _run(tx, params, steps=3)
    want, _ = _run(ref, params, steps=3)
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("container", [list, tuple])
def test_lamb_rejects_a_list_of_arrays(container):
  arrays = container(jax.tree.leaves(_model()))
  with pytest.raises(TypeError, match=r"carry no names.*\{'fc': params\['fc'\]\}.*regex"):
    ms.Lamb(arrays, 0.1)


def test_lamb_subset_with_paths_not_in_the_tree_is_an_error_at_init():
  full = _model()
  tx = ms.Lamb(full["fc"], 0.1)  # paths 'kernel', 'bias': not the full tree's 'fc/...'
  with pytest.raises(ValueError, match=r"not in the tree.*'bias', 'kernel'.*same top-level keys"):
    tx.init(full)
  reshaped = ms.Lamb({"fc": {"bias": jnp.ones(5)}}, 0.1)
  with pytest.raises(ValueError, match=r"shapes differ.*'fc/bias' \(5,\) vs \(3,\)"):
    reshaped.init(full)


def test_lamb_groups_still_reject_a_leaf_in_two_groups():
  full = _model()
  with pytest.raises(ValueError, match="exactly one group"):
    ms.Lamb([{"params": "^fc/"}, {"params": "bias"}], 0.1).init(full)
  # lamb(groups=...) itself stays strict: a leaf in no group is an error
  with pytest.raises(ValueError, match="in no group"):
    lamb_optax.lamb(0.1, groups=_GROUPS).init(full)


@pytest.mark.parametrize("decay_steps", [3, 7, 100, 300])
def test_polynomial_decay_is_end_lr_at_decay_steps_under_jit(decay_steps):
  """At ``step == decay_steps`` the base ``1 - p`` is 0, so the value is the end learning
  rate; under jit XLA's reciprocal multiplication made ``p`` just above 1 and the value NaN."""
  sched = ms.PolynomialDecayLR(0.01, 0.001, decay_steps, 0.5)
  at = jax.jit(sched)(jnp.asarray(decay_steps, jnp.int32))
  np.testing.assert_allclose(float(at), 0.001, rtol=1e-6)
