"""The storage layout: which leaves are packed, what the state holds, and that every layout
computes the same step."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engines import ENGINES, LAYOUTS
from _reference import NumpyLamb
from test_engine import CONFIGS as ENGINE_CONFIGS
from test_engine import _tree as engine_tree

import lamb_optax
from lamb_optax._src import layout as layout_lib

CONFIGS = {**ENGINE_CONFIGS, "no_decay": dict(learning_rate=0.05)}
engines = pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
layouts = pytest.mark.parametrize("engine", list(LAYOUTS.values()), ids=list(LAYOUTS))


def _tree(many=70):
  """test_engine's tree plus a scalar and more leaves than one bucket holds."""
  rng = np.random.default_rng(0)
  t = engine_tree()
  t["scalar"] = jnp.float32(2.0)
  t["many"] = [jnp.asarray(rng.normal(size=(7,)), jnp.float32) for _ in range(many)]
  return t


def _run(tx, params, steps=5, seed=1):
  rng = np.random.default_rng(seed)
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for _ in range(steps):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append((u, lamb_optax.trust_ratios(state)))
  return params, state, out


def _blocks(state):
  return state.mu.layout.blocks


# --- the rule -------------------------------------------------------------------


def test_auto_packs_small_leaves_only_when_there_are_many():
  few = {f"w{i:03d}": jnp.ones((8, 8)) for i in range(layout_lib.PACK_MIN_LEAVES - 1)}
  few["big"] = jnp.ones((256, 256))
  state = lamb_optax.lamb(0.1).init(few)
  assert all(b.solo for b in _blocks(state))  # few small leaves: every leaf its own arrays

  many = {f"w{i:03d}": jnp.ones((8, 8)) for i in range(layout_lib.PACK_MIN_LEAVES)}
  many["big"] = jnp.ones((256, 256))
  state = lamb_optax.lamb(0.1).init(many)
  solo = [b for b in _blocks(state) if b.solo]
  assert [b.members for b in solo] == [(sorted(many).index("big"),)]  # 2**16 elements: solo
  packed = [b for b in _blocks(state) if not b.solo]
  assert sum(len(b.members) for b in packed) == layout_lib.PACK_MIN_LEAVES
  assert len(packed) == -(-layout_lib.PACK_MIN_LEAVES // layout_lib.BUCKET_LEAVES)


def test_per_leaf_and_packed_overrides():
  params = {f"w{i:03d}": jnp.ones((8, 8)) for i in range(300)}
  params["big"] = jnp.ones((256, 256))
  per_leaf = lamb_optax.lamb(0.1, layout="per_leaf").init(params)
  assert all(b.solo for b in _blocks(per_leaf)) and len(_blocks(per_leaf)) == 301
  packed = lamb_optax.lamb(0.1, layout="packed").init(params)
  assert not any(b.solo for b in _blocks(packed))
  few = {"w": jnp.ones((8, 8)), "b": jnp.ones(8), "big": jnp.ones((256, 256))}
  small = lamb_optax.lamb(0.1, layout="pack_small").init(few)
  solo, *packed = _blocks(small)  # big alone; w and b packed (in two buckets: MIN_BUCKETS)
  assert solo.solo and solo.members == (1,)
  assert not any(b.solo for b in packed) and sorted(sum((b.members for b in packed), ())) == [0, 2]


def test_the_layout_depends_on_the_tree_alone():
  """Not on hyperparameter values, masks, the platform or a policy: one state everywhere
  (beside the per-group hyperparameters, one entry per group)."""
  params = _tree(many=300)
  states = [
    tx.init(params)
    for tx in (
      lamb_optax.lamb(0.1),
      lamb_optax.lamb(0.0, weight_decay=0.0, mask=None, trust_ratio_mask=lambda p: False),
      lamb_optax.lamb([0.1, 0.2], weight_decay=0.5, policy=lamb_optax.Policy.for_platform("gpu")),
      lamb_optax.lamb(0.1, groups=[{"params": "many"}, {"params": "^(?!many)", "lr": 0.3}]),
    )
  ]
  structures = {jax.tree.structure(s._replace(group_hyperparams=())) for s in states}
  assert len(structures) == 1
  assert [len(s.group_hyperparams) for s in states] == [1, 1, 1, 2]


# --- the same step on every layout --------------------------------------------------


@functools.cache
def _per_leaf_cpu_run(name):
  return _run(lamb_optax.lamb(**CONFIGS[name], layout="per_leaf"), _tree())


@pytest.mark.parametrize(
  "engine",
  [ENGINES[k] for k in ENGINES if k != "per_leaf"],
  ids=[k for k in ENGINES if k != "per_leaf"],
)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_layout_equals_the_per_leaf_cpu_step(name, engine):
  p_flat, _, flat = _run(lamb_optax.lamb(**CONFIGS[name], **engine), _tree())
  p_leaf, _, leaf = _per_leaf_cpu_run(name)
  for (u1, r1), (u2, r2) in zip(flat, leaf, strict=True):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), u1, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), r1, r2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p_flat, p_leaf)


