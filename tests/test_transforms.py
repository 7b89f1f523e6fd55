"""Each building block alone, against small hand-computed cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamb_optax


def _apply(tx, updates, params=None, steps=1):
  state = tx.init(params if params is not None else updates)
  for _ in range(steps):
    out, state = tx.update(updates, state, params)
  return out, state


# --- centralize_gradients ---------------------------------------------------


def test_centralize_2d_channel_last():
  g = jnp.array([[1.0, 2.0], [3.0, 6.0]])  # columns are output channels
  out, _ = _apply(lamb_optax.centralize_gradients(), g)
  np.testing.assert_allclose(out, [[-1.0, -2.0], [1.0, 2.0]])


def test_centralize_2d_out_axis_0():
  g = jnp.array([[1.0, 3.0], [2.0, 6.0]])  # rows are output channels
  out, _ = _apply(lamb_optax.centralize_gradients(out_axis=0), g)
  np.testing.assert_allclose(out, [[-1.0, 1.0], [-2.0, 2.0]])


def test_centralize_4d_flax_kernel_keeps_last_axis():
  # (kh, kw, in, out) = (2, 1, 1, 2): channel 0 holds 1, 3; channel 1 holds 10, 20.
  g = jnp.array([[[[1.0, 10.0]]], [[[3.0, 20.0]]]])
  out, _ = _apply(lamb_optax.centralize_gradients(), g)
  expected = np.array([[[[-1.0, -5.0]]], [[[1.0, 5.0]]]])
  np.testing.assert_allclose(out, expected)
  # each output channel now has zero mean; optax.centralize keeps axis 0 instead
  np.testing.assert_allclose(np.asarray(out).sum(axis=(0, 1, 2)), [0.0, 0.0], atol=1e-6)


def test_centralize_passes_vectors_and_scalars_through():
  g = {"b": jnp.array([1.0, 5.0]), "s": jnp.array(3.0)}
  out, _ = _apply(lamb_optax.centralize_gradients(), g)
  np.testing.assert_array_equal(out["b"], g["b"])
  np.testing.assert_array_equal(out["s"], g["s"])


def test_centralize_bf16_keeps_dtype():
  g = jnp.array([[1.0, 2.0], [3.0, 6.0]], jnp.bfloat16)
  out, _ = _apply(lamb_optax.centralize_gradients(), g)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), [[-1.0, -2.0], [1.0, 2.0]])


# --- scale_by_adam ----------------------------------------------------------


def test_adam_two_steps_hand_computed():
  b1, b2, eps = 0.5, 0.75, 0.0
  tx = lamb_optax.scale_by_adam(b1, b2, eps=1e-30)
  g1, g2 = jnp.array([2.0]), jnp.array([4.0])
  s = tx.init(g1)
  u1, s = tx.update(g1, s)
  # m = 1, v = 1 -> m_hat = 2, v_hat = 4 -> u = 1
  np.testing.assert_allclose(u1, [1.0], rtol=1e-6)
  u2, s = tx.update(g2, s)
  m = b1 * 1.0 + (1 - b1) * 4.0  # 2.5
  v = b2 * 1.0 + (1 - b2) * 16.0  # 4.75
  expected = (m / (1 - b1**2)) / (np.sqrt(v / (1 - b2**2)) + eps)
  np.testing.assert_allclose(u2, [expected], rtol=1e-6)
  np.testing.assert_allclose(s.mu, [m])
  np.testing.assert_allclose(s.nu, [v])
  assert int(s.count) == 2


@pytest.mark.parametrize(
  "param_dtype,moment_dtype,expected",
  [
    (jnp.bfloat16, None, jnp.float32),
    (jnp.float16, None, jnp.float32),
    (jnp.float32, None, jnp.float32),
    (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
    (jnp.float32, "bfloat16", jnp.bfloat16),
  ],
)
def test_adam_moment_dtype(param_dtype, moment_dtype, expected):
  tx = lamb_optax.scale_by_adam(moment_dtype=moment_dtype)
  p = jnp.ones(3, param_dtype)
  s = tx.init(p)
  assert s.mu.dtype == expected and s.nu.dtype == expected
  u, s2 = tx.update(p, s)
  assert u.dtype == param_dtype and s2.mu.dtype == expected


def test_adam_bf16_params_keep_float32_second_moment():
  """b2 = 0.999 in bf16 would be 1.0; the moments here stay float32."""
  tx = lamb_optax.scale_by_adam()
  g = jnp.array([1.0, -3.0], jnp.bfloat16)
  u, s = tx.update(g, tx.init(g))
  # (1 - b2) with b2 rounded to float32 is 0.00099998713: rtol 2e-5.
  np.testing.assert_allclose(s.nu, [0.001, 0.009], rtol=2e-5)
  assert np.all(np.isfinite(np.asarray(u, np.float32)))


# --- add_decayed_weights ----------------------------------------------------


def test_decay_masked_and_scheduled():
  tx = lamb_optax.add_decayed_weights(lambda c: 0.1 * (c + 1), mask={"w": True, "gamma": False})
  p = {"w": jnp.array([1.0, -2.0]), "gamma": jnp.array([3.0])}
  u = {"w": jnp.array([0.5, 0.5]), "gamma": jnp.array([0.5])}
  s = tx.init(p)
  out, s = tx.update(u, s, p)
  np.testing.assert_allclose(out["w"], [0.6, 0.3])
  np.testing.assert_allclose(out["gamma"], [0.5])
  out, s = tx.update(u, s, p)  # step 1: wd = 0.2
  np.testing.assert_allclose(out["w"], [0.7, 0.1])


@pytest.mark.parametrize("mask", ["mindspore", lamb_optax.masks.mindspore])
def test_decay_mindspore_rule(mask):
  tx = lamb_optax.add_decayed_weights(1.0, mask=mask)
  p = {"a": {"gamma": jnp.ones(1), "beta": jnp.ones(1), "kernel": jnp.ones(1)}}
  out, _ = _apply(tx, jax.tree.map(jnp.zeros_like, p), p)
  assert [float(x[0]) for x in jax.tree.leaves(out)] == [0.0, 0.0, 1.0]  # beta, gamma, kernel


@pytest.mark.parametrize("mask", ["flax", lamb_optax.masks.flax_weights])
def test_decay_flax_rule(mask):
  tx = lamb_optax.add_decayed_weights(1.0, mask=mask)
  p = {"Dense": {"kernel": jnp.ones((1, 1)), "bias": jnp.ones(1)}, "Norm": {"scale": jnp.ones(1)}}
  out, _ = _apply(tx, jax.tree.map(jnp.zeros_like, p), p)
  assert [float(x.ravel()[0]) for x in jax.tree.leaves(out)] == [0.0, 1.0, 0.0]  # bias, kernel


def test_masks_flax_is_a_deprecated_alias_of_flax_weights():
  with pytest.warns(DeprecationWarning, match="flax_weights"):
    from lamb_optax.masks import flax  # the old name, which shadowed the flax package
  assert flax is lamb_optax.masks.flax_weights
  assert "flax" not in lamb_optax.masks.__all__
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    lamb_optax.masks.nope  # noqa: B018


def test_decay_zero_weight_decay_adds_nothing():
  tx = lamb_optax.add_decayed_weights(0.0)
  p = jnp.array([np.inf])
  out, _ = _apply(tx, jnp.array([1.0]), p)
  np.testing.assert_array_equal(out, [1.0])


# --- scale_by_trust_ratio ---------------------------------------------------


def test_trust_ratio_hand_computed():
  w = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([1.0, 0.0])}
  u = {"a": jnp.array([0.0, 0.5]), "b": jnp.array([0.0, 4.0])}
  out, s = _apply(lamb_optax.scale_by_trust_ratio(), u, w)
  np.testing.assert_allclose(out["a"], [0.0, 5.0])  # r = 5 / 0.5 = 10
  np.testing.assert_allclose(out["b"], [0.0, 1.0])  # r = 1 / 4
  np.testing.assert_allclose(s.ratios["a"], 10.0)
  np.testing.assert_allclose(s.ratios["b"], 0.25)


@pytest.mark.parametrize(
  "w,u", [([0.0, 0.0], [1.0, 2.0]), ([1.0, 2.0], [0.0, 0.0]), ([0.0, 0.0], [0.0, 0.0])]
)
def test_trust_ratio_zero_norms_give_one(w, u):
  out, s = _apply(lamb_optax.scale_by_trust_ratio(), jnp.array(u), jnp.array(w))
  np.testing.assert_array_equal(out, u)
  assert float(s.ratios) == 1.0


@pytest.mark.parametrize("lo,hi,expected", [(None, 2.0, 2.0), (20.0, None, 20.0), (0.5, 20, 10.0)])
def test_trust_ratio_clipping(lo, hi, expected):
  w, u = jnp.array([3.0, 4.0]), jnp.array([0.0, 0.5])  # raw ratio 10
  out, s = _apply(lamb_optax.scale_by_trust_ratio(lo, hi), u, w)
  np.testing.assert_allclose(s.ratios, expected, rtol=1e-6)
  np.testing.assert_allclose(out, [0.0, 0.5 * expected], rtol=1e-6)


def test_trust_ratio_clipping_does_not_touch_zero_norm_default():
  out, s = _apply(lamb_optax.scale_by_trust_ratio(min_ratio=2.0), jnp.ones(2), jnp.zeros(2))
  # r = 1 for a zero-norm weight, then clipped like any ratio (docs/design.md order).
  assert float(s.ratios) == 2.0
  np.testing.assert_allclose(out, [2.0, 2.0])


def test_trust_ratio_mask_excludes():
  w = {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([3.0, 4.0])}
  u = {"kernel": jnp.array([0.0, 0.5]), "bias": jnp.array([0.0, 0.5])}
  tx = lamb_optax.scale_by_trust_ratio(mask={"kernel": True, "bias": False})
  out, s = _apply(tx, u, w)
  np.testing.assert_allclose(out["kernel"], [0.0, 5.0])
  np.testing.assert_allclose(out["bias"], [0.0, 0.5])
  assert float(s.ratios["bias"]) == 1.0


def test_trust_ratio_float16_norms_do_not_overflow():
  w = jnp.full((4,), 300.0, jnp.float16)  # sum of squares 360000 > 65504
  u = jnp.full((4,), 150.0, jnp.float16)
  out, s = _apply(lamb_optax.scale_by_trust_ratio(), u, w)
  np.testing.assert_allclose(float(s.ratios), 2.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out, np.float32), 300.0)


def test_trust_ratio_layer_axes_one_ratio_per_layer():
  w = jnp.array([[3.0, 4.0], [1.0, 0.0]])
  u = jnp.array([[0.0, 0.5], [0.0, 4.0]])
  out, s = _apply(lamb_optax.scale_by_trust_ratio(layer_axes=1), u, w)
  np.testing.assert_allclose(s.ratios, [10.0, 0.25])
  np.testing.assert_allclose(out, [[0.0, 5.0], [0.0, 1.0]])


# --- scale_by_learning_rate -------------------------------------------------


def _lrs(lr, steps):
  tx = lamb_optax.scale_by_learning_rate(lr)
  s = tx.init(jnp.ones(1))
  out = []
  for _ in range(steps):
    u, s = jax.jit(tx.update)(jnp.ones(1), s)
    out.append(-float(u[0]))
  return out


@pytest.mark.parametrize(
  "lr,expected",
  [
    (0.5, [0.5] * 3),
    (2, [2.0] * 3),
    (np.float32(0.25), [0.25] * 3),
    (jnp.asarray(0.25), [0.25] * 3),
    (np.array([0.3, 0.2]), [0.3, 0.2, 0.2, 0.2]),
    (jnp.array([0.3, 0.2]), [0.3, 0.2, 0.2, 0.2]),
    ([0.3, 0.2, 0.1], [0.3, 0.2, 0.1, 0.1]),
    ((0.3, 0.2), [0.3, 0.2, 0.2]),
    (range(3), [0.0, 1.0, 2.0, 2.0]),
    ((x / 10 for x in (3, 2)), [0.3, 0.2, 0.2]),
    (optax.linear_schedule(1.0, 0.0, 4), [1.0, 0.75, 0.5, 0.25, 0.0]),
  ],
  ids=[
    "float",
    "int",
    "np-scalar",
    "0d-array",
    "np-1d",
    "jnp-1d",
    "list",
    "tuple",
    "range",
    "generator",
    "schedule",
  ],
)
def test_every_learning_rate_form(lr, expected):
  np.testing.assert_allclose(_lrs(lr, len(expected)), expected, rtol=1e-6)


def test_learning_rate_bf16_updates_stay_bf16():
  tx = lamb_optax.scale_by_learning_rate(1e-3)
  u, _ = tx.update(jnp.ones(2, jnp.bfloat16), tx.init(jnp.ones(2, jnp.bfloat16)))
  assert u.dtype == jnp.bfloat16
