"""The peers' options: ``bias_correction``, ``grad_averaging``, ``decoupled_decay``,
``trust_ratio_mask="decay"`` and ``mu_dtype``, each against a NumPy port of timm's
``Lamb`` step (``timm/optim/lamb.py``, ``_single_tensor_lamb``) or against optax, on every
layout and the chain, with groups, ``inject_hyperparams`` and checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from _engines import EVERY, flat, run_against

import lamb_optax

every = pytest.mark.parametrize("engine", list(EVERY.values()), ids=list(EVERY))
STEPS = 20


def _tree():
  rng = np.random.default_rng(0)
  return {
    "encoder": {
      "dense": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=(5,)) * 0.1},
      "LayerNorm": {"gamma": 1 + 0.1 * rng.normal(size=(5,)), "beta": np.zeros(5)},
    },
    "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
    "head": {"kernel": rng.normal(size=(5, 3)), "bias": np.zeros(3)},
  }


def _grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: rng.normal(size=np.shape(p)), _tree())


class TimmLamb:
  """timm's ``Lamb`` step for one leaf at a time, in float64 (``max_grad_norm=None``).

  Per leaf: ``lr(step)``, ``wd(step)`` (0 where the leaf is not decayed) and ``adapt``
  (timm applies the trust ratio where ``weight_decay != 0 or always_adapt``).
  """

  def __init__(self, params, lr, wd, adapt, *, b1=0.9, b2=0.999, eps=1e-6, bias_correction=True,
               grad_averaging=True, decoupled_decay=False, mu_dtype=None):  # fmt: skip
    self.w = dict(params)
    self.m = {k: np.zeros_like(v) for k, v in params.items()}
    self.v = {k: np.zeros_like(v) for k, v in params.items()}
    self.lr, self.wd, self.adapt = lr, wd, adapt
    self.b1, self.b2, self.eps = b1, b2, eps
    self.bc, self.avg, self.decoupled, self.mu_dtype = (
      bias_correction, grad_averaging, decoupled_decay, mu_dtype
    )  # fmt: skip
    self.step = 0

  def update(self, grads):
    t = self.step + 1
    c1, c2 = (1 - self.b1**t, 1 - self.b2**t) if self.bc else (1.0, 1.0)
    beta3 = 1 - self.b1 if self.avg else 1.0
    for k, g in grads.items():
      lr, wd, w = self.lr[k](self.step), self.wd[k](self.step), self.w[k]
      m = self.b1 * self.m[k] + beta3 * g
      self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
      update = (m / c1) / (np.sqrt(self.v[k]) / c2**0.5 + self.eps)
      # as optax: the direction uses m before it is stored in mu_dtype
      self.m[k] = m if self.mu_dtype is None else m.astype(self.mu_dtype).astype(np.float64)
      if wd != 0:
        if self.decoupled:
          w = w - lr * wd * w
        else:
          update = update + wd * w
      if wd != 0 or self.adapt[k]:
        wn, un = np.linalg.norm(w), np.linalg.norm(update)
        update = update * (wn / un if wn > 0 and un > 0 else 1.0)
      self.w[k] = w - lr * update
    self.step += 1
    return self.w


def _run(tx, ref, steps=STEPS, rtol=2e-5, atol=1e-6):
  return run_against(tx, ref, _tree(), _grads, steps, rtol, atol)


def _ms(path):  # MindSpore's default decay rule, as lamb's mask="mindspore"
  return "beta" not in path and "gamma" not in path


def _const(x):
  return lambda step: x


OPTIONS = {
  "no_bias_correction": dict(bias_correction=False),
  "no_grad_averaging": dict(grad_averaging=False),
  "decoupled_decay": dict(decoupled_decay=True),
  "trust_where_decay": dict(trust_ratio_mask="decay"),
  "all": dict(
    bias_correction=False, grad_averaging=False, decoupled_decay=True, trust_ratio_mask="decay"
  ),
}


@pytest.mark.parametrize("name", list(OPTIONS))
@every
def test_option_matches_timm(name, engine):
  kw = OPTIONS[name]
  paths = flat(_tree())
  decay = {p: _ms(p) for p in paths}
  ref = TimmLamb(
    paths,
    lr=dict.fromkeys(paths, lambda s: 0.02 * (1 - s / 40)),
    wd={p: _const(0.1 if decay[p] else 0.0) for p in paths},
    # timm's always_adapt=True is lamb's default (the ratio everywhere); "decay": timm's default
    adapt={p: (decay[p] if kw.get("trust_ratio_mask") == "decay" else True) for p in paths},
    bias_correction=kw.get("bias_correction", True),
    grad_averaging=kw.get("grad_averaging", True),
    decoupled_decay=kw.get("decoupled_decay", False),
  )
  tx = lamb_optax.lamb(
    optax.linear_schedule(0.02, 0.0, 40), weight_decay=0.1, **kw, **engine
  )  # fmt: skip
  _run(tx, ref, **_tolerance(kw))


def _tolerance(kw):
  # Without grad averaging m sums the gradients (10x), and where no ratio rescales it the
  # steps are ~100x lamb's usual: float32 rounding at that scale.
  return dict(rtol=1e-4, atol=2e-5) if kw.get("grad_averaging") is False else {}


GROUPS = [
  {"params": "^(encoder|conv)", "lr": optax.linear_schedule(0.03, 0.01, 20), "weight_decay": 0.2},
  {"params": "^head", "weight_decay": 0.0},
]


@every
def test_all_options_with_groups_match_timm_param_groups(engine):
  """timm's param groups: the ratio only in the group with weight decay (always_adapt=False)."""
  paths = flat(_tree())
  first = {p: p.startswith(("encoder", "conv")) for p in paths}
  ref = TimmLamb(
    paths,
    lr={p: (lambda s: 0.03 - 0.02 * min(s, 20) / 20) if first[p] else _const(0.01) for p in paths},
    wd={p: _const(0.2 if first[p] else 0.0) for p in paths},
    adapt=dict.fromkeys(paths, False),
    bias_correction=False,
    grad_averaging=False,
    decoupled_decay=True,
  )
  tx = lamb_optax.lamb(
    0.01, groups=GROUPS, **OPTIONS["all"], **engine
  )  # fmt: skip
  _, state = _run(tx, ref, **_tolerance(OPTIONS["all"]))
  if engine.get("fused", True):
    hyper = lamb_optax.group_hyperparams(state)
    np.testing.assert_allclose(float(hyper[0]["learning_rate"]), 0.01, rtol=1e-6)  # step 20
    np.testing.assert_allclose(float(hyper[0]["weight_decay"]), 0.2, rtol=1e-6)
    assert float(hyper[1]["learning_rate"]) == pytest.approx(0.01)
    assert float(hyper[1]["weight_decay"]) == 0.0