@engines
def test_layer_axes_masks_and_clipping_match_numpy(engine):
  params = _tree(many=3)
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(params)}
  ref = NumpyLamb(
    flat,
    lr=dict.fromkeys(flat, lambda s: 0.05),
    wd=dict.fromkeys(flat, lambda s: 0.01),
    decay={k: not re.search("gamma|beta", k) for k in flat},
    trust={k: "bias" not in k for k in flat},
    min_ratio=0.5,
    max_ratio=4.0,
    layer_axes={k: int("stack" in k) for k in flat},
  )
  tx = lamb_optax.lamb(
    0.05,
    weight_decay=0.01,
    trust_ratio_mask=lamb_optax.masks.from_regex("bias", invert=True),
    min_trust_ratio=0.5,
    max_trust_ratio=4.0,
    layer_axes=lamb_optax.layer_axes_from_regex("^stack"),
    **engine,
  )
  state = tx.init(params)
  rng = np.random.default_rng(3)
  for _ in range(20):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    u, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, u)
    ref.update({jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(g)})
    ratios = lamb_optax.trust_ratios(state)
    for path, w in jax.tree.leaves_with_path(params):
      np.testing.assert_allclose(w, ref.w[jax.tree_util.keystr(path)], rtol=2e-5, atol=1e-6)
    for path, r in jax.tree.leaves_with_path(ratios):
      np.testing.assert_allclose(r, ref.ratios[jax.tree_util.keystr(path)], rtol=2e-5)


@layouts
def test_mixed_dtypes_keep_dtypes_and_match(engine):
  params = {
    "bf16": jnp.linspace(-1, 1, 96, dtype=jnp.bfloat16).reshape(8, 12),
    "f32": jnp.linspace(-2, 1, 40, dtype=jnp.float32),
    "c64": (jnp.linspace(-1, 1, 6) + 1j * jnp.linspace(2, 0, 6)).astype(jnp.complex64),
  }
  _, state, flat = _run(lamb_optax.lamb(0.01, weight_decay=0.1, **engine), params)
  # The chain rounds bf16 directions between blocks; the engine keeps them in float32.
  _, _, ref = _run(lamb_optax.lamb(0.01, weight_decay=0.1, fused=False), params)
  for (u1, _), (u2, _) in zip(flat, ref, strict=True):
    for k in params:
      assert u1[k].dtype == params[k].dtype
      np.testing.assert_allclose(
        np.asarray(u1[k], np.complex128), np.asarray(u2[k], np.complex128), rtol=2e-2, atol=1e-4
      )
  # bf16 moments are stored in float32, complex ones as complex64: one block per dtype.
  assert sorted(str(m.dtype) for m in state.mu.values) == ["complex64", "float32", "float32"]
  m = state.mu.as_tree()
  assert {k: str(v.dtype) for k, v in m.items()} == {
    "bf16": "float32",
    "c64": "complex64",
    "f32": "float32",
  }


