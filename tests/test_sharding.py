"""Sharded training on 8 fake CPU devices: exact, and state sharded like the params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lamb_optax

AUTO = jax.sharding.AxisType.Auto


def _mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(AUTO,) * len(shape))


def _tree():
  rng = np.random.default_rng(0)
  return {
    "encoder": {
      "embed": rng.normal(size=(512, 256)),  # 2**17: on CPU, quick_norms' cond under SPMD
      "kernel": rng.normal(size=(16, 8)),
      "bias": rng.normal(size=(8,)),
      "LayerNorm": {"gamma": 1 + 0.1 * rng.normal(size=(8,))},
    },
    "conv": {"kernel": rng.normal(size=(3, 3, 4, 8))},
    "blocks": {"kernel": rng.normal(size=(4, 16, 8))},  # 4 stacked layers
  }


FSDP_TP = {  # a 2-D mesh: fsdp x tensor parallel
  "encoder": {
    "embed": P("fsdp", "tp"),
    "kernel": P("fsdp", "tp"),
    "bias": P("tp"),
    "LayerNorm": {"gamma": P()},
  },
  "conv": {"kernel": P(None, None, None, "tp")},
  "blocks": {"kernel": P("fsdp", None, "tp")},  # the layer axis itself sharded
}
FSDP = {
  "encoder": {"embed": P("d"), "kernel": P("d"), "bias": P("d"), "LayerNorm": {"gamma": P("d")}},
  "conv": {"kernel": P(None, None, None, "d")},
  "blocks": {"kernel": P(None, "d")},
}

GROUPS = [
  {"params": "conv", "weight_decay": 0.01, "grad_centralization": True},
  {"params": "^(encoder|blocks)", "lr": optax.linear_schedule(0.05, 0.01, 5)},
]


def _optimizers():
  layer_axes = lamb_optax.layer_axes_from_regex("^blocks/")
  return {
    "plain": lambda: lamb_optax.lamb(0.05, weight_decay=0.01),
    "stacked": lambda: lamb_optax.lamb(0.05, weight_decay=0.01, layer_axes=layer_axes),
    "grouped": lambda: lamb_optax.lamb(0.05, groups=GROUPS, layer_axes=layer_axes),
    "peer_options": lambda: lamb_optax.lamb(
      0.05,
      groups=GROUPS,
      layer_axes=layer_axes,
      bias_correction=False,
      grad_averaging=False,
      decoupled_decay=True,
      trust_ratio_mask="decay",
      mu_dtype=jnp.bfloat16,
    ),
  }


def _layout(kind):
  if kind == "fsdp_tp":
    return _mesh((4, 2), ("fsdp", "tp")), FSDP_TP
  return _mesh((8,), ("d",)), FSDP


@pytest.mark.parametrize("kind", ["fsdp", "fsdp_tp"])
@pytest.mark.parametrize("name", list(_optimizers()))
def test_sharded_equals_single_device_and_state_follows_params(kind, name):
  mesh, specs = _layout(kind)
  tx = _optimizers()[name]()
  host = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree())
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  sharded = jax.device_put(host, shardings)

  state = jax.jit(tx.init)(sharded)
  assert all(b.solo for b in state.mu.layout.blocks)  # few small leaves: each its own arrays
  _assert_moments_sharded_like(state, sharded)

  helper = lamb_optax.state_shardings(tx, sharded)
  same = jax.tree.map(lambda s, leaf: s.is_equivalent_to(leaf.sharding, leaf.ndim), helper, state)
  assert all(jax.tree.leaves(same))

  single_state = tx.init(host)
  step = jax.jit(tx.update)
  rng = np.random.default_rng(1)
  p_sh, p_1 = sharded, host
  for _ in range(3):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), host)
    u_sh, state = step(jax.device_put(g, shardings), state, p_sh)
    u_1, single_state = step(g, single_state, p_1)
    p_sh, p_1 = optax.apply_updates(p_sh, u_sh), optax.apply_updates(p_1, u_1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u_sh, u_1)
  same = jax.tree.map(lambda a, b: a.sharding.is_equivalent_to(b.sharding, a.ndim), p_sh, sharded)
  assert all(jax.tree.leaves(same))
  _assert_moments_sharded_like(state, sharded)  # and after the steps
  r_sh, r_1 = lamb_optax.trust_ratios(state), lamb_optax.trust_ratios(single_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), r_sh, r_1)


def _assert_moments_sharded_like(state, params):
  """Every m and v block (each a leaf's own array) is sharded exactly like its parameter."""
  flat_p = jax.tree.leaves(params)
  for moments in (state.mu, state.nu):
    for block, m in zip(moments.layout.blocks, moments.values, strict=True):
      p = flat_p[block.members[0]]
      assert m.sharding.is_equivalent_to(p.sharding, m.ndim), block
      assert not m.sharding.is_fully_replicated or p.sharding.is_fully_replicated


@pytest.mark.parametrize("direction", ["8 devices to 1", "1 device to 8"])
@pytest.mark.parametrize("name", list(_optimizers()))
def test_a_checkpoint_restores_onto_another_device_count(name, direction, tmp_path):
  """The state does not depend on the device count: written by an FSDP run on 8 devices, it
  restores onto one device (and back), against the same lamb(...) call's eval_shape target,
  and continues as the run that never stopped (to rounding: sharded sums add in another
  order)."""
  mesh, specs = _layout("fsdp_tp")
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  host = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree())
  tx = _optimizers()[name]()
  write_sharded = direction == "8 devices to 1"
  params = jax.device_put(host, shardings) if write_sharded else host
  state = jax.jit(tx.init)(params)
  rng = np.random.default_rng(3)
  grads = [
    jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), host)
    for _ in range(5)
  ]
  step = jax.jit(tx.update)
  for g in grads[:2]:
    u, state = step(jax.device_put(g, shardings) if write_sharded else g, state, params)
    params = optax.apply_updates(params, u)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    ckptr.wait_until_finished()
    if write_sharded:  # restore onto one device
      target_p = jax.eval_shape(lambda: host)
      target_s = jax.eval_shape(tx.init, host)
    else:  # restore sharded over the mesh, as lamb_optax.state_shardings says
      target_p = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), host, shardings
      )
      target_s = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(tx.init, host),
        lamb_optax.state_shardings(tx, target_p),
      )
    restored = ckptr.restore(tmp_path / "ckpt", {"params": target_p, "opt_state": target_s})
  jax.tree.map(np.testing.assert_array_equal, restored["opt_state"], state)
  p2, s2 = restored["params"], restored["opt_state"]
  if not write_sharded:
    _assert_moments_sharded_like(s2, p2)
  for g in grads[2:]:
    u, s2 = step(jax.device_put(g, shardings) if not write_sharded else g, s2, p2)
    p2 = optax.apply_updates(p2, u)
    u, state = step(jax.device_put(g, shardings) if write_sharded else g, state, params)
    params = optax.apply_updates(params, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p2, params)
  assert int(optax.tree_utils.tree_get(s2, "count")) == 5


