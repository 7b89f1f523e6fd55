"""Leaf paths and boolean masks over parameter trees.

A leaf's *path string* joins its dict keys, attribute names and sequence
indices with ``/`` (``encoder/layer_0/LayerNorm/gamma``). The trailing
``.value`` that ``flax.nnx.Variable`` adds is dropped, so the same mask or group
rule sees the same paths whether it gets NNX's Variable-wrapped state (at
``init``) or plain arrays (at ``update``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import numpy as np

from lamb_optax._src import validation

# What every `mask` argument accepts.
MaskOrFn = Union[None, str, Any, Callable[[Any], Any]]

_VARIABLE_ATTRS = ("value", "raw_value")


def _key_str(key: Any) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(path: Sequence[Any]) -> str:
  """Joins a JAX key path into a ``/``-separated string.

  Examples:
    >>> import jax
    >>> from lamb_optax.masks import path_str
    >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": [1, 2]})[0]]
    ['a/0', 'a/1']
  """
  keys = list(path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name in _VARIABLE_ATTRS:
    keys = keys[:-1]
  return "/".join(_key_str(k) for k in keys)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """Returns ``(path_string, leaf)`` for every leaf, in ``jax.tree.leaves`` order."""
  return [(path_str(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _map_named(fn: Callable[[str, Any], bool], params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), params)


def mindspore(params: Any) -> Any:
  """MindSpore's default decay rule: decay a leaf iff its path has no ``beta``/``gamma``.

  This is ``nn.Lamb``'s ``decay_filter``
  (``lambda x: 'beta' not in x.name and 'gamma' not in x.name``), applied to
  the ``/``-joined path. It is ``lamb``'s default ``mask``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from lamb_optax import masks
    >>> masks.mindspore({"dense": {"w": jnp.ones(2)}, "LayerNorm": {"gamma": jnp.ones(2)}})
    {'LayerNorm': {'gamma': False}, 'dense': {'w': True}}
  """
  return _map_named(lambda p, _: "beta" not in p and "gamma" not in p, params)


_FLAX_NO_DECAY = ("bias", "scale")


def flax_weights(params: Any) -> Any:
  """The usual Flax rule: decay the weights (kernels, embeddings), not biases or norm scales.

  A leaf is decayed iff it has at least 2 dimensions and its name (last path
  component) is neither ``bias`` nor ``scale`` (the names Flax gives to biases
  and to the scale/offset of ``LayerNorm``, ``BatchNorm``, ``GroupNorm`` and
  ``RMSNorm``). It is the rule ``mask="flax"`` names.

  The name says what the mask selects (the weights of a Flax model) and, unlike
  the deprecated alias ``masks.flax``, cannot shadow the ``flax`` package in
  ``from lamb_optax.masks import ...``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from lamb_optax import masks
    >>> masks.flax_weights({"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}})
    {'Dense_0': {'bias': False, 'kernel': True}}
  """

  def rule(path: str, leaf: Any) -> bool:
    return np.ndim(leaf) >= 2 and path.rsplit("/", 1)[-1] not in _FLAX_NO_DECAY

  return _map_named(rule, params)


def from_regex(pattern: str, *, invert: bool = False) -> Callable[[Any], Any]:
  """A mask that is True where ``re.search(pattern, path)`` matches.

  Args:
    pattern: a regular expression searched in each leaf's path string.
    invert: if True, the mask is True where the pattern does *not* match.

  Returns:
    A function ``params -> bool pytree``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from lamb_optax import masks
    >>> no_bias = masks.from_regex(r"bias$", invert=True)
    >>> no_bias({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)})
    {'bias': False, 'kernel': True}
  """
  if not isinstance(pattern, str):
    raise TypeError(f"`pattern` must be a str, got {type(pattern).__name__} {pattern!r}.")
  validation.check_bool("invert", invert)
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"`pattern` {pattern!r} is not a valid regular expression: {e}.") from e
  return lambda params: _map_named(lambda p, _: (compiled.search(p) is None) == invert, params)


_NAMED_RULES = {"mindspore": mindspore, "flax": flax_weights}


def check_mask(name: str, mask: MaskOrFn) -> None:
  """Checks a mask argument's kind without seeing the parameters."""
  if isinstance(mask, str) and mask not in _NAMED_RULES:
    raise ValueError(f"`{name}` names an unknown rule {mask!r}; known: {sorted(_NAMED_RULES)}.")


def _as_bool(name: str, value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if (
    isinstance(value, (np.ndarray, jax.Array))
    and np.ndim(value) == 0
    and np.dtype(value.dtype) == np.bool_
  ):
    try:
      return bool(np.asarray(value))
    except jax.errors.TracerArrayConversionError as e:
      raise TypeError(
        f"`{name}` leaves must be concrete bools, got a traced array. A callable mask"
        " passed through optax.inject_hyperparams is called as a schedule: use"
        " lamb_optax.inject_hyperparams, or static_args=('mask', ...)."
      ) from e
  raise TypeError(f"`{name}` leaves must be bools, got {type(value).__name__} {value!r}.")


def resolve(name: str, mask: MaskOrFn, tree: Any) -> list[bool]:
  """Evaluates a mask against ``tree`` and returns one bool per leaf of ``tree``.

  Args:
    name: the argument name used in error messages.
    mask: None (every leaf True), a rule name (``"mindspore"``, ``"flax"``), a
      bool pytree with the structure of ``tree`` or a prefix of it, or a
      callable returning one.
    tree: the parameters (or updates) the mask refers to.

  Returns:
    A list of bools in ``jax.tree.leaves(tree)`` order.

  Raises:
    ValueError: when the mask's structure does not match ``tree``.
    TypeError: when a mask leaf is not a bool.
  """
  n_leaves = len(jax.tree.leaves(tree))
  if mask is None:
    return [True] * n_leaves
  if isinstance(mask, str):
    check_mask(name, mask)
    mask_tree = _NAMED_RULES[mask](tree)
  elif callable(mask):
    mask_tree = mask(tree)
  else:
    mask_tree = mask
    tree_def = jax.tree.structure(tree)
    if (
      jax.tree.structure(mask_tree).num_nodes == 1
      and jax.tree.structure(mask_tree).num_leaves == 1
      and tree_def.num_leaves > 1
    ):
      raise ValueError(
        f"`{name}` is the single value {mask_tree!r} for a tree of {n_leaves} leaves."
        " This is what optax.inject_hyperparams passes when it calls a mask function"
        " as if it were a schedule: use lamb_optax.inject_hyperparams or"
        " optax.inject_hyperparams(..., static_args=('mask',)). To decay nothing,"
        " use weight_decay=0."
      )
  mask_def = jax.tree.structure(mask_tree)
  try:
    subtrees = mask_def.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"`{name}` must have the structure of the parameters (or a prefix of it).\n"
      f"  {name}: {mask_def}\n  params: {jax.tree.structure(tree)}"
    ) from e
  flags: list[bool] = []
  for leaf, sub in zip(jax.tree.leaves(mask_tree), subtrees, strict=True):
    flags.extend([_as_bool(name, leaf)] * len(jax.tree.leaves(sub)))
  return flags
