"""``inject_hyperparams`` with lamb_optax's structural arguments kept static."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import optax

from lamb_optax._src import transforms
from lamb_optax._src.alias import lamb

# Arguments that describe structure, not numbers: optax.inject_hyperparams would
# call a callable one as a schedule (and a mask would silently stop working).
STRUCTURAL_ARGS = (
  "mask",
  "groups",
  "trust_ratio_mask",
  "layer_axes",
  "moment_dtype",
  "mu_dtype",
  "bias_correction",
  "grad_averaging",
  "decoupled_decay",
  "centralize_out_axis",
  "master_weights",
  "fused",
  "layout",
  "policy",
)


def inject_hyperparams(
  inner_factory: Callable[..., optax.GradientTransformation] = lamb,
  static_args: str | Iterable[str] = (),
  hyperparam_dtype: Any = jnp.float32,
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """``optax.inject_hyperparams`` made safe for LAMB.

  Two traps of ``optax.inject_hyperparams`` are closed here:

  * it treats every callable argument as a schedule, so a callable ``mask``
    (or ``trust_ratio_mask``, ``layer_axes``) would be called with the step
    count; here those arguments (and ``groups``, ``moment_dtype``) are static;
  * it casts hyperparameters to the parameter dtype, so with bfloat16
    parameters ``b2=0.999`` becomes 1.0 and updates turn NaN; here the
    hyperparameters stay float32 unless ``hyperparam_dtype`` says otherwise.

  Args:
    inner_factory: the optimizer factory, :func:`lamb_optax.lamb` by default.
    static_args: more argument names to keep static.
    hyperparam_dtype: dtype of the injected hyperparameters.

  Returns:
    A factory with the signature of ``inner_factory`` whose state exposes
    ``hyperparams`` (e.g. ``state.hyperparams["learning_rate"]``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.inject_hyperparams()(learning_rate=0.1, mask=lamb_optax.masks.flax_weights)
    >>> state = tx.init({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)})
    >>> float(state.hyperparams["learning_rate"])
    0.1
  """
  if not callable(inner_factory):
    raise TypeError(
      f"`inner_factory` must be a callable returning an optax transformation, got"
      f" {type(inner_factory).__name__} {inner_factory!r}."
    )
  if isinstance(static_args, str):
    names = {static_args}
  else:
    try:
      names = set(static_args)
    except TypeError:
      raise TypeError(
        "`static_args` must be a str or an iterable of str (argument names), got"
        f" {type(static_args).__name__} {static_args!r}."
      ) from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
      raise TypeError(f"`static_args` must hold argument names (str), got {bad[0]!r}.")
  params = inspect.signature(inner_factory).parameters
  names |= {a for a in STRUCTURAL_ARGS if a in params}
  wrapped = optax.inject_hyperparams(
    inner_factory, static_args=tuple(sorted(names)), hyperparam_dtype=hyperparam_dtype
  )

  @functools.wraps(inner_factory)
  def factory(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    # The hyperparameters are concrete here: build the optimizer once with them, so every
    # argument check runs now (inside a jitted init they would be traced, and unchecked).
    inner_factory(*args, **kwargs)
    tx = wrapped(*args, **kwargs)

    def update_fn(updates, state, params=None, **extra_args):
      updates, new_state = tx.update(updates, state, params, **extra_args)
      # A scheduled hyperparameter is recomputed from the step count, its old value unread:
      # keep it an input, so a donated state's buffer is reused (transforms.reuse_buffer).
      hyperparams = {
        k: transforms.reuse_buffer(state.hyperparams[k], v)
        for k, v in new_state.hyperparams.items()
      }
      return updates, new_state._replace(hyperparams=hyperparams)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)

  return factory
