"""Mixed precision, non-finite gradients, extreme values, checkpoint/resume, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from _engines import EVERY, GPU_POLICY, LAYOUTS

import lamb_optax

every = pytest.mark.parametrize("engine", list(EVERY.values()), ids=list(EVERY))


def _problem(dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  params = {
    "dense": {"kernel": rng.normal(size=(8, 4)), "bias": np.zeros(4)},
    "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
    "norm": {"gamma": np.ones(4), "beta": np.zeros(4)},
  }
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)


def _grads(params, t):
  rng = np.random.default_rng(1000 + t)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


# --- low precision ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@every
def test_low_precision_params_get_float32_moments_and_finite_updates(dtype, engine):
  params = _problem(dtype)
  tx = lamb_optax.lamb(1e-2, weight_decay=0.01, **engine)
  state = tx.init(params)
  adam_state = state if isinstance(state, lamb_optax.LambState) else state[1]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((adam_state.mu, adam_state.nu)))
  step = jax.jit(tx.update)
  for t in range(10):
    u, state = step(_grads(params, t), state, params)
    assert all(x.dtype == dtype for x in jax.tree.leaves(u))
    params = optax.apply_updates(params, u)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(params))


def test_float16_norms_where_optax_overflows():
  """sum of squares above 65504: lamb_optax gets the ratio, optax.lamb returns non-finite."""
  w = {"w": jnp.full((64,), 100.0, jnp.float16)}  # ||w||^2 = 640000 > 65504
  g = {"w": jnp.full((64,), 0.5, jnp.float16)}
  ours = lamb_optax.lamb(1e-3, mask=None)
  u, state = ours.update(g, ours.init(w), w)
  # u = g/|g| = 1 per element, ||u|| = 8, ||w|| = 800: r = 100, update = -lr * 100
  np.testing.assert_allclose(float(lamb_optax.trust_ratios(state)["w"]), 100.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(u["w"], np.float32), -0.1, rtol=1e-3)
  theirs = optax.lamb(1e-3)
  u_optax, _ = theirs.update(g, theirs.init(w), w)
  assert not np.all(np.isfinite(np.asarray(u_optax["w"], np.float32)))


@pytest.mark.parametrize("groups", [None, [{"params": ".", "weight_decay": 0.01}]])
def test_master_weights_track_the_float32_run_exactly(groups):
  p32 = _problem(jnp.float32)
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)
  start32 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)  # the same starting values
  tx_master = lamb_optax.lamb(1e-2, weight_decay=0.01, groups=groups, master_weights=True)
  tx_f32 = lamb_optax.lamb(1e-2, weight_decay=0.01, groups=groups)
  s16, s32, p = tx_master.init(p16), tx_f32.init(start32), start32
  for t in range(8):
    g = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _grads(p32, t))
    u16, s16 = jax.jit(tx_master.update)(g, s16, p16)
    p16 = optax.apply_updates(p16, u16)
    u32, s32 = jax.jit(tx_f32.update)(jax.tree.map(lambda x: x.astype(jnp.float32), g), s32, p)
    p = optax.apply_updates(p, u32)
    # the masters follow the float32 run; the bf16 params are the rounded masters
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7), s16.master, p)
    jax.tree.map(
      lambda q, m: np.testing.assert_array_equal(q, m.astype(jnp.bfloat16)), p16, s16.master
    )


def test_master_weights_state_memory():
  p = {"a": jnp.ones((100,), jnp.bfloat16), "b": jnp.ones((50,), jnp.float32)}
  state = lamb_optax.lamb(1e-3, master_weights=True).init(p)
  assert state.master["a"].shape == (100,) and state.master["a"].dtype == jnp.float32
  assert state.master["b"].shape == ()  # no copy for float32 leaves


# --- non-finite gradients -----------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_apply_if_finite_skips_bad_steps_bit_identically(bad):
  params = _problem()
  tx = optax.apply_if_finite(lamb_optax.lamb(1e-2, weight_decay=0.01), max_consecutive_errors=5)
  state = tx.init(params)
  u, state = tx.update(_grads(params, 0), state, params)
  params = optax.apply_updates(params, u)
  g = _grads(params, 1)
  g["dense"]["kernel"] = g["dense"]["kernel"].at[0, 0].set(bad)
  u, new_state = jax.jit(tx.update)(g, state, params)
  new_params = optax.apply_updates(params, u)
  jax.tree.map(np.testing.assert_array_equal, new_params, params)
  jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1 and int(new_state.total_notfinite) == 1


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-20, 1.0, 1e10, 1e18])
@pytest.mark.parametrize("what", ["params", "grads", "both"])
@pytest.mark.parametrize("engine", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_finite_extreme_values_give_finite_updates(scale, what, engine):
  params = _problem()
  grads = _grads(params, 0)
  if what in ("params", "both"):
    params = jax.tree.map(lambda x: x * scale + (scale if scale else 0.0), params)
  if what in ("grads", "both"):
    grads = jax.tree.map(lambda x: x * scale, grads)
  tx = lamb_optax.lamb(1e-3, weight_decay=0.01, **engine)
  state = tx.init(params)
  for _ in range(3):
    u, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, u)
    for leaf in jax.tree.leaves((u, params, state)):
      assert np.all(np.isfinite(np.asarray(leaf, np.float64))), leaf


# 2**17 elements: the CPU policy sums plainly first and must notice the overflow or
# underflow (the fallback to the safe sums); 1000 and 16 take the safe sums directly.
def _seq_rtol(engine, n, rtol):
  """The GPU policy sums a large leaf in one sequential run on XLA:CPU (GPUs sum in a tree)."""
  return 1e-3 if engine.get("policy") is GPU_POLICY and n >= 2**16 else rtol


@every
@pytest.mark.parametrize("n", [1000, 2**17])
def test_huge_params_keep_the_lamb_invariant(n, engine):
  """||w|| ~ 1e19 overflows a float32 sum of squares; the ratio is still right."""
  w = {"w": jnp.full((n,), 1e18, jnp.float32)}
  g = {"w": jnp.ones(n, jnp.float32)}
  tx = lamb_optax.lamb(1e-3, mask=None, **engine)
  u, _ = jax.jit(tx.update)(g, tx.init(w), w)
  expected = 1e-3 * 1e18 * np.sqrt(n)
  norm = np.linalg.norm(np.asarray(u["w"], np.float64))
  np.testing.assert_allclose(norm, expected, rtol=_seq_rtol(engine, n, 1e-5))


@every
@pytest.mark.parametrize("n", [16, 2**17])
def test_tiny_updates_get_their_true_ratio(n, engine):
  """Elements around 1e-24 vanish in a float32 sum of squares; the safe sums keep them."""
  w = {"w": jnp.full((n,), 1.0, jnp.float32)}
  g = {"w": jnp.full((n,), 1e-30, jnp.float32)}  # u = m_hat / eps ~ 1e-24
  tx = lamb_optax.lamb(1e-3, mask=None, **engine)
  u, state = jax.jit(tx.update)(g, tx.init(w), w)
  expected = 1e-3 * np.sqrt(n)
  norm = np.linalg.norm(np.asarray(u["w"], np.float64))
  np.testing.assert_allclose(norm, expected, rtol=_seq_rtol(engine, n, 1e-4))
  assert float(lamb_optax.trust_ratios(state)["w"]) > 1e20


@every
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_one_element_leaf_with_tiny_values(shape, engine):
  """Jitted, XLA turned a one-element (w * 2**64)**2 into w**2 * 2**128 = inf."""
  w0, g0, eps = 5.16e-10, -1.32e-11, 1e-4
  w = {"w": jnp.full(shape, w0, jnp.float32)}
  g = {"w": jnp.full(shape, g0, jnp.float32)}
  tx = lamb_optax.lamb(1e-3, eps=eps, weight_decay=0.0, **engine)
  u, state = jax.jit(tx.update)(g, tx.init(w), w)
  # Step 1: m_hat = g, v_hat = g**2, so u = g / (|g| + eps).
  u0 = np.float64(g0) / (abs(g0) + eps)
  ratio = abs(w0) / abs(u0)
  np.testing.assert_allclose(float(lamb_optax.trust_ratios(state)["w"]), ratio, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(u["w"], np.float64), -1e-3 * ratio * u0, rtol=1e-5)


# --- checkpoint and resume ----------------------------------------------------


def _optimizers(**engine):
  return {
    "plain": lambda: lamb_optax.lamb(1e-2, weight_decay=0.01, **engine),
    "grouped": lambda: lamb_optax.lamb(
      [0.02, 0.01],
      groups=[
        {"params": "conv", "weight_decay": 0.01, "grad_centralization": True},
        {"params": "^(dense|norm)", "lr": optax.cosine_decay_schedule(0.01, 10)},
      ],
      **engine,
    ),
    "master_weights": lambda: lamb_optax.lamb(
      1e-2, weight_decay=0.01, master_weights=True, **engine
    ),
    "apply_if_finite": lambda: optax.apply_if_finite(lamb_optax.lamb(1e-2, **engine), 3),
  }


@pytest.mark.parametrize("name", list(_optimizers()))
@every
def test_checkpoint_resume_is_bit_identical(name, engine, tmp_path):
  dtype = jnp.bfloat16 if name == "master_weights" else jnp.float32
  make = _optimizers(**engine)[name]

  def run(params, state, tx, steps):
    step = jax.jit(tx.update)
    for t in steps:
      g = _grads(params, t)
      if name == "apply_if_finite" and t == 3:
        g["dense"]["bias"] = g["dense"]["bias"].at[0].set(jnp.nan)
      u, state = step(g, state, params)
      params = optax.apply_updates(params, u)
    return params, state

  tx = make()
  params0 = _problem(dtype)
  full_p, full_s = run(params0, tx.init(params0), tx, range(8))

  mid_p, mid_s = run(params0, tx.init(params0), tx, range(4))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", {"params": mid_p, "opt_state": mid_s})
    ckptr.wait_until_finished()
  tx2 = make()  # a fresh process would rebuild the optimizer
  target = {
    "params": jax.eval_shape(lambda: params0),
    "opt_state": jax.eval_shape(tx2.init, params0),
  }
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(tmp_path / "ckpt", target)
  res_p, res_s = run(restored["params"], restored["opt_state"], tx2, range(4, 8))
  jax.tree.map(np.testing.assert_array_equal, res_p, full_p)
  jax.tree.map(np.testing.assert_array_equal, res_s, full_s)


@pytest.mark.parametrize("name", list(_optimizers()))
@pytest.mark.parametrize("layout", ["auto", "packed"])
def test_a_checkpoint_restores_under_another_platform_policy(name, layout, tmp_path):
  """The state does not depend on the platform: a state written by the accelerator lowering
  restores into the CPU lowering of the same lamb(...) call (policies forced here, as no GPU
  runs in CI) and continues; and the CPU run's own checkpoint continues bit-identically."""
  dtype = jnp.bfloat16 if name == "master_weights" else jnp.float32
  gpu = _optimizers(layout=layout, policy=GPU_POLICY)[name]()
  cpu = _optimizers(layout=layout)[name]()
  params = _problem(dtype)
  state = gpu.init(params)
  for t in range(3):
    u, state = jax.jit(gpu.update)(_grads(params, t), state, params)
    params = optax.apply_updates(params, u)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    ckptr.wait_until_finished()
    target = {"params": params, "opt_state": jax.eval_shape(cpu.init, params)}
    restored = ckptr.restore(tmp_path / "ckpt", target)
  jax.tree.map(np.testing.assert_array_equal, restored["opt_state"], state)
  p_cpu, s_cpu = restored["params"], restored["opt_state"]
  p_gpu, s_gpu = params, state
  for t in range(3, 6):
    u, s_cpu = jax.jit(cpu.update)(_grads(p_cpu, t), s_cpu, p_cpu)
    p_cpu = optax.apply_updates(p_cpu, u)
    u, s_gpu = jax.jit(gpu.update)(_grads(p_gpu, t), s_gpu, p_gpu)
    p_gpu = optax.apply_updates(p_gpu, u)
  # The same math, summed in another order: within float32 rounding.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=1e-5, atol=1e-6),
    p_cpu,
    p_gpu,
  )