@every
def test_mu_dtype_stores_the_first_moment_only(engine):
  paths = flat(_tree())
  ref = TimmLamb(
    paths,
    lr=dict.fromkeys(paths, _const(0.02)),
    wd={p: _const(0.1 if _ms(p) else 0.0) for p in paths},
    adapt=dict.fromkeys(paths, True),
    mu_dtype=ml_dtypes.bfloat16,
  )
  tx = lamb_optax.lamb(0.02, weight_decay=0.1, mu_dtype=jnp.bfloat16, **engine)
  _, state = _run(tx, ref, rtol=1e-4, atol=1e-5)
  if isinstance(state, lamb_optax.LambState):
    mu, nu = state.mu.as_tree(), state.nu.as_tree()
  else:
    mu, nu = state[1].mu, state[1].nu
  assert {x.dtype for x in jax.tree.leaves(mu)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(nu)} == {jnp.dtype(jnp.float32)}


def test_scale_by_adam_mu_dtype_has_optax_meaning():
  """The same state dtypes as optax.scale_by_adam(mu_dtype=...) and the same updates to
  bfloat16 rounding (optax also forms b1 * m in bfloat16; here it is float32)."""
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree())
  ours, theirs = (
    lamb_optax.scale_by_adam(eps=1e-6, mu_dtype=jnp.bfloat16),
    optax.scale_by_adam(eps=1e-6, mu_dtype=jnp.bfloat16),
  )
  s1, s2 = ours.init(params), theirs.init(params)
  for t in range(STEPS):
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _grads(t))
    u1, s1 = jax.jit(ours.update)(g, s1)
    u2, s2 = jax.jit(theirs.update)(g, s2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2), u1, u2)
    dtypes = lambda s: jax.tree.map(lambda x: x.dtype, (s.mu, s.nu))  # noqa: E731
    assert dtypes(s1) == dtypes(s2)


@pytest.mark.parametrize("engine", [EVERY["per_leaf"], EVERY["packed"]], ids=["per_leaf", "packed"])
def test_options_under_inject_hyperparams_and_a_checkpoint(engine, tmp_path):
  """Identical updates through lamb_optax.inject_hyperparams, and an orbax checkpoint that
  continues bit-identically."""
  ocp = pytest.importorskip("orbax.checkpoint")
  kw = dict(OPTIONS["all"], mu_dtype=jnp.bfloat16, groups=GROUPS, **engine)
  plain = lamb_optax.lamb(0.01, **kw)
  injected = lamb_optax.inject_hyperparams(lamb_optax.lamb)(learning_rate=0.01, **kw)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree())
  s1, s2 = plain.init(params), injected.init(params)
  p1 = p2 = params
  for t in range(5):
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _grads(t))
    u1, s1 = jax.jit(plain.update)(g, s1, p1)
    u2, s2 = jax.jit(injected.update)(g, s2, p2)
    jax.tree.map(np.testing.assert_array_equal, u1, u2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "state", s1)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(tmp_path / "state", jax.eval_shape(plain.init, params))
  g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _grads(9))
  a, _ = jax.jit(plain.update)(g, s1, p1)
  b, _ = jax.jit(plain.update)(g, restored, p1)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_option_errors_name_the_argument():
  for name in ("bias_correction", "grad_averaging", "decoupled_decay"):
    with pytest.raises(TypeError, match=f"`{name}` must be a bool, got int 1"):
      lamb_optax.lamb(0.1, **{name: 1})
  with pytest.raises(TypeError, match="mu_dtype"):
    lamb_optax.lamb(0.1, mu_dtype="int8")
  with pytest.raises(ValueError, match="trust_ratio_mask.*'decays'"):
    lamb_optax.lamb(0.1, trust_ratio_mask="decays")
