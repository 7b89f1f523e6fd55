"""Property-based tests (hypothesis) of LAMB's invariants over random shapes and hyperparameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lamb_optax

SETTINGS = settings(
  max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def problems(draw, dtype=None):
  n = draw(st.integers(1, 3))
  dtype = dtype or draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  params, grads = {}, {}
  for i in range(n):
    shape = draw(shapes)
    p_scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    params[f"leaf{i}"] = jnp.asarray(rng.normal(size=shape) * p_scale, dtype)
    grads[f"leaf{i}"] = jnp.asarray(rng.normal(size=shape), dtype)
  return params, grads


hyper = st.fixed_dictionaries(
  {
    "learning_rate": st.floats(1e-4, 1.0),
    "b1": st.floats(0.5, 0.99),
    "b2": st.floats(0.9, 0.9999),
    "eps": st.floats(1e-8, 1e-3),
    "weight_decay": st.floats(0.0, 0.5),
  }
)


def _norm(x):
  return float(np.linalg.norm(np.asarray(x, np.float64)))


@SETTINGS
@given(problems(dtype=jnp.float32), hyper)
def test_update_norm_is_lr_times_param_norm(problem, hp):
  """The LAMB invariant: ||delta w|| = lr * ||w|| wherever the ratio applies unclipped."""
  params, grads = problem
  tx = lamb_optax.lamb(**hp, mask=None)
  u, state = tx.update(grads, tx.init(params), params)
  ratios = lamb_optax.trust_ratios(state)
  for k in params:
    w_norm, u_norm = _norm(params[k]), _norm(u[k])
    if w_norm > 0 and float(ratios[k]) != 1.0:
      np.testing.assert_allclose(u_norm, hp["learning_rate"] * w_norm, rtol=1e-5)


@SETTINGS
@given(problems(dtype=jnp.float32), st.floats(1e-3, 1e3), st.integers(1, 3))
def test_direction_invariant_to_gradient_scale(problem, c, steps):
  params, grads = problem
  tx = lamb_optax.lamb(0.1, eps=1e-12, mask=None)
  s1, s2 = tx.init(params), tx.init(params)
  for _ in range(steps):
    u1, s1 = tx.update(grads, s1, params)
    u2, s2 = tx.update(jax.tree.map(lambda g: g * c, grads), s2, params)
  for k in params:
    np.testing.assert_allclose(u1[k], u2[k], rtol=2e-4, atol=1e-6 * _norm(u1[k]) + 1e-12)


@SETTINGS
@given(problems(), st.floats(0.01, 1.0), st.floats(1.0, 10.0))
def test_clipping_bounds_hold(problem, lo, hi):
  params, grads = problem
  tx = lamb_optax.lamb(0.1, min_trust_ratio=lo, max_trust_ratio=hi)
  _, state = tx.update(grads, tx.init(params), params)
  for r in jax.tree.leaves(lamb_optax.trust_ratios(state)):
    assert lo * (1 - 1e-6) <= float(r) <= hi * (1 + 1e-6)


@SETTINGS
@given(problems(dtype=jnp.float32), st.floats(0.01, 1.0))
def test_masked_out_leaves_get_no_decay(problem, wd):
  params, grads = problem
  names = sorted(params)
  mask = {k: i % 2 == 0 for i, k in enumerate(names)}
  decayed = lamb_optax.lamb(0.1, weight_decay=wd, mask=mask)
  plain = lamb_optax.lamb(0.1, weight_decay=0.0)
  u1, _ = decayed.update(grads, decayed.init(params), params)
  u2, _ = plain.update(grads, plain.init(params), params)
  for k in names:
    if not mask[k]:
      np.testing.assert_array_equal(u1[k], u2[k])


@SETTINGS
@given(
  problems(),
  hyper,
  st.sampled_from([0.0, 1e-30, 1e-10, 1.0, 1e10, 1e18]),
  st.sampled_from([0.0, 1e-30, 1e-10, 1.0, 1e10, 1e18]),
)
def test_no_nan_from_finite_input(problem, hp, p_scale, g_scale):
  params, grads = problem
  params = jax.tree.map(lambda p: (p.astype(jnp.float32) * p_scale).astype(p.dtype), params)
  grads = jax.tree.map(lambda g: (g.astype(jnp.float32) * g_scale).astype(g.dtype), grads)
  for x in jax.tree.leaves((params, grads)):  # bfloat16 holds 1e18: the input is finite
    assert np.all(np.isfinite(np.asarray(x, np.float32)))
  tx = lamb_optax.lamb(**hp)
  state = tx.init(params)
  for _ in range(2):
    u, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, u)
  for leaf in jax.tree.leaves((u, state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
