"""`lamb` against the peers of the migration guides (`docs/migrating_from_*.md`) that run here.

`optax.lamb` is installed with the package, so the README's and `docs/migrating_from_optax.md`'s
claim is checked against it directly: `lamb(..., mask=None)` gives `optax.lamb`'s updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engines import EVERY

import lamb_optax

every = pytest.mark.parametrize("engine", list(EVERY.values()), ids=list(EVERY))


def _tree():
  """Flax-style names, with a module whose name contains "gamma" (where the masks differ)."""
  rng = np.random.default_rng(0)
  tree = {
    "gamma_net": {"Dense_0": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=5)}},
    "LayerNorm_0": {"scale": 1 + 0.1 * rng.normal(size=5), "bias": 0.1 * rng.normal(size=5)},
    "Conv_0": {"kernel": rng.normal(size=(3, 3, 2, 4))},
    "zero_init": np.zeros((4, 3)),
  }
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _grads(step, params):
  rng = np.random.default_rng(100 + step)
  if step == 4:  # a zero-gradient step
    return jax.tree.map(jnp.zeros_like, params)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def _assert_same_update(ours, theirs, msg):
  """Equal to float32 rounding: elementwise, relative to the leaf's largest entry."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  scale = float(np.max(np.abs(theirs), initial=0.0))
  np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5 * scale + 1e-12, err_msg=msg)


@every
def test_mask_none_gives_optax_lamb_updates_for_20_jitted_steps(engine):
  lr = optax.linear_schedule(2e-2, 5e-3, 20)
  ours = lamb_optax.lamb(lr, weight_decay=0.05, mask=None, **engine)
  theirs = optax.lamb(lr, weight_decay=0.05)  # optax's default mask: decay every leaf
  params = _tree()
  p1, s1, step1 = params, ours.init(params), jax.jit(ours.update)
  p2, s2, step2 = params, theirs.init(params), jax.jit(theirs.update)
  for t in range(20):
    g = _grads(t, params)
    u1, s1 = step1(g, s1, p1)
    u2, s2 = step2(g, s2, p2)
    flat1, flat2 = lamb_optax.masks.named_leaves(u1), lamb_optax.masks.named_leaves(u2)
    for (path, a), (_, b) in zip(flat1, flat2, strict=True):
      _assert_same_update(a, b, f"{path} @ step {t}")
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p2)


def test_default_mask_is_what_the_readme_says():
  """`mask="mindspore"` skips any path with "gamma"/"beta" and decays Flax's scale and bias."""
  assert lamb_optax.masks.mindspore(_tree()) == {
    "gamma_net": {"Dense_0": {"kernel": False, "bias": False}},
    "LayerNorm_0": {"scale": True, "bias": True},
    "Conv_0": {"kernel": True},
    "zero_init": True,
  }


def test_default_differs_from_optax_lamb_only_where_the_masks_differ():
  params, g = _tree(), _grads(0, _tree())
  ours, theirs = lamb_optax.lamb(1e-2, weight_decay=0.05), optax.lamb(1e-2, weight_decay=0.05)
  u1, _ = ours.update(g, ours.init(params), params)
  u2, _ = theirs.update(g, theirs.init(params), params)
  for (path, a), (_, b) in zip(
    lamb_optax.masks.named_leaves(u1), lamb_optax.masks.named_leaves(u2), strict=True
  ):
    if path.startswith("gamma_net/"):
      assert not np.allclose(a, b, rtol=1e-3), path  # not decayed here, decayed by optax
    else:
      _assert_same_update(a, b, path)
