"""Parameter groups (MindSpore's list of dicts) against a NumPy reference of the group rules."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engines import EVERY
from _reference import NumpyLamb

import lamb_optax
from lamb_optax.mindspore_compat import Lamb, PolynomialDecayLR


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
    x = nn.relu(nn.Conv(6, (3, 3), name="conv2")(x))
    x = nn.LayerNorm(name="norm")(x.reshape(x.shape[0], -1))
    return nn.Dense(10, name="head")(x)


def _cnn_params():
  return SmallCNN().init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))["params"]


def _flat(tree):
  return {p: np.asarray(x) for p, x in lamb_optax.masks.named_leaves(tree)}


def _poly_np(step, lr=0.1, end=0.01, decay_steps=4, power=0.5):
  s = min(step, decay_steps)
  return (lr - end) * (1 - s / decay_steps) ** power + end


def _seed_groups():
  """MindSpore's nn.Lamb docstring example, ported to a Flax parameter tree."""
  poly_decay_lr = PolynomialDecayLR(
    learning_rate=0.1, end_learning_rate=0.01, decay_steps=4, power=0.5
  )
  paths = list(_flat(_cnn_params()))
  conv_params = [p for p in paths if "conv" in p]
  no_conv_params = [p for p in paths if "conv" not in p]
  return [
    {"params": conv_params, "weight_decay": 0.01, "grad_centralization": True},
    {"params": no_conv_params, "lr": poly_decay_lr},
    {"order_params": paths},
  ]


def _reference():
  paths = _flat(_cnn_params())
  conv = {p: "conv" in p for p in paths}
  return NumpyLamb(
    _flat(_cnn_params()),
    lr={p: (lambda s: 0.1) if conv[p] else _poly_np for p in paths},
    wd={p: (lambda s: 0.01) if conv[p] else (lambda s: 0.0) for p in paths},
    decay=conv,  # group 1 decays all its leaves (biases too); group 2 has wd 0
    gc={p: conv[p] and paths[p].ndim >= 3 for p in paths},
  )


@pytest.mark.parametrize(
  "build", [*(f"lamb-{k}" for k in EVERY), "mindspore_compat"], ids=[*EVERY, "mindspore_compat"]
)
def test_seed_group_example_matches_numpy(build):
  params = _cnn_params()
  if build.startswith("lamb-"):
    tx = lamb_optax.lamb(0.1, weight_decay=0.0, groups=_seed_groups(), **EVERY[build[5:]])
  else:
    tx = Lamb(_seed_groups(), learning_rate=0.1, weight_decay=0.0)
  ref = _reference()
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(1)
  for t in range(20):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    params, state = step(params, state, grads)
    expected = ref.update(_flat(grads))
    got = _flat(params)
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], rtol=2e-5, atol=1e-6, err_msg=f"{k}@{t}")
    ratios = _flat(lamb_optax.trust_ratios(state))
    for k in expected:
      np.testing.assert_allclose(ratios[k], ref.ratios[k], rtol=1e-4, err_msg=k)


def test_group_forms_regex_callable_and_lists():
  params = _cnn_params()
  by_regex = lamb_optax.lamb(
    0.1, groups=[{"params": r"^conv", "weight_decay": 0.1}, {"params": r"^(norm|head)"}]
  )
  by_callable = lamb_optax.lamb(
    0.1,
    groups=[
      {"params": lambda path, leaf: path.startswith("conv"), "weight_decay": 0.1},
      {"params": lambda path, leaf: not path.startswith("conv")},
    ],
  )
  paths = list(_flat(params))
  by_list = lamb_optax.lamb(
    0.1,
    groups=[
      {"params": [p for p in paths if p.startswith("conv")], "weight_decay": 0.1},
      {"params": [p for p in paths if not p.startswith("conv")]},
    ],
  )
  grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
  outs = [tx.update(grads, tx.init(params), params)[0] for tx in (by_regex, by_callable, by_list)]
  for other in outs[1:]:
    jax.tree.map(np.testing.assert_array_equal, outs[0], other)


@pytest.mark.parametrize("engine", list(EVERY.values()), ids=list(EVERY))
def test_group_weight_decay_schedule_and_lr_list(engine):
  """Two groups in one packed bucket: per-segment learning rates and weight decays."""
  params = {
    "a": jnp.asarray(np.linspace(-1, 1, 6).reshape(2, 3), jnp.float32),
    "b": jnp.asarray(np.linspace(2, -1, 4), jnp.float32),
  }
  tx = lamb_optax.lamb(
    0.1,
    groups=[
      {"params": "a", "lr": [0.1, 0.05], "weight_decay": lambda c: 0.5 / (c + 1)},
      {"params": "b", "weight_decay": 0.2},
    ],
    **engine,
  )
  ref = NumpyLamb(
    _flat(params),
    lr={"a": lambda s: [0.1, 0.05][min(s, 1)], "b": lambda s: 0.1},
    wd={"a": lambda s: 0.5 / (s + 1), "b": lambda s: 0.2},
    decay={"a": True, "b": True},
  )
  state = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(20):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    u, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, u)
    expected = ref.update(_flat(g))
    for k in params:
      np.testing.assert_allclose(params[k], expected[k], rtol=2e-5, atol=1e-7)