# --- the state --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["auto", "per_leaf", "packed"])
def test_state_is_twice_the_params_plus_scalars(layout):
  """m and v: 2x the parameter bytes; packing pads each leaf to whole rows, at most 1/16 for
  leaves of 1024 elements and more; one count; one float32 ratio per leaf."""
  params = {f"w{i:03d}": jnp.ones((32, 32 + i % 5)) * (i + 1) for i in range(300)}
  tx = lamb_optax.lamb(1e-3, weight_decay=0.01, layout=layout)
  state = tx.init(params)
  param_bytes = sum(x.nbytes for x in params.values())
  moment_bytes = sum(x.nbytes for x in state.mu.values + state.nu.values)
  if layout == "per_leaf":
    assert moment_bytes == 2 * param_bytes
    assert len(state.mu.values) == 300
  else:  # auto packs them: 300 small leaves
    assert 2 * param_bytes <= moment_bytes <= 2 * param_bytes * 17 / 16
    assert len(state.mu.values) == -(-300 // layout_lib.BUCKET_LEAVES)
  assert sum(x.size for x in state.ratios.values) == 300
  assert int(optax.tree_utils.tree_get(state, "count")) == 0
  ratios = lamb_optax.trust_ratios(state)
  assert jax.tree.structure(ratios) == jax.tree.structure(params)
  assert all(float(r) == 1.0 for r in jax.tree.leaves(ratios))
  m = state.mu.as_tree()
  assert jax.tree.structure(m) == jax.tree.structure(params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(m))


def test_tiny_leaves_pad_to_two_elements():
  """The documented bound for leaves under 16 elements: each segment pads to whole rows of
  at least 2, so 300 scalars take 2 floats each per moment (4x the params in all)."""
  params = {f"s{i:03d}": jnp.float32(i) for i in range(300)}
  state = lamb_optax.lamb(0.1).init(params)
  assert sum(x.size for x in state.mu.values) == 600


def _distinct_computations(compiled_text: str) -> int:
  head = compiled_text[: compiled_text.index("ENTRY")]
  bodies = set()
  for comp in re.split(r"\n(?=%)", head):
    body = re.sub(r", metadata=\{[^}]*\}", "", comp.split("{", 1)[-1])
    bodies.add(re.sub(r"%[\w.\-]+", "%", body))
  return len(bodies)


def test_many_leaves_compile_to_few_distinct_kernels():
  """XLA compiles each distinct fused computation once. With 300 same-shape leaves the default
  (packed) step must stay at a handful, however many leaves: a kernel that slices the flat
  buffers per leaf (a distinct constant offset each) would push it over 300."""
  params = {f"w{i:03d}": jnp.ones((16, 16)) * (i + 1) for i in range(300)}
  tx = lamb_optax.lamb(1e-3, weight_decay=0.01)
  assert not any(b.solo for b in _blocks(tx.init(params)))

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  text = jax.jit(step).lower(params, tx.init(params), params).compile().as_text()
  assert _distinct_computations(text) < 60


@pytest.mark.parametrize("n,mixed", [(3, False), (40, False), (300, False), (60, True)])
def test_packed_temporaries_stay_under_the_params(n, mixed):
  """Buckets run one after the other (each waits for the one before to make its updates),
  so XLA applies each bucket's updates before it gathers the next: the temporaries are
  about 2x one bucket (at most a quarter of the packed leaves), not 2x all of them."""
  shapes = [(32, 32), (8, 64), (100,)] if mixed else [(32, 32)]
  params = {f"w{i:03d}": jnp.ones(shapes[i % len(shapes)]) * (i + 1) for i in range(n)}
  tx = lamb_optax.lamb(1e-3, weight_decay=0.01, layout="packed")

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  assert len(state.mu.values) >= min(n, layout_lib.MIN_BUCKETS)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
  param_bytes = sum(x.nbytes for x in params.values())
  bucket_bytes = max(x.nbytes for x in state.mu.values)
  # Measured on XLA:CPU: 1.07x (3 leaves, one per bucket: three bucket-sized buffers), 0.53x
  # (40), 0.43x (300), 0.90x (mixed); all buckets gathered at once, as before, took 1.8x to
  # 2.0x the parameters.
  bound = max(1.0 * param_bytes, 3.5 * bucket_bytes)
  assert compiled.memory_analysis().temp_size_in_bytes <= bound


@engines
def test_empty_leaf(engine):
  params = {"w": jnp.arange(1.0, 5.0), "empty": jnp.zeros((0, 3)), "s": jnp.float32(3.0)}
  tx = lamb_optax.lamb(0.1, layer_axes={"w": 0, "empty": 1, "s": 0}, **engine)
  state = tx.init(params)
  u, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  assert u["empty"].shape == (0, 3)
  ref = lamb_optax.lamb(0.1, fused=False)
  small = {"w": params["w"], "s": params["s"]}
  expected, _ = ref.update(jax.tree.map(jnp.ones_like, small), ref.init(small), small)
  np.testing.assert_allclose(u["w"], expected["w"], rtol=1e-6)
  np.testing.assert_allclose(u["s"], expected["s"], rtol=1e-6)
  assert lamb_optax.trust_ratios(state)["empty"].shape == (0,)


@engines
def test_large_leaves_keep_their_shape_unless_packed(engine):
  """Leaves of 2**16 elements and more keep their own arrays (and so their sharding) unless
  the layout is "packed"; every layout gives the per-leaf step."""
  rng = np.random.default_rng(5)
  params = {
    "big": jnp.asarray(rng.normal(size=(256, 300)), jnp.float32),
    "stack": jnp.asarray(rng.normal(size=(2, 256, 256)), jnp.float32),
    "bias": jnp.asarray(rng.normal(size=(300,)), jnp.float32),
    "LayerNorm": {"gamma": jnp.ones(256)},
  }
  options = dict(weight_decay=0.01, layer_axes={"big": 0, "stack": 1, "bias": 0, "LayerNorm": 0})
  p_flat, state, flat = _run(lamb_optax.lamb(0.01, **engine, **options), params, 3)
  p_leaf, _, leaf = _run(lamb_optax.lamb(0.01, **options), params, 3)
  for (u1, r1), (u2, r2) in zip(flat, leaf, strict=True):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), u1, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), r1, r2)
  # The GPU policy sums a large leaf in one sequential run on XLA:CPU (GPUs sum in a tree).
  atol = 1e-6 if engine.get("policy") is not None else 1e-7
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=atol), p_flat, p_leaf)
  assert lamb_optax.trust_ratios(state)["stack"].shape == (2,)
  shapes = sorted(m.shape for m in state.mu.values)
  if engine["layout"] == "per_leaf":
    assert shapes == sorted(x.shape for x in jax.tree.leaves(params))
  else:
    assert all(len(shape) == 2 for shape in shapes)  # no leaf keeps its own shape
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n <= sum(int(np.prod(shape)) for shape in shapes) <= 17 / 16 * n  # padding <= 1/16