def test_runs_are_deterministic():
  outs = []
  for _ in range(2):
    params = _problem()
    tx = lamb_optax.lamb(1e-2, weight_decay=0.01)
    state = tx.init(params)
    for t in range(5):
      u, state = jax.jit(tx.update)(_grads(params, t), state, params)
      params = optax.apply_updates(params, u)
    outs.append(params)
  jax.tree.map(np.testing.assert_array_equal, *outs)


# --- bad input ----------------------------------------------------------------


def test_gradient_with_missing_leaf():
  params = _problem()
  tx = lamb_optax.lamb(1e-2)
  g = _grads(params, 0)
  g["dense"]["bias"] = None
  with pytest.raises(ValueError, match="same tree structure"):
    tx.update(g, tx.init(params), params)


def test_gradient_of_wrong_shape_names_the_leaf():
  params = _problem()
  tx = lamb_optax.lamb(1e-2)
  g = _grads(params, 0)
  g["conv"]["kernel"] = jnp.ones((3, 3, 2, 5))
  with pytest.raises(ValueError, match=r"'conv/kernel' has shape \(3, 3, 2, 5\)"):
    tx.update(g, tx.init(params), params)


@pytest.mark.parametrize("empty", [{}, [], {"a": {}}, None])
def test_empty_params(empty):
  with pytest.raises(ValueError, match="no array leaves"):
    lamb_optax.lamb(1e-2).init(empty)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_non_float_params(dtype):
  with pytest.raises(TypeError, match="'w'.*floating or complex"):
    lamb_optax.lamb(1e-2).init({"w": jnp.ones(3, dtype)})