def test_group_decay_applies_to_gamma_beta_inside_a_decayed_group():
  params = {"LayerNorm": {"gamma": jnp.array([2.0, 2.0]), "beta": jnp.array([1.0, 1.0])}}
  tx = lamb_optax.lamb(1.0, groups=[{"params": ".", "weight_decay": 1.0}])
  u_grouped, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  # with zero gradients u = wd * w, r = ||w|| / ||wd w|| = 1: the update is -w.
  jax.tree.map(lambda u, w: np.testing.assert_allclose(u, -w, rtol=1e-6), u_grouped, params)
  plain = lamb_optax.lamb(1.0, weight_decay=1.0)  # MindSpore's rule skips beta/gamma
  u_plain, _ = plain.update(jax.tree.map(jnp.zeros_like, params), plain.init(params), params)
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), u_plain)


# --- errors --------------------------------------------------------------------

P = {
  "conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)},
  "dense": {"kernel": jnp.ones((4, 2))},
}


def test_unknown_key():
  with pytest.raises(KeyError, match="unknown key.*'momentum'"):
    lamb_optax.lamb(0.1, groups=[{"params": ".", "momentum": 0.9}])


def test_group_without_params():
  with pytest.raises(KeyError, match="no 'params'"):
    lamb_optax.lamb(0.1, groups=[{"lr": 0.1}])


@pytest.mark.parametrize("bad", [1, "yes", None, 1.0])
def test_grad_centralization_not_bool(bad):
  with pytest.raises(TypeError, match=r"groups\[0\]\['grad_centralization'\]"):
    lamb_optax.lamb(0.1, groups=[{"params": ".", "grad_centralization": bad}])


@pytest.mark.parametrize(
  "key,bad,exc",
  [
    ("lr", -0.1, ValueError),
    ("lr", "0.1", TypeError),
    ("lr", [[0.1]], ValueError),
    ("lr", True, TypeError),
    ("weight_decay", -1.0, ValueError),
    ("weight_decay", True, TypeError),
    ("weight_decay", float("nan"), ValueError),
  ],
)
def test_group_values_checked_like_top_level(key, bad, exc):
  with pytest.raises(exc, match=rf"groups\[0\]\['{key}'\]"):
    lamb_optax.lamb(0.1, groups=[{"params": ".", key: bad}])


def test_leaf_in_no_group_is_named_at_init():
  tx = lamb_optax.lamb(0.1, groups=[{"params": "conv"}])
  with pytest.raises(ValueError, match="in no group: 'dense/kernel'"):
    tx.init(P)


def test_leaf_in_two_groups_is_named_at_init():
  tx = lamb_optax.lamb(0.1, groups=[{"params": "kernel"}, {"params": "conv"}])
  with pytest.raises(ValueError, match=r"several: 'conv/kernel' \(groups \[0, 1\]\)"):
    tx.init(P)


def test_dense_kernel_in_centralized_group():
  tx = lamb_optax.lamb(0.1, groups=[{"params": ".", "grad_centralization": True}])
  with pytest.raises(ValueError, match="only to convolution kernels.*'dense/kernel'"):
    tx.init(P)


def test_listed_path_that_does_not_exist():
  tx = lamb_optax.lamb(0.1, groups=[{"params": ["conv/kernel", "conv/bias", "dense/kernal"]}])
  with pytest.raises(ValueError, match="not in the parameters: 'dense/kernal'"):
    tx.init(P)


def test_order_params_must_belong_to_a_group():
  tx = lamb_optax.lamb(0.1, groups=[{"params": "."}, {"order_params": ["conv/kernel", "nope"]}])
  with pytest.raises(ValueError, match="order_params.*'nope'"):
    tx.init(P)


def test_order_params_alone_in_its_dict():
  with pytest.raises(ValueError, match="alone"):
    lamb_optax.lamb(0.1, groups=[{"params": "."}, {"order_params": [], "lr": 0.1}])


def test_order_params_has_no_numeric_effect():
  with_order = lamb_optax.lamb(
    0.1, groups=[{"params": "."}, {"order_params": ["dense/kernel", "conv/bias", "conv/kernel"]}]
  )
  without = lamb_optax.lamb(0.1, groups=[{"params": "."}])
  g = jax.tree.map(lambda x: 0.5 * x, P)
  a, _ = with_order.update(g, with_order.init(P), P)
  b, _ = without.update(g, without.init(P), P)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_group_that_selects_nothing():
  tx = lamb_optax.lamb(0.1, groups=[{"params": "."}, {"params": "nothing-matches"}])
  with pytest.raises(ValueError, match="in several|selects no parameter"):
    tx.init(P)


@pytest.mark.parametrize("bad", [{"params": "."}, "conv", 3, [1, 2]])
def test_groups_must_be_a_list_of_dicts(bad):
  with pytest.raises(TypeError, match="groups"):
    lamb_optax.lamb(0.1, groups=bad)


def test_empty_groups():
  with pytest.raises(ValueError, match="at least one"):
    lamb_optax.lamb(0.1, groups=[{"order_params": []}])


def test_grouped_state_is_a_pytree_of_arrays_with_one_count():
  """Groups are settings of one engine: one step count, m and v, one ratio per leaf, and each
  group's learning rate and weight decay."""
  tx = lamb_optax.lamb(0.1, groups=_seed_groups())
  state = tx.init(_cnn_params())
  leaves = jax.tree.leaves(state)
  assert leaves and all(isinstance(x, jax.Array) for x in leaves)
  n_groups = len([g for g in _seed_groups() if "params" in g])
  assert math.isclose(
    sum(x.size for x in leaves),
    2 * sum(x.size for x in jax.tree.leaves(_cnn_params()))
    + 1
    + len(_flat(_cnn_params()))
    + 2 * n_groups,
  )
  assert int(optax.tree_utils.tree_get(state, "count")) == 0
