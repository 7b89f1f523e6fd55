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
  adam = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, lamb_optax.ScaleByAdamState))
  adam = [s for s in adam if isinstance(s, lamb_optax.ScaleByAdamState)]
  assert adam
  for a in adam:  # every m and v leaf is sharded exactly like its parameter
    for moments in (a.mu, a.nu):
      flat_m = lamb_optax.masks.named_leaves(moments)
      flat_p = dict(lamb_optax.masks.named_leaves(sharded))
      for path, m in flat_m:
        assert m.sharding.is_equivalent_to(flat_p[path].sharding, m.ndim), path
        assert not m.sharding.is_fully_replicated or flat_p[path].sharding.is_fully_replicated

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
  r_sh, r_1 = lamb_optax.trust_ratios(state), lamb_optax.trust_ratios(single_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), r_sh, r_1)


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


@pytest.mark.parametrize("mode", [True, "all"])
@pytest.mark.parametrize("kind", ["fsdp", "fsdp_tp"])
def test_multi_tensor_under_sharded_params_is_correct_but_not_sharded(kind, mode):
  """multi_tensor=True is for one device or data parallelism: under FSDP it still computes
  the same update (XLA gathers the leaves into the flat buffers), but its state is not
  sharded like the params. The default keeps it sharded (test above)."""
  mesh, specs = _layout(kind)
  layer_axes = lamb_optax.layer_axes_from_regex("^blocks/")
  tx = lamb_optax.lamb(0.05, groups=GROUPS, layer_axes=layer_axes, multi_tensor=mode)
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