def test_integer_gradients():
  params = {"w": jnp.ones(3)}
  tx = lamb_optax.lamb(1e-2)
  with pytest.raises(TypeError, match="`updates` leaf 'w'"):
    tx.update({"w": jnp.ones(3, jnp.int32)}, tx.init(params), params)


def test_weight_decay_schedule_returning_an_array():
  params = {"w": jnp.ones(3)}
  tx = lamb_optax.lamb(1e-2, weight_decay=lambda c: jnp.ones(2))
  with pytest.raises(ValueError, match="scalar"):
    tx.update(params, tx.init(params), params)


def test_trust_ratio_mask_of_wrong_structure_fails_at_init():
  with pytest.raises(ValueError, match="trust_ratio_mask.* must have the structure"):
    lamb_optax.lamb(1e-2, trust_ratio_mask={"x": True}).init(_problem())


# --- the whole range of every float dtype ---------------------------------------


def _norm(x):
  """A float64 norm that neither overflows nor underflows (np.linalg.norm does, at 1e-200)."""
  top = np.abs(x).max()
  return top * np.sqrt(np.sum((x / top) ** 2)) if top else 0.0


def _first_step(w, g, lr, eps=1e-6):
  """NumPy (float64) of lamb's first step without decay: u = g / (|g| + eps), r = |w|/|u|."""
  w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
  u = g / (np.abs(g) + eps)
  r = _norm(w) / _norm(u)
  return -lr * r * u, r


