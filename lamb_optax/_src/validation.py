"""Argument checking shared by every public entry point.

The rules follow docs/design.md ("Argument checking"): ``TypeError`` for a value of
the wrong kind, ``ValueError`` for a value out of range, and every message
names the argument and the value it received. Tracers and 0-d JAX arrays are
accepted (``optax.inject_hyperparams`` passes hyperparameters as arrays); range
checks run only where the value is concrete.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None if it is a tracer."""
  try:
    return float(np.asarray(value))
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def is_bool(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return True
  dtype = getattr(value, "dtype", None)
  return dtype is not None and np.dtype(dtype) == np.bool_


def check_real(name: str, value: Any) -> float | None:
  """Checks that ``value`` is a real number (not bool, not NaN).

  Args:
    name: the argument name used in error messages.
    value: a Python/NumPy real number, or a 0-d real array (possibly traced).

  Returns:
    The value as a float, or None when it is traced (no range check possible).

  Raises:
    TypeError: for bools, complex numbers, strings, arrays of ndim > 0, ...
    ValueError: for NaN.
  """
  if is_bool(value):
    raise TypeError(f"`{name}` must be a real number, not a bool; got {value!r}.")
  if isinstance(value, numbers.Real):
    pass
  elif isinstance(value, (np.ndarray, np.generic, jax.Array)):
    dtype = np.dtype(value.dtype)
    if np.ndim(value) != 0 or not (
      jax.dtypes.issubdtype(dtype, np.integer) or jax.dtypes.issubdtype(dtype, np.floating)
    ):
      raise TypeError(
        f"`{name}` must be a real number (a 0-d real array is accepted); got an"
        f" array of shape {np.shape(value)} and dtype {dtype}."
      )
  else:
    raise TypeError(f"`{name}` must be a real number; got {type(value).__name__} {value!r}.")
  concrete = concrete_float(value)
  if concrete is not None and math.isnan(concrete):
    raise ValueError(f"`{name}` must be a real number, got NaN ({value!r}).")
  return concrete


def check_open_unit(name: str, value: Any) -> None:
  """Checks ``0 < value < 1`` (for b1, b2)."""
  concrete = check_real(name, value)
  if concrete is not None and not 0.0 < concrete < 1.0:
    hint = ""
    if concrete == 1.0:
      hint = (
        " (optax.inject_hyperparams rounds 0.999 to 1.0 when it casts"
        " hyperparameters to bfloat16 parameters: use"
        " lamb_optax.inject_hyperparams or hyperparam_dtype=jnp.float32)"
      )
    raise ValueError(f"`{name}` must be in the open interval (0, 1), got {value!r}{hint}.")


def check_positive(name: str, value: Any) -> None:
  """Checks ``0 < value < inf`` (for eps)."""
  concrete = check_real(name, value)
  if concrete is not None and not 0.0 < concrete < math.inf:
    raise ValueError(f"`{name}` must be > 0 and finite, got {value!r}.")


def check_non_negative(name: str, value: Any, *, allow_inf: bool = False) -> None:
  """Checks ``value >= 0`` and, unless ``allow_inf``, finite (for weight decay, eps_root, lr)."""
  concrete = check_real(name, value)
  if concrete is not None and not concrete >= 0.0:
    raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
  if concrete is not None and concrete == math.inf and not allow_inf:
    raise ValueError(f"`{name}` must be finite, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
  """Checks that ``value`` is a Python bool."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}.")


def check_scalar_or_schedule(name: str, value: Any) -> Any:
  """Checks a weight-decay-like argument: a number >= 0 or a callable.

  Returns:
    ``value`` unchanged.
  """
  if callable(value):
    return value
  check_non_negative(name, value)
  return value


def check_max_ratio(name: str, value: Any) -> None:
  """Checks an upper trust-ratio bound: > 0; inf is meaningful (no clipping from above)."""
  check_non_negative(name, value, allow_inf=True)
  hi = concrete_float(value)
  if hi is not None and hi == 0.0:
    raise ValueError(f"`{name}` must be > 0, got {value!r}.")


def check_optional_ratio_bounds(min_ratio: Any, max_ratio: Any) -> None:
  """Checks the trust-ratio clipping bounds."""
  lo = hi = None
  if min_ratio is not None:
    check_non_negative("min_trust_ratio", min_ratio)
    lo = concrete_float(min_ratio)
  if max_ratio is not None:
    check_max_ratio("max_trust_ratio", max_ratio)
    hi = concrete_float(max_ratio)
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(
      f"`min_trust_ratio` ({min_ratio!r}) must be <= `max_trust_ratio` ({max_ratio!r})."
    )


def check_dtype(name: str, value: Any) -> np.dtype | None:
  """Checks an optional floating/complex dtype argument."""
  if value is None:
    return None
  try:
    dtype = np.dtype(jax.dtypes.canonicalize_dtype(value))
  except TypeError as e:
    raise TypeError(f"`{name}` must be a dtype or None, got {value!r}.") from e
  if not jax.dtypes.issubdtype(dtype, np.inexact):
    raise TypeError(f"`{name}` must be a floating or complex dtype, got {value!r}.")
  return dtype


def is_traced(value: Any) -> bool:
  """Whether ``value`` is a number known only when a jitted computation runs."""
  return isinstance(value, jax.core.Tracer)


def check_when_run(checks: list[tuple[Callable[[str, Any], Any], str, Any]]) -> None:
  """Runs each ``check(name, value)`` whose value is traced when the computation executes.

  ``optax.inject_hyperparams`` hands hyperparameters to the optimizer's factory as traced
  arrays inside a jitted ``init``, where no range check can run when the optimizer is
  built. ``jax.debug.callback`` runs the same check on the value once it exists; a bad value
  stops the computation with the check's error (naming the argument and the value) inside
  JAX's runtime error.
  """
  for check, name, value in checks:
    if is_traced(value):
      jax.debug.callback(lambda x, check=check, name=name: check(name, float(np.asarray(x))), value)
