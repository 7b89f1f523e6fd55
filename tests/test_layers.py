"""Per-layer trust ratios: a scanned Flax model matches the same model unrolled."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engines import EVERY
from _reference import NumpyLamb

import lamb_optax

L = 3


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    dense = nn.Dense(
      8,
      name="dense",
      kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), (None, "mlp")),
    )
    return jnp.tanh(dense(x)), None


class Scanned(nn.Module):
  @nn.compact
  def __call__(self, x):
    blocks = nn.scan(
      Block,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      length=L,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = blocks(name="blocks")(x, None)
    return nn.Dense(2, name="head")(x)


class Unrolled(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(L):
      x, _ = Block(name=f"block_{i}")(x, None)
    return nn.Dense(2, name="head")(x)


def _unstack(scanned):
  out = {"head": scanned["head"]}
  for i in range(L):
    out[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], scanned["blocks"])
  return out


def _data():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), jnp.asarray(rng.integers(0, 2, 16))


def _loss(apply, params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply({"params": params}, x), y).mean()


@pytest.mark.parametrize("engine", list(EVERY.values()), ids=list(EVERY))
@pytest.mark.parametrize("how", ["regex", "partitioning"])
def test_scanned_model_with_layer_axes_matches_unrolled_model(how, engine):
  x, y = _data()
  boxed = Scanned().init(jax.random.key(0), x)["params"]
  scanned = nn.unbox(boxed)
  unrolled = _unstack(scanned)
  if how == "regex":
    layer_axes = lamb_optax.layer_axes_from_regex("^blocks/")
  else:  # the kernels carry "layers" metadata; the unboxed biases need the regex
    from_meta = lamb_optax.layer_axes_from_partitioning(boxed)
    assert from_meta["blocks"]["dense"]["kernel"] == 1
    assert from_meta["blocks"]["dense"]["bias"] == 0
    from_meta["blocks"]["dense"]["bias"] = 1
    layer_axes = from_meta
  tx_s = lamb_optax.lamb(0.05, weight_decay=0.01, mask=None, layer_axes=layer_axes, **engine)
  tx_u = lamb_optax.lamb(0.05, weight_decay=0.01, mask=None, **engine)
  s_s, s_u = tx_s.init(scanned), tx_u.init(unrolled)

  def step(tx, apply):
    @jax.jit
    def f(params, state):
      grads = jax.grad(lambda p: _loss(apply, p, x, y))(params)
      u, state = tx.update(grads, state, params)
      return optax.apply_updates(params, u), state

    return f

  step_s, step_u = step(tx_s, Scanned().apply), step(tx_u, Unrolled().apply)
  for _ in range(6):
    scanned, s_s = step_s(scanned, s_s)
    unrolled, s_u = step_u(unrolled, s_u)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
      _unstack(scanned),
      unrolled,
    )
  r_s, r_u = lamb_optax.trust_ratios(s_s), lamb_optax.trust_ratios(s_u)
  assert r_s["blocks"]["dense"]["kernel"].shape == (L,)
  np.testing.assert_allclose(
    r_s["blocks"]["dense"]["kernel"],
    [r_u[f"block_{i}"]["dense"]["kernel"] for i in range(L)],
    rtol=1e-5,
  )


def test_without_layer_axes_a_stacked_leaf_gets_one_ratio():
  """optax's behaviour, and lamb's default: one norm over the whole stacked leaf."""
  x, _ = _data()
  scanned = nn.unbox(Scanned().init(jax.random.key(0), x)["params"])
  tx = lamb_optax.lamb(0.05)
  g = jax.tree.map(jnp.ones_like, scanned)
  _, state = tx.update(g, tx.init(scanned), scanned)
  assert lamb_optax.trust_ratios(state)["blocks"]["dense"]["kernel"].shape == ()


@pytest.mark.parametrize("engine", list(EVERY.values()), ids=list(EVERY))
def test_trust_ratios_match_numpy_per_layer(engine):
  rng = np.random.default_rng(3)
  params = {"stack": rng.normal(size=(4, 5, 3)), "w": rng.normal(size=(5,))}
  params["stack"][2] = 0.0  # a zero layer gets ratio 1
  layer_axes = {"stack": 1, "w": 0}
  tx = lamb_optax.lamb(0.1, weight_decay=0.05, mask=None, layer_axes=layer_axes, **engine)
  ref = NumpyLamb(
    params,
    lr=dict.fromkeys(params, lambda s: 0.1),
    wd=dict.fromkeys(params, lambda s: 0.05),
    decay=dict.fromkeys(params, True),
    layer_axes={"stack": 1, "w": 0},
  )
  p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  state = tx.init(p)
  for t in range(20):
    g = {k: rng.normal(size=v.shape) for k, v in params.items()}
    u, state = jax.jit(tx.update)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), g), state, p)
    p = optax.apply_updates(p, u)
    expected = ref.update(g)
    ratios = lamb_optax.trust_ratios(state)
    for k in params:
      np.testing.assert_allclose(ratios[k], ref.ratios[k], rtol=1e-5, err_msg=f"{k}@{t}")
      np.testing.assert_allclose(p[k], expected[k], rtol=2e-5, atol=1e-6)
    if t == 0:  # layer 2 starts at zero: ratio 1 for it alone, the others their own
      assert float(ratios["stack"][2]) == 1.0
      assert np.all(np.asarray(ratios["stack"])[[0, 1, 3]] != 1.0)


@pytest.mark.parametrize("bad", [{"stack": 4, "w": 0}, {"stack": -1, "w": 0}])
def test_layer_axes_out_of_range(bad):
  p = {"stack": jnp.ones((4, 5, 3)), "w": jnp.ones(5)}
  with pytest.raises(ValueError, match="layer_axes.*'stack'"):
    lamb_optax.lamb(0.1, layer_axes=bad).init(p)


def test_layer_axes_not_int():
  p = {"w": jnp.ones((2, 5))}
  with pytest.raises(TypeError, match="layer_axes"):
    lamb_optax.lamb(0.1, layer_axes={"w": 1.0}).init(p)