@every
@pytest.mark.parametrize(
  "dtype, value, n",
  [
    ("float32", 2e37, 1000),  # ||w|| = 6.3e38 is beyond float32's range
    ("float32", 3e38, 2**17),  # the largest float32 values, a leaf the CPU sums plainly
    ("float32", 1e-19, 1000),  # squares below float32's smallest normal
    ("float64", 1e200, 100),
    ("float64", 1e160, 100),  # the ratio, 1e160, is beyond float32's range
    ("float64", 1e-200, 100),
  ],
)
def test_norms_over_the_whole_range_of_the_dtype(dtype, value, n, engine):
  """Finite input gives finite updates and the right ratio, for float32 and float64."""
  with jax.enable_x64(dtype == "float64"):
    w = {"w": jnp.full((n,), value, dtype)}
    g = {"w": jnp.asarray(np.linspace(0.5, 1.5, n), dtype)}
    lr = 1e-6
    tx = lamb_optax.lamb(lr, mask=None, **engine)
    u, state = jax.jit(tx.update)(g, tx.init(w), w)
    expected_u, expected_r = _first_step(w["w"], g["w"], lr)
    assert np.all(np.isfinite(np.asarray(u["w"], np.float64)))
    ratio = lamb_optax.trust_ratios(state)["w"]
    assert ratio.dtype == jnp.dtype(dtype)  # float64 parameters keep float64 ratios
    # The GPU policy sums the 2**17 leaf in one sequential run on XLA:CPU (GPUs sum in a tree).
    rtol = _seq_rtol(engine, n, 1e-5)
    np.testing.assert_allclose(float(ratio), expected_r, rtol=rtol)
    np.testing.assert_allclose(np.asarray(u["w"], np.float64), expected_u, rtol=rtol)


