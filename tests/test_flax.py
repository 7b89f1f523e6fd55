"""lamb drops into Flax: TrainState (Linen), nnx.Optimizer (NNX), orbax checkpoints."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx, serialization
from flax.training import train_state

import lamb_optax

GROUPS = [
  {"params": r"(^|/)conv", "weight_decay": 0.01, "grad_centralization": True},
  {
    "params": r"^(?!.*conv)",
    "lr": lamb_optax.mindspore_compat.PolynomialDecayLR(0.1, 0.01, 4, 0.5),
  },
]

OPTION_IDS = {
  "plain": {},
  "groups": {"groups": GROUPS},
  "packed": {"groups": GROUPS, "layout": "packed"},
  "chain": {"groups": GROUPS, "fused": False},
}
OPTIONS = list(OPTION_IDS.values())


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    x = nn.LayerNorm(name="norm")(x.reshape(x.shape[0], -1))
    return nn.Dense(3, name="head")(x)


class NnxCNN(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.norm = nnx.LayerNorm(4 * 6 * 6, rngs=rngs)
    self.head = nnx.Linear(4 * 6 * 6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    return self.head(self.norm(x.reshape(x.shape[0], -1)))


def _data():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(8, 6, 6, 1)), jnp.float32), jnp.asarray(rng.integers(0, 3, 8))


def _loss(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("options", OPTIONS, ids=list(OPTION_IDS))
def test_linen_train_state(options):
  x, y = _data()
  model = LinenCNN()
  params = model.init(jax.random.key(0), x)["params"]
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=lamb_optax.lamb(0.05, **options)
  )

  @functools.partial(jax.jit, donate_argnums=0)  # params and optimizer state donated
  def step(state):
    loss, grads = jax.value_and_grad(lambda p: _loss(state.apply_fn({"params": p}, x), y))(
      state.params
    )
    return state.apply_gradients(grads=grads), loss

  losses = []
  for _ in range(15):
    state, loss = step(state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("options", OPTIONS, ids=list(OPTION_IDS))
def test_nnx_optimizer_matches_linen_style_update(options):
  """nnx.Optimizer hands init a Variable-wrapped state: groups must still resolve."""
  x, y = _data()
  model = NnxCNN(nnx.Rngs(0))
  tx = lamb_optax.lamb(0.05, **options)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  params0 = nnx.state(model, nnx.Param)
  plain0 = jax.tree.map(lambda v: v, nnx.to_pure_dict(params0))

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: _loss(m(x), y))(model)
    opt.update(model, grads)
    return loss

  # the same first step done by hand on plain dicts
  grads = nnx.grad(lambda m: _loss(m(x), y))(model)
  plain_grads = nnx.to_pure_dict(grads)
  u, _ = tx.update(plain_grads, tx.init(plain0), plain0)
  expected = optax.apply_updates(plain0, u)
  step(model, opt)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, expected)
  losses = [float(step(model, opt)) for _ in range(15)]
  assert losses[-1] < losses[0]


@pytest.mark.parametrize("options", OPTIONS, ids=list(OPTION_IDS))
def test_orbax_round_trip_of_optimizer_state(tmp_path, options):
  x, _ = _data()
  params = LinenCNN().init(jax.random.key(0), x)["params"]
  tx = lamb_optax.lamb(0.05, **options)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", {"params": params, "opt_state": opt_state})
    ckptr.wait_until_finished()
    target = {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
    restored = ckptr.restore(tmp_path / "ckpt", target)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(opt_state)
  jax.tree.map(np.testing.assert_array_equal, restored["opt_state"], opt_state)


@pytest.mark.parametrize("layout", ["per_leaf", "packed"])
def test_flax_msgpack_round_trip_of_the_state(layout):
  """flax.serialization (to_bytes/from_bytes) knows the state's Moments and TrustRatios nodes."""
  x, _ = _data()
  params = LinenCNN().init(jax.random.key(0), x)["params"]
  tx = lamb_optax.lamb(0.05, groups=GROUPS, layout=layout)
  opt_state = tx.init(params)
  _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(opt_state))
  assert jax.tree.structure(restored) == jax.tree.structure(opt_state)
  jax.tree.map(np.testing.assert_array_equal, restored, opt_state)
  r1, r2 = lamb_optax.trust_ratios(restored), lamb_optax.trust_ratios(opt_state)
  jax.tree.map(np.testing.assert_array_equal, r1, r2)