def test_sharded_state_checkpoints_with_orbax(tmp_path):
  mesh, specs = _layout("fsdp_tp")
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree()), shardings)
  tx = _optimizers()["grouped"]()
  state = jax.jit(tx.init)(params)
  _, state = jax.jit(tx.update)(params, state, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", state)
    ckptr.wait_until_finished()
    state_sh = lamb_optax.state_shardings(tx, params)
    target = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      jax.eval_shape(tx.init, params),
      state_sh,
    )
    restored = ckptr.restore(tmp_path / "ckpt", target)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  same = jax.tree.map(lambda a, b: a.sharding.is_equivalent_to(b.sharding, a.ndim), restored, state)
  assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("kind", ["fsdp", "fsdp_tp"])
def test_packed_layout_under_sharded_params_is_correct_but_not_sharded(kind):
  """Packed leaves are for one device or data parallelism: under FSDP the step is still the
  same (XLA gathers the leaves into the packed buffers), but their state is not sharded like
  them. The auto layout packs only trees of 256 small leaves and more; the tests above
  check that other trees keep every moment sharded like its parameter."""
  mesh, specs = _layout(kind)
  layer_axes = lamb_optax.layer_axes_from_regex("^blocks/")
  tx = lamb_optax.lamb(0.05, groups=GROUPS, layer_axes=layer_axes, layout="packed")
  host = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree())
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  sharded = jax.device_put(host, shardings)
  state, single_state = jax.jit(tx.init)(sharded), tx.init(host)
  helper = lamb_optax.state_shardings(tx, sharded)
  same = jax.tree.map(lambda s, leaf: s.is_equivalent_to(leaf.sharding, leaf.ndim), helper, state)
  assert all(jax.tree.leaves(same))
  rng = np.random.default_rng(2)
  p_sh, p_1 = sharded, host
  for _ in range(3):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), host)
    u_sh, state = jax.jit(tx.update)(jax.device_put(g, shardings), state, p_sh)
    u_1, single_state = jax.jit(tx.update)(g, single_state, p_1)
    p_sh, p_1 = optax.apply_updates(p_sh, u_sh), optax.apply_updates(p_1, u_1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u_sh, u_1)
  r_sh, r_1 = lamb_optax.trust_ratios(state), lamb_optax.trust_ratios(single_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), r_sh, r_1)