@every
@pytest.mark.parametrize("spike", [1e20, 1e30, 3e38])
def test_a_finite_gradient_never_poisons_the_state(spike, engine):
  """|g| = 1e20 once: (1 - b2) g^2 = 1e37 is a float32, and is stored as such. Above 5.8e20 it
  is not: v saturates at float32's largest value. Either way the state stays finite and later
  steps move the element again, as v decays (optax.lamb stores v = inf: that element's
  update is 0 from then on)."""
  w = {"w": jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32)}
  tx = lamb_optax.lamb(1e-2, **engine)
  state = tx.init(w)
  g = {"w": jnp.full(16, 0.1, jnp.float32).at[3].set(spike)}
  u, state = jax.jit(tx.update)(g, state, w)
  adam = state if isinstance(state, lamb_optax.LambState) else state[1]
  nu = adam.nu.as_tree()["w"] if isinstance(state, lamb_optax.LambState) else adam.nu["w"]
  assert np.all(np.isfinite(np.asarray(nu)))
  if spike == 1e20:
    np.testing.assert_allclose(float(nu[3]), float(1 - np.float32(0.999)) * 1e40, rtol=1e-5)
  else:
    assert float(nu[3]) == float(jnp.finfo(jnp.float32).max)
  for leaf in jax.tree.leaves((u, state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  for _ in range(3):
    u, state = jax.jit(tx.update)({"w": jnp.full(16, 0.1, jnp.float32)}, state, w)
  assert float(u["w"][3]) != 0.0 and np.isfinite(float(u["w"][3]))


@pytest.mark.parametrize(
  "bad, message",
  [
    ({"b2": 1.0}, r"`b2` must be in the open interval \(0, 1\), got 1.0"),
    ({"b1": float("nan")}, "`b1` must be a real number, got NaN"),
    ({"learning_rate": -1.0}, "`learning_rate` must be >= 0, got -1.0"),
    ({"eps": 0.0}, "`eps` must be > 0 and finite, got 0.0"),
    ({"weight_decay": -1.0}, "`weight_decay` must be >= 0, got -1.0"),
  ],
)
@every
def test_checks_run_when_hyperparameters_are_traced(bad, message, engine):
  """optax.inject_hyperparams hands lamb traced values inside a jitted init: the checks run
  when that init runs. lamb_optax.inject_hyperparams checks them when it is built."""
  kwargs = {"learning_rate": 0.1, **bad}
  static = ("layout", "policy", "fused")
  tx = optax.inject_hyperparams(lamb_optax.lamb, static_args=static)(**kwargs, **engine)
  params = {"w": jnp.ones(3)}
  with pytest.raises(Exception, match=message):
    jax.block_until_ready(jax.jit(tx.init)(params))
  with pytest.raises(ValueError, match=message):
    lamb_optax.inject_hyperparams()(**kwargs, **engine)


@pytest.mark.parametrize(
  "bad, name",
  [
    ({"learning_rate": np.inf}, "learning_rate"),
    ({"learning_rate": [0.1, np.inf]}, "learning_rate"),
    ({"weight_decay": np.inf}, "weight_decay"),
    ({"eps": np.inf}, "eps"),
    ({"eps_root": np.inf}, "eps_root"),
    ({"min_trust_ratio": np.inf}, "min_trust_ratio"),
    ({"groups": [{"params": ".", "lr": np.inf}]}, r"groups\[0\]\['lr'\]"),
  ],
)
def test_infinite_hyperparameters_are_rejected(bad, name):
  kwargs = {"learning_rate": 0.1, **bad}
  with pytest.raises(ValueError, match=f"`{name}` must (be|hold) (> 0 and )?finite"):
    lamb_optax.lamb(**kwargs)


@every
def test_an_infinite_max_trust_ratio_means_no_upper_bound(engine):
  params = {"w": jnp.asarray(np.linspace(1, 2, 8), jnp.float32)}
  g = {"w": jnp.asarray(np.linspace(-1e-3, 1e-3, 8), jnp.float32)}
  bounded = lamb_optax.lamb(0.1, max_trust_ratio=np.inf, min_trust_ratio=0.0, **engine)
  free = lamb_optax.lamb(0.1, **engine)
  u1, _ = bounded.update(g, bounded.init(params), params)
  u2, _ = free.update(g, free.init(params), params)
  np.testing.assert_array_equal(u1["w"], u2["w"])


@every
def test_float64_parameters_keep_float64_hyperparameters(engine):
  """0.1 in float32 is 0.1 + 1.5e-9: a float64 step must not see that rounding."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    w = {"w": jnp.asarray(rng.normal(size=(8, 3)))}
    g = {"w": jnp.asarray(rng.normal(size=(8, 3)))}
    tx = lamb_optax.lamb(0.1, weight_decay=0.3, mask=None, **engine)
    u, _ = jax.jit(tx.update)(g, tx.init(w), w)
    w64, g64 = np.asarray(w["w"]), np.asarray(g["w"])
    d = g64 / (np.abs(g64) + 1e-6) + 0.3 * w64
    expected = -0.1 * np.linalg.norm(w64) / np.linalg.norm(d) * d
    np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-12)


@every
def test_complex_gradients_for_real_parameters_are_rejected(engine):
  params = _problem()
  g = _grads(params, 0)
  g["dense"]["kernel"] = g["dense"]["kernel"].astype(jnp.complex64)
  tx = lamb_optax.lamb(1e-2, **engine)
  match = "'dense/kernel' is complex64 but the parameter is (float32|real)"
  with pytest.raises(TypeError, match=match):
    tx.update(g, tx.init(params), params)


@every
@pytest.mark.parametrize("state", ["None", "adam", "dict"])
def test_a_foreign_state_is_named(state, engine):
  params = _problem()
  tx = lamb_optax.lamb(1e-2, **engine)
  bad = {"None": None, "adam": optax.adam(0.1).init(params), "dict": {"count": 0}}[state]
  with pytest.raises(TypeError, match="`state` (must be|is not) the state"):
    tx.update(_grads(params, 0), bad, params)


@pytest.mark.parametrize("returned", ["0.1", None, True, 1j])
@every
def test_a_schedule_that_returns_no_number_is_named(returned, engine):
  params = {"w": jnp.ones(3)}
  for kwargs, name in (
    ({"learning_rate": lambda c: returned}, "learning_rate"),
    ({"learning_rate": 0.1, "weight_decay": lambda c: returned}, "weight_decay"),
  ):
    tx = lamb_optax.lamb(**kwargs, **engine)
    with pytest.raises(TypeError, match=f"`{name}` must give a real number"):
      tx.update(params, tx.init(params), params)


def test_helper_arguments_are_named():
  params = {"w": jnp.ones(4)}
  tx = lamb_optax.lamb(0.1)
  with pytest.raises(ValueError, match="`shardings` must have the structure of `params`"):
    lamb_optax.state_shardings(tx, params, {"v": params["w"].sharding})
  with pytest.raises(TypeError, match="`shardings` leaf 'w' must be a jax.sharding.Sharding"):
    lamb_optax.state_shardings(tx, params, {"w": "replicated"})
  with pytest.raises(ValueError, match="`pattern` '\\(' is not a valid regular expression"):
    lamb_optax.layer_axes_from_regex("(")
  with pytest.raises(TypeError, match="`static_args` must be a str or an iterable"):
    lamb_optax.inject_hyperparams(static_args=5)
  with pytest.raises(TypeError, match="`static_args` must hold argument names"):
    lamb_optax.inject_hyperparams(static_args=[1])