@layouts
def test_state_is_a_fixed_carry_and_wraps_in_optax(engine):
  """lax.scan needs the state to keep one structure; MultiSteps and apply_if_finite wrap it."""
  params = _tree(many=3)
  rng = np.random.default_rng(7)
  grads = [
    jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    for _ in range(4)
  ]
  stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
  tx = lamb_optax.lamb(0.05, weight_decay=0.01, **engine)

  def body(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (p_scan, _), _ = jax.lax.scan(body, (params, tx.init(params)), stacked)
  p_loop, s_loop = params, tx.init(params)
  for g in grads:
    u, s_loop = jax.jit(tx.update)(g, s_loop, p_loop)
    p_loop = optax.apply_updates(p_loop, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p_scan, p_loop)

  for wrapped in (optax.MultiSteps(tx, every_k_schedule=2), optax.apply_if_finite(tx, 3)):
    p, s = params, wrapped.init(params)
    for g in grads[:2]:
      u, s = jax.jit(wrapped.update)(g, s, p)
      p = optax.apply_updates(p, u)
    ratios = lamb_optax.trust_ratios(s)
    assert jax.tree.structure(ratios) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(r)) for r in jax.tree.leaves(ratios))
  nan = jax.tree.map(lambda g: g * jnp.nan, grads[0])
  guarded = optax.apply_if_finite(tx, 3)
  s0 = guarded.init(params)
  u, s1 = guarded.update(nan, s0, params)
  assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(u))  # step skipped
  jax.tree.map(np.testing.assert_array_equal, s1.inner_state, s0.inner_state)
  assert int(s1.notfinite_count) == 1


# --- errors --------------------------------------------------------------------------


@engines
def test_a_state_made_for_other_parameters_is_rejected(engine):
  """Renamed keys with the same shapes would silently swap moments between leaves."""
  params = {"a": jnp.ones(4), "b": jnp.ones((2, 2)), "c": jnp.ones(3)}
  tx = lamb_optax.lamb(0.1, **engine)
  state = tx.init(params)
  renamed = {"a": jnp.ones(4), "b2": jnp.ones((2, 2)), "c": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"leaf 1 is 'b2' \(2, 2\) float32 where init saw 'b'"):
    tx.update(renamed, state, renamed)
  reshaped = {"a": jnp.ones(4), "b": jnp.ones(4), "c": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"leaf 1 is 'b' \(4,\) float32 where init saw 'b' \(2, 2\)"):
    tx.update(reshaped, state, reshaped)
  fewer = {"a": jnp.ones(4), "b": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="2 leaves where init saw 3"):
    tx.update(fewer, state, fewer)
  with pytest.raises(TypeError, match="a LambState.*got tuple"):
    tx.update(params, optax.adam(0.1).init(params), params)
  with pytest.raises(TypeError, match="restore it against `jax.eval_shape"):
    tx.update(params, {"count": 0, "mu": {}}, params)


def test_layout_argument_errors():
  with pytest.raises(
    ValueError, match=r"`layout` must be one of \['auto', 'per_leaf', 'pack_small'"
  ):
    lamb_optax.lamb(0.1, layout="flat")
  with pytest.raises(TypeError, match="`layout` must be a str, got bool True"):
    lamb_optax.lamb(0.1, layout=True)
  with pytest.raises(ValueError, match="configure the engine; `fused=False`"):
    lamb_optax.lamb(0.1, fused=False, layout="packed")
  with pytest.raises(ValueError, match="configure the engine; `fused=False`"):
    lamb_optax.lamb(0.1, fused=False, policy=lamb_optax.Policy())
  with pytest.raises(TypeError, match="floating"):
    lamb_optax.lamb(0.1, layout="packed").init({"w": jnp.ones(4, jnp.int32)})
