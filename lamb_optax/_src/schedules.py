"""Learning-rate forms: numbers, 0-d arrays, per-step lists and schedules.

docs/design.md ("Learning rate forms") lists what a learning rate may be. This module
turns each form into either a constant or an optax schedule ``count -> value``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from lamb_optax._src import validation

# Everything `learning_rate` (and a group's `lr`) may be.
LearningRate = Union[
  float, int, jax.typing.ArrayLike, Iterable[float], Callable[[jax.Array], jax.typing.ArrayLike]
]


def per_step_schedule(values: Any) -> Callable[[jax.Array], jax.Array]:
  """Returns a schedule that takes value ``i`` at step ``i``.

  Past the end of ``values`` the last value holds (lamb_optax's documented
  choice; MindSpore leaves the behaviour undefined).

  Args:
    values: a non-empty 1-D sequence or array of learning rates.

  Returns:
    An optax schedule ``count -> values[min(count, len(values) - 1)]``.

  Examples:
    >>> from lamb_optax._src.schedules import per_step_schedule
    >>> sched = per_step_schedule([0.1, 0.2])
    >>> [round(float(sched(i)), 3) for i in range(4)]
    [0.1, 0.2, 0.2, 0.2]
  """
  table = jnp.asarray(np.asarray(values, dtype=np.float32))
  last = table.shape[0] - 1

  def schedule(count: jax.Array) -> jax.Array:
    return table[jnp.clip(count, 0, last)]

  return schedule


def _check_table(name: str, arr: np.ndarray) -> None:
  if arr.ndim != 1:
    raise ValueError(
      f"`{name}` as an array must be 0-d or 1-D (one value per step); got shape {arr.shape}."
    )
  if arr.size == 0:
    raise ValueError(f"`{name}` must not be an empty sequence.")
  if np.isnan(arr).any():
    raise ValueError(f"`{name}` must not contain NaN; got {arr.tolist()}.")
  if np.isinf(arr).any():
    raise ValueError(f"`{name}` must hold finite values; got {arr.tolist()}.")
  if (arr < 0).any():
    bad = [float(x) for x in arr[arr < 0][:5]]
    raise ValueError(f"`{name}` must contain only values >= 0; got negative entries {bad}.")


def as_schedule(name: str, value: LearningRate) -> Any:
  """Validates a learning-rate form and returns a constant or a schedule.

  Args:
    name: the argument name used in error messages.
    value: a number >= 0, a 0-d array, a 1-D array or iterable of numbers (one
      per step), or a callable ``count -> lr``.

  Returns:
    A float / 0-d array for fixed values, or a callable ``count -> lr``.

  Raises:
    TypeError: for any other kind of value (bools, strings, mappings, ...).
    ValueError: for negative or NaN values and arrays with ndim > 1.
  """
  if callable(value):
    return value
  if isinstance(value, (str, bytes, Mapping)) or validation.is_bool(value):
    raise TypeError(
      f"`{name}` must be a number, a 1-D sequence of numbers or a schedule; got"
      f" {type(value).__name__} {value!r}."
    )
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    if np.ndim(value) == 0:
      validation.check_non_negative(name, value)
      return value
    try:
      arr = np.asarray(value)
    except jax.errors.TracerArrayConversionError as e:
      raise TypeError(f"`{name}` as a 1-D array must be concrete, not traced.") from e
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
      raise TypeError(f"`{name}` must hold real numbers; got an array of dtype {arr.dtype}.")
    _check_table(name, arr)
    return per_step_schedule(arr)
  if isinstance(value, numbers.Real):
    validation.check_non_negative(name, value)
    return float(value)
  if isinstance(value, Iterable):
    items = list(value)
    for i, item in enumerate(items):
      if isinstance(item, (list, tuple, np.ndarray)) and np.ndim(item) > 0:
        raise ValueError(
          f"`{name}` as a sequence must be 1-D (one number per step); element {i} is {item!r}."
        )
      try:
        validation.check_real(f"{name}[{i}]", item)
      except ValueError as e:
        raise ValueError(f"`{name}` must not contain NaN; element {i} is {item!r}.") from e
    arr = np.asarray([float(x) for x in items], dtype=np.float64)
    _check_table(name, arr)
    return per_step_schedule(arr)
  raise TypeError(
    f"`{name}` must be a number, a 1-D sequence of numbers or a schedule; got"
    f" {type(value).__name__} {value!r}."
  )


def evaluate(
  value: Any, count: jax.Array, dtype: Any = jnp.float32, name: str = "learning_rate"
) -> jax.Array:
  """Evaluates a constant or schedule at ``count`` as a 0-d ``dtype`` array.

  Raises:
    TypeError: a schedule (``name`` names it) returned something that is not a real number
      or 0-d real array (a string, None, a complex or bool value).
    ValueError: it returned an array of another shape.
  """
  out = value(count) if callable(value) else value
  if out is None or isinstance(out, (str, bytes)) or validation.is_bool(out):
    raise TypeError(
      f"`{name}` must give a real number, got {type(out).__name__} {out!r} at step {count}."
    )
  try:
    out = jnp.asarray(out)
  except TypeError as e:
    raise TypeError(
      f"`{name}` must give a real number, got {type(out).__name__} {out!r} at step {count}."
    ) from e
  if not (jnp.issubdtype(out.dtype, jnp.floating) or jnp.issubdtype(out.dtype, jnp.integer)):
    raise TypeError(f"`{name}` must give a real number, got dtype {out.dtype} at step {count}.")
  if out.ndim != 0:
    raise ValueError(
      f"`{name}`: a schedule must return a scalar, got an array of shape {out.shape} at step"
      f" {count}."
    )
  return out.astype(dtype)


def is_positive_constant(value: Any) -> bool | None:
  """True/False for a concrete number, None for schedules and tracers."""
  if callable(value):
    return None
  concrete = validation.concrete_float(value)
  if concrete is None:
    return None
  return concrete > 0.0 and not math.isnan(concrete)
