"""`lamb` against a NumPy LAMB, against optax.lamb, and optax's optimizer battery."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engines import EVERY, flat, run_against
from _reference import NumpyLamb

import lamb_optax

every = pytest.mark.parametrize("engine", list(EVERY.values()), ids=list(EVERY))


def _tree():
  rng = np.random.default_rng(0)
  return {
    "encoder": {
      "dense": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=(5,)) * 0.1},
      "LayerNorm": {"gamma": 1 + 0.1 * rng.normal(size=(5,)), "beta": np.zeros(5)},
      "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
    },
    "zero_init": np.zeros((4, 3)),
    "scalar": np.array(0.7),
  }


def _grads(step, params):
  rng = np.random.default_rng(100 + step)
  if step == 4:  # a zero-gradient step
    return jax.tree.map(np.zeros_like, params)
  return jax.tree.map(lambda p: rng.normal(size=np.shape(p)), params)


def _run_both(tx, ref, steps=25):
  return run_against(tx, ref, _tree(), lambda t: _grads(t, _tree()), steps)


def _ms_decay(path):
  return "beta" not in path and "gamma" not in path


@pytest.mark.parametrize(
  "lr_arg,lr_ref",
  [
    (0.05, lambda s: 0.05),
    # a per-step list shorter than the run: the last value holds.
    ([0.05, 0.02, 0.04, 0.01, 0.03], lambda s: [0.05, 0.02, 0.04, 0.01, 0.03][min(s, 4)]),
    (
      optax.cosine_decay_schedule(0.05, 20),
      lambda s: 0.05 * 0.5 * (1 + np.cos(np.pi * min(s, 20) / 20)),
    ),
  ],
  ids=["fixed", "list", "schedule"],
)
@every
def test_matches_numpy_reference(lr_arg, lr_ref, engine):
  paths = flat(_tree())
  ref = NumpyLamb(
    flat(_tree()),
    lr=dict.fromkeys(paths, lr_ref),
    wd=dict.fromkeys(paths, lambda s: 0.01),
    decay={p: _ms_decay(p) for p in paths},
  )
  _run_both(lamb_optax.lamb(lr_arg, weight_decay=0.01, **engine), ref)


@every
def test_matches_numpy_reference_with_options(engine):
  """Weight-decay schedule, eps_root, clipping, trust-ratio mask, other betas."""
  paths = flat(_tree())
  ref = NumpyLamb(
    flat(_tree()),
    lr=dict.fromkeys(paths, lambda s: 0.02),
    wd=dict.fromkeys(paths, lambda s: 0.1 * 0.9**s),
    decay=dict.fromkeys(paths, True),
    b1=0.8,
    b2=0.99,
    eps=1e-4,
    eps_root=1e-8,
    trust={p: "bias" not in p for p in paths},
    min_ratio=0.5,
    max_ratio=2.0,
  )
  tx = lamb_optax.lamb(
    0.02,
    b1=0.8,
    b2=0.99,
    eps=1e-4,
    eps_root=1e-8,
    weight_decay=lambda c: 0.1 * 0.9**c,
    mask=None,
    trust_ratio_mask=lamb_optax.masks.from_regex("bias", invert=True),
    min_trust_ratio=0.5,
    max_trust_ratio=2.0,
    **engine,
  )
  _run_both(tx, ref)


@every
def test_equals_optax_lamb_step_for_step(engine):
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree())
  ours = lamb_optax.lamb(1e-2, weight_decay=0.05, **engine)
  theirs = optax.lamb(1e-2, weight_decay=0.05, mask=lamb_optax.masks.mindspore)
  p1, s1 = params, ours.init(params)
  p2, s2 = params, theirs.init(params)
  for t in range(20):
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _grads(t, _tree()))
    u1, s1 = jax.jit(ours.update)(g, s1, p1)
    u2, s2 = jax.jit(theirs.update)(g, s2, p2)
    # optax forms 1 - b2**t from a float32-rounded b2 (relative error ~1e-5 in
    # v_hat); lamb_optax forms it in double precision. Both are LAMB.
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
      np.testing.assert_allclose(a, b, rtol=5e-5, atol=1e-7)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  chex_close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  jax.tree.map(chex_close, p1, p2)


# ---------------------------------------------------------------------------
# optax's battery (optax/_src/alias_test.py), with lamb's settings there.
# ---------------------------------------------------------------------------


def _parabola(dtype):
  initial = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
  final = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
  if jnp.iscomplexobj(initial):
    final = final * (1 + 1j)

  def objective(p):
    d = p - final
    return jnp.sum(jnp.real(d * jnp.conj(d)))

  return initial, final, objective


def _rosenbrock(dtype):
  a, b = 1.0, 100.0
  if jnp.issubdtype(dtype, jnp.complexfloating):
    a = a * (1 + 1j)
  initial = jnp.array([0.0, 0.0], dtype=dtype)
  final = jnp.array([a, a**2], dtype=dtype)

  def abs_sq(x):
    return jnp.real(x * jnp.conj(x))

  def objective(p):
    return abs_sq(a - p[0]) + b * abs_sq(p[1] - p[0] ** 2)

  return initial, final, objective


@pytest.mark.parametrize("target", [_parabola, _rosenbrock], ids=["parabola", "rosenbrock"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=["f32", "c64"])
@every
def test_optimization(target, dtype, engine):
  tx = lamb_optax.lamb(learning_rate=1e-3, **engine)
  initial, final, objective = target(dtype)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.tree.map(jnp.conj, jax.grad(objective)(params))
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = initial, tx.init(initial)
  state = optax.tree.map_params(tx, lambda v: v, state)  # tree_map_params works
  for _ in range(10000):
    params, state = step(params, state)
  assert len(traces) == 1, "the second jitted call recompiled"
  np.testing.assert_allclose(params, final, rtol=3e-2, atol=3e-2)


@every
def test_accepts_extra_args(engine):
  tx = optax.with_extra_args_support(lamb_optax.lamb(1e-3, **engine))
  p = jnp.ones(3)
  u, _ = jax.jit(tx.update)(p, tx.init(p), p, unexpected_extra_arg=1)
  assert u.shape == (3,)


@pytest.mark.parametrize("init", ["jitted init", "eager init"])
@pytest.mark.parametrize("factory", ["optax", "lamb_optax"])
@every
def test_inject_hyperparams_gives_identical_updates(factory, init, engine):
  """Also with an eager init (concrete hyperparameters) and a jitted update (traced ones)."""
  kwargs = dict(learning_rate=1e-3, weight_decay=1e-2)
  opt = lamb_optax.lamb(**kwargs, **engine)
  if factory == "optax":
    static = ("layout", "policy", "fused")
    inj = optax.inject_hyperparams(lamb_optax.lamb, static_args=static)(**kwargs, **engine)
  else:
    inj = lamb_optax.inject_hyperparams()(**kwargs, **engine)
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
  init_fn = jax.jit(inj.init) if init == "jitted init" else inj.init
  u, s = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
  si = init_fn(params)
  for _ in range(2):
    ui, si = jax.jit(inj.update)(grads, si, params)
  u, s = jax.jit(opt.update)(grads, s, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ui, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), si.inner_state, s)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@every
def test_preserves_gradient_dtype(dtype, engine):
  tx = lamb_optax.lamb(1e-3, **engine)
  params = jnp.array([1.0, 2.0], dtype=dtype)
  grads = jax.grad(lambda x: jnp.sum(x**2))(params)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  assert updates.dtype == grads.dtype


@pytest.mark.parametrize(
  "dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64, jnp.complex128]
)
@every
def test_state_shape_dtype_stability_under_cond(dtype, engine):
  with jax.enable_x64(dtype in (jnp.float64, jnp.complex128)):
    tx = lamb_optax.lamb(1e-3, **engine)
    initial, _, objective = _parabola(dtype)

    @jax.jit
    def step(params, state):
      grads = jax.tree.map(jnp.conj, jax.grad(objective)(params))
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(
        cond, lambda: tx.update(grads, state, params), lambda: (params, state)
      )
      return optax.apply_updates(params, updates), state

    params, state = initial, tx.init(initial)
    for _ in range(2):
      params, new_state = step(params, state)
      assert params.dtype == initial.dtype
      assert jax.tree.structure(new_state) == jax.tree.structure(state)
      for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
      state = new_state


@every
def test_state_keeps_sharding_under_cond(engine):
  mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  params = {"w": jax.device_put(jnp.arange(16.0), sharding)}
  tx = lamb_optax.lamb(1e-2, **engine)
  state = jax.jit(tx.init)(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    return jax.lax.cond(cond, lambda: tx.update(grads, state, params), lambda: (params, state))

  _, new_state = step(params, state)
  if engine.get("layout") == "packed":  # a packed buffer is not shaped like the parameter
    same = jax.tree.map(lambda a, b: a.sharding == b.sharding, new_state, state)
    assert all(jax.tree.leaves(same))
    return
  adam = new_state if isinstance(new_state, lamb_optax.LambState) else new_state[1]
  for moment in (adam.mu, adam.nu):
    m = moment.as_tree()["w"] if isinstance(moment, lamb_optax.Moments) else moment["w"]
    assert m.sharding.is_equivalent_to(sharding, 1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@every
def test_inside_multi_steps(dtype, engine):
  opt = optax.MultiSteps(lamb_optax.lamb(1e-3, **engine), every_k_schedule=4)
  params = jnp.array([1.0, 2.0], dtype=dtype)
  grads = jax.grad(lambda x: jnp.sum(x**2))(params)
  state = jax.jit(opt.init)(params)
  updates, state = jax.jit(opt.update)(grads, state, params)
  np.testing.assert_array_equal(updates, jnp.zeros_like(grads))
  for _ in range(3):
    updates, state = jax.jit(opt.update)(grads, state, params)
  assert np.all(np.asarray(updates, np.float32) != 0)  # the 4th call applies


@every
def test_vmap_over_independent_parameter_sets(engine):
  tx = lamb_optax.lamb(0.1, weight_decay=0.01, **engine)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3, 2)), jnp.float32)}
  grads = {"w": jnp.asarray(rng.normal(size=(5, 3, 2)), jnp.float32)}
  states = jax.vmap(tx.init)(params)
  batched, _ = jax.jit(jax.vmap(tx.update))(grads, states, params)
  for i in range(5):
    p_i = {"w": params["w"][i]}
    u_i, _ = tx.update({"w": grads["w"][i]}, tx.init(p_i), p_i)
    np.testing.assert_allclose(batched["w"][i], u_i["w"], rtol=1e-6)
