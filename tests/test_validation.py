"""Every entry of the Raises list (docs/design.md, "Argument checking"), plus issue 2's cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamb_optax

P = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "ln": {"gamma": jnp.ones(3)}}


@pytest.mark.parametrize(
  "bad",
  ["0.1", None, {"lr": 0.1}, b"x", True, False, 1 + 2j, object()],
  ids=["str", "None", "dict", "bytes", "True", "False", "complex", "object"],
)
def test_learning_rate_type_error(bad):
  with pytest.raises(TypeError, match="learning_rate"):
    lamb_optax.lamb(bad)


@pytest.mark.parametrize("bad", [-0.1, -1, np.float32(-1e-3), jnp.asarray(-0.5)])
def test_learning_rate_negative_value_error(bad):
  with pytest.raises(ValueError, match="learning_rate.*>= 0"):
    lamb_optax.lamb(bad)


@pytest.mark.parametrize("bad", [float("nan"), [0.1, float("nan")], np.array([np.nan])])
def test_learning_rate_nan(bad):
  with pytest.raises(ValueError, match="learning_rate.*NaN"):
    lamb_optax.lamb(bad)


@pytest.mark.parametrize("bad", [np.ones((2, 2)), jnp.ones((2, 1)), [[0.1, 0.2]]])
def test_learning_rate_2d_value_error(bad):
  with pytest.raises(ValueError, match="learning_rate"):
    lamb_optax.lamb(bad)


def test_learning_rate_negative_list_entry():
  with pytest.raises(ValueError, match=r"learning_rate.*negative entries \[-0\.2\]"):
    lamb_optax.lamb([0.1, -0.2, 0.3])


def test_learning_rate_empty_list():
  with pytest.raises(ValueError, match="learning_rate.*empty"):
    lamb_optax.lamb([])


@pytest.mark.parametrize("bad", [[0.1, "x"], [0.1, True], (0.1, None)])
def test_learning_rate_list_of_non_numbers(bad):
  with pytest.raises(TypeError, match=r"learning_rate\[1\]"):
    lamb_optax.lamb(bad)


@pytest.mark.parametrize("name", ["b1", "b2", "eps", "weight_decay"])
@pytest.mark.parametrize(
  "bad", ["0.9", None, [0.9], 1j, jnp.ones(2)], ids=["str", "None", "list", "complex", "array"]
)
def test_hyperparameter_type_error(name, bad):
  with pytest.raises(TypeError, match=name):
    lamb_optax.lamb(0.1, **{name: bad})


@pytest.mark.parametrize("name", ["b1", "b2", "eps", "weight_decay", "eps_root"])
@pytest.mark.parametrize("bad", [True, False, np.bool_(True)])
def test_bool_is_not_a_number(name, bad):
  with pytest.raises(TypeError, match=f"`{name}` must be a real number, not a bool"):
    lamb_optax.lamb(0.1, **{name: bad})


@pytest.mark.parametrize("name", ["b1", "b2", "eps", "weight_decay", "eps_root"])
def test_nan_hyperparameter(name):
  with pytest.raises(ValueError, match=f"`{name}`.*NaN"):
    lamb_optax.lamb(0.1, **{name: float("nan")})


@pytest.mark.parametrize("bad", [0.0, -1e-8, jnp.float32(0.0)])
def test_eps_must_be_positive(bad):
  with pytest.raises(ValueError, match="`eps` must be > 0"):
    lamb_optax.lamb(0.1, eps=bad)


@pytest.mark.parametrize("name", ["b1", "b2"])
@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, jnp.asarray(1.0)])
def test_betas_in_open_unit_interval(name, bad):
  with pytest.raises(ValueError, match=f"`{name}` must be in the open interval"):
    lamb_optax.lamb(0.1, **{name: bad})


def test_negative_weight_decay():
  with pytest.raises(ValueError, match="`weight_decay` must be >= 0, got -0.1"):
    lamb_optax.lamb(0.1, weight_decay=-0.1)


def test_messages_name_the_value():
  with pytest.raises(ValueError, match="got 1.5"):
    lamb_optax.lamb(0.1, b1=1.5)
  with pytest.raises(TypeError, match="'0.9'"):
    lamb_optax.lamb(0.1, b2="0.9")


def test_trust_ratio_bounds():
  with pytest.raises(ValueError, match="min_trust_ratio.*<= `max_trust_ratio`"):
    lamb_optax.lamb(0.1, min_trust_ratio=2.0, max_trust_ratio=1.0)
  with pytest.raises(ValueError, match="min_trust_ratio"):
    lamb_optax.lamb(0.1, min_trust_ratio=-1.0)
  with pytest.raises(TypeError, match="max_trust_ratio"):
    lamb_optax.lamb(0.1, max_trust_ratio="10")


def test_moment_dtype():
  with pytest.raises(TypeError, match="moment_dtype"):
    lamb_optax.lamb(0.1, moment_dtype="int32")
  with pytest.raises(TypeError, match="moment_dtype"):
    lamb_optax.lamb(0.1, moment_dtype="not-a-dtype")


def test_unknown_mask_rule():
  with pytest.raises(ValueError, match="unknown rule 'pytorch'"):
    lamb_optax.lamb(0.1, mask="pytorch")


def test_mask_of_wrong_structure():
  tx = lamb_optax.lamb(0.1, mask={"dense": True})
  with pytest.raises(ValueError, match="`mask` must have the structure of the parameters"):
    tx.update(P, tx.init(P), P)


def test_mask_with_non_bool_leaves():
  tx = lamb_optax.lamb(0.1, mask=jax.tree.map(lambda _: 1, P))
  with pytest.raises(TypeError, match="`mask` leaves must be bools"):
    tx.update(P, tx.init(P), P)


def test_tracers_and_0d_arrays_accepted():
  @jax.jit
  def build_and_step(lr, b1, b2, eps, wd):
    tx = lamb_optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    return tx.update(P, tx.init(P), P)[0]

  args = [jnp.float32(x) for x in (0.1, 0.9, 0.999, 1e-6, 0.01)]
  traced = build_and_step(*args)
  eager = lamb_optax.lamb(0.1, 0.9, 0.999, 1e-6, weight_decay=0.01).update(
    P, lamb_optax.lamb(0.1).init(P), P
  )[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), traced, eager)


# --- inject_hyperparams traps ----------------------------------------------


def test_optax_inject_hyperparams_with_bf16_params_is_caught():
  """optax casts b2=0.999 to bf16 (1.0): lamb says so instead of returning NaN."""
  params = jnp.ones(3, jnp.bfloat16)
  tx = optax.inject_hyperparams(lamb_optax.lamb)(learning_rate=0.1)
  with pytest.raises(ValueError, match="b2.*rounds 0.999 to 1.0.*lamb_optax.inject_hyperparams"):
    tx.init(params)


def test_lamb_optax_inject_hyperparams_keeps_float32_with_bf16_params():
  params = {"w": jnp.array([1.0, -2.0, 3.0], jnp.bfloat16)}
  grads = {"w": jnp.array([0.5, 0.25, -1.0], jnp.bfloat16)}
  inj = lamb_optax.inject_hyperparams()(learning_rate=0.1, b2=0.999)
  plain = lamb_optax.lamb(0.1, b2=0.999)
  u1, s1 = jax.jit(inj.update)(grads, inj.init(params), params)
  u2, _ = jax.jit(plain.update)(grads, plain.init(params), params)
  assert s1.hyperparams["b2"].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(u1["w"], np.float32)))
  np.testing.assert_array_equal(np.asarray(u1["w"], np.float32), np.asarray(u2["w"], np.float32))


def test_callable_mask_through_optax_inject_is_not_silently_ignored():
  """optax.inject_hyperparams calls a mask function as a schedule (optax trap)."""
  tx = optax.inject_hyperparams(lamb_optax.lamb)(
    learning_rate=0.1, weight_decay=0.1, mask=lamb_optax.masks.flax_weights
  )
  with pytest.raises(ValueError, match="inject_hyperparams"):
    tx.init(P)


def test_callable_mask_through_lamb_optax_inject_works():
  kw = dict(learning_rate=0.1, weight_decay=0.5, mask=lamb_optax.masks.flax_weights)
  inj = lamb_optax.inject_hyperparams()(**kw)
  plain = lamb_optax.lamb(**kw)
  rng = np.random.default_rng(0)
  p = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), P)
  g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), P)
  u1, _ = jax.jit(inj.update)(g, inj.init(p), p)
  u2, _ = jax.jit(plain.update)(g, plain.init(p), p)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
  # and the mask really acted: the kernel was decayed, the bias was not
  undecayed = lamb_optax.lamb(0.1, weight_decay=0.0)
  u3, _ = undecayed.update(g, undecayed.init(p), p)
  assert not np.allclose(u1["dense"]["kernel"], u3["dense"]["kernel"], rtol=1e-3)
  np.testing.assert_allclose(u1["dense"]["bias"], u3["dense"]["bias"], rtol=1e-6)


# --- bad input at update time ----------------------------------------------


def test_updates_tree_mismatch():
  tx = lamb_optax.lamb(0.1)
  state = tx.init(P)
  bad = {"dense": {"kernel": jnp.ones((2, 3))}, "ln": {"gamma": jnp.ones(3)}}
  with pytest.raises(ValueError):
    tx.update(bad, state, P)


def test_updates_shape_mismatch():
  tx = lamb_optax.lamb(0.1)
  state = tx.init(P)
  bad = jax.tree.map(lambda x: x, P)
  bad["dense"]["bias"] = jnp.ones(4)
  with pytest.raises(ValueError, match="dense/bias"):
    tx.update(bad, state, P)


def test_integer_params_rejected():
  with pytest.raises(TypeError, match="'w'.*floating"):
    lamb_optax.lamb(0.1).init({"w": jnp.ones(3, jnp.int32)})


def test_update_without_params():
  tx = lamb_optax.lamb(0.1)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(P, tx.init(P))


def test_schedule_returning_an_array():
  tx = lamb_optax.lamb(lambda c: jnp.ones(3) * 0.1)
  with pytest.raises(ValueError, match="schedule must return a scalar"):
    tx.update(P, tx.init(P), P)
