"""The building blocks of LAMB, each an ``optax.GradientTransformation``.

``lamb`` is a fixed-length ``optax.chain`` of these blocks. Each one is usable
on its own, with any other optax transformation. Arithmetic runs in at least
float32 whatever the dtype of the parameters (bfloat16 and float16 are upcast;
float64 and complex stay as they are); each block returns updates in the dtype
of the updates it received.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb_optax._src import kernels, schedules, validation
from lamb_optax._src import masks as masks_lib

ScalarOrSchedule = Union[float, jax.typing.ArrayLike, Callable[[jax.Array], jax.typing.ArrayLike]]
# An int pytree (a prefix of the params is enough) or a function of the params returning one.
LayerAxes = Union[None, int, Any, Callable[[Any], Any]]


compute_dtype = kernels.compute_dtype
_real_dtype = kernels.real_dtype


def _check_float_leaves(name: str, tree: Any) -> None:
  for path, leaf in masks_lib.named_leaves(tree):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"`{name}` leaf {path or '<root>'!r} must be a floating or complex array, got"
        f" {type(leaf).__name__} with dtype {dtype}."
      )


def _hyper_dtype(tree: Any) -> np.dtype:
  """The widest real dtype the leaves of ``tree`` compute in (float64 keeps float64)."""
  dtypes = [_real_dtype(compute_dtype(x.dtype)) for x in jax.tree.leaves(tree)]
  return np.result_type(*dtypes) if dtypes else np.dtype(jnp.float32)


def _require_params(params: Any, who: str) -> None:
  if params is None:
    raise ValueError(f"{who} needs the current parameters: call `update(updates, state, params)`.")


def _check_same_structure(updates: Any, params: Any, what: str = "params") -> None:
  """Raises a ValueError naming the first leaf where updates and params differ."""
  u_def, p_def = jax.tree.structure(updates), jax.tree.structure(params)
  if u_def != p_def:
    raise ValueError(
      f"`updates` and `{what}` must have the same tree structure.\n"
      f"  updates: {u_def}\n  {what}: {p_def}"
    )
  for (path, u), p in zip(masks_lib.named_leaves(updates), jax.tree.leaves(params), strict=True):
    if np.shape(u) != np.shape(p):
      raise ValueError(
        f"`updates` leaf {path or '<root>'!r} has shape {np.shape(u)} but the parameter has"
        f" shape {np.shape(p)}."
      )


def reuse_buffer(old: jax.Array, new: jax.Array) -> jax.Array:
  """``new``, written so that ``jax.jit`` keeps ``old`` (a state field nothing reads) as an input.

  A state field that the update overwrites without reading (the last trust
  ratios, a scheduled hyperparameter) is an input nothing reads, and jit drops
  such inputs; a donated buffer that is dropped cannot be reused for an
  output, so the new value gets a fresh buffer every step (and XLA:GPU
  records its command buffers anew each step). XLA folds ``select(p, a, a)``
  to ``a``, so this costs nothing at run time.
  """
  return jnp.where(old != old, new, new)


def _check_no_complex_for_real(updates: Any, params: Any) -> None:
  """Raises a TypeError naming the first complex update of a real parameter."""
  for (path, u), p in zip(masks_lib.named_leaves(updates), jax.tree.leaves(params), strict=True):
    if jnp.iscomplexobj(u) and not jnp.iscomplexobj(p):
      raise TypeError(
        f"`updates` leaf {path or '<root>'!r} is {np.dtype(u.dtype)} but the parameter is"
        f" {np.dtype(p.dtype)}: a real parameter takes real updates (for a complex loss, take"
        " the real part of the gradient, or make the parameter complex)."
      )


# ---------------------------------------------------------------------------
# Gradient centralization
# ---------------------------------------------------------------------------


def centralize_leaf(g: jax.Array, out_axis: int = -1) -> jax.Array:
  """``g`` minus its mean over every axis but ``out_axis``; ndim < 2 passes through."""
  if g.ndim < 2:
    return g
  if not -g.ndim <= out_axis < g.ndim:
    raise ValueError(f"`out_axis`={out_axis} is out of range for a gradient of shape {g.shape}.")
  axes = tuple(a for a in range(g.ndim) if a != out_axis % g.ndim)
  g32 = g.astype(compute_dtype(g.dtype))
  return (g32 - jnp.mean(g32, axis=axes, keepdims=True)).astype(g.dtype)


def centralize_gradients(out_axis: int = -1) -> optax.GradientTransformation:
  r"""Gradient centralization (Yong et al., 2020), channel-last by default.

  .. math::
    g \leftarrow g - \operatorname{mean}_{\text{all axes but } out\_axis}(g)

  Leaves with fewer than 2 dimensions (biases, norm scales) pass through.
  ``optax.centralize`` averages over every axis but axis 0 (PyTorch's
  ``(out, in, kh, kw)`` layout); Flax kernels are ``(kh, kw, in, out)``, so the
  default here keeps the last axis. Pass ``out_axis=0`` for PyTorch or
  MindSpore layouts.

  Args:
    out_axis: the output-channel axis, kept out of the mean.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.centralize_gradients()
    >>> g = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    >>> tx.update(g, tx.init(g))[0]
    Array([[-1., -2.],
           [ 1.,  2.]], dtype=float32)

  References:
    Yong et al., `Gradient Centralization: A New Optimization Technique for
    Deep Neural Networks <https://arxiv.org/abs/2004.01461>`_, ECCV 2020.
  """
  if isinstance(out_axis, bool) or not isinstance(out_axis, (int, np.integer)):
    raise TypeError(f"`out_axis` must be an int, got {type(out_axis).__name__} {out_axis!r}.")

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: centralize_leaf(g, out_axis), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# Adam scaling
# ---------------------------------------------------------------------------


def zeros_like_sharded(p: jax.Array, dtype: Any) -> jax.Array:
  """Zeros shaped like ``p`` that XLA shards like ``p``, also inside ``jax.jit``.

  ``jnp.zeros_like`` does not depend on ``p``'s values, so under ``jax.jit`` with
  automatic sharding XLA places it on one device (a replicated optimizer state
  defeats FSDP). Computing the zeros elementwise from ``p`` lets sharding
  propagation give them ``p``'s sharding; ``where(isfinite(p), p * 0, 0)`` is
  0 even where ``p`` is inf or NaN. It costs one read of ``p``, once, at init.
  """
  if jnp.iscomplexobj(p) and not jnp.issubdtype(dtype, jnp.complexfloating):
    p = jnp.real(p)
  return jnp.where(jnp.isfinite(p), p * 0, 0).astype(dtype)


class ScaleByAdamState(NamedTuple):
  """State of :func:`scale_by_adam`."""

  count: jax.Array  # shape=(), dtype=int32: steps taken.
  mu: optax.Updates  # like params; dtype moment_dtype: first moment m.
  nu: optax.Updates  # like params; dtype moment_dtype: second moment v.


def default_moment_dtype(param_dtype: Any, moment_dtype: Any = None) -> np.dtype:
  """float32 for bfloat16/float16 parameters, the parameter dtype otherwise."""
  if moment_dtype is not None:
    return np.dtype(moment_dtype)
  if np.dtype(param_dtype) in (np.dtype(jnp.bfloat16), np.dtype(jnp.float16)):
    return np.dtype(jnp.float32)
  return np.dtype(param_dtype)


def scale_by_adam(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-6,
  eps_root: jax.typing.ArrayLike = 0.0,
  moment_dtype: Optional[Any] = None,
  *,
  bias_correction: bool = True,
  grad_averaging: bool = True,
  mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adam's bias-corrected scaling, computed in float32 for low-precision params.

  .. math::
    m_t = b_1 m_{t-1} + (1-b_1) g, \quad v_t = b_2 v_{t-1} + (1-b_2) |g|^2, \\
    u = \frac{m_t / (1-b_1^t)}{\sqrt{v_t/(1-b_2^t) + \epsilon_{root}} + \epsilon}

  ``optax.scale_by_adam`` runs in the parameter dtype and stores ``nu`` like the
  parameters; with bfloat16 parameters that loses the second moment. Here the
  arithmetic is at least float32 and ``moment_dtype=None`` stores m and v in
  float32 for bfloat16/float16 parameters (the parameter dtype otherwise).

  Args:
    b1: decay rate of the first moment, in (0, 1).
    b2: decay rate of the second moment, in (0, 1).
    eps: term added to the denominator outside the square root, > 0.
    eps_root: term added inside the square root, >= 0.
    moment_dtype: storage dtype of m and v; None for the default above.
    bias_correction: False divides by neither ``1-b_1^t`` nor ``1-b_2^t``.
    grad_averaging: False accumulates ``m_t = b_1 m_{t-1} + g``.
    mu_dtype: storage dtype of m only (``optax.scale_by_adam``'s meaning);
      None: as ``moment_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByAdamState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.scale_by_adam()
    >>> g = jnp.array([0.5, -2.0])
    >>> u, state = tx.update(g, tx.init(g))
    >>> u  # the first step is g / (|g| + eps)
    Array([ 0.9999979, -0.9999994], dtype=float32)

  References:
    Kingma and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  validation.check_open_unit("b1", b1)
  validation.check_open_unit("b2", b2)
  validation.check_positive("eps", eps)
  validation.check_non_negative("eps_root", eps_root)
  moment_dtype = validation.check_dtype("moment_dtype", moment_dtype)
  mu_dtype = validation.check_dtype("mu_dtype", mu_dtype)
  validation.check_bool("bias_correction", bias_correction)
  validation.check_bool("grad_averaging", grad_averaging)

  def init_fn(params):
    # Empty containers are a mistake; an empty custom node is optax.tree.map_params' probe.
    if params is None or (isinstance(params, (dict, list, tuple)) and not jax.tree.leaves(params)):
      raise ValueError(f"`params` has no array leaves: {params!r}.")
    _check_float_leaves("params", params)
    nu_zeros = lambda p: zeros_like_sharded(p, default_moment_dtype(p.dtype, moment_dtype))  # noqa: E731
    mu_zeros = nu_zeros if mu_dtype is None else (lambda p: zeros_like_sharded(p, mu_dtype))
    return ScaleByAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(mu_zeros, params),
      nu=jax.tree.map(nu_zeros, params),
    )

  def update_fn(updates, state, params=None):
    del params
    _check_float_leaves("updates", updates)
    _check_same_structure(updates, state.mu, "the moments (the params at init)")
    count = optax.safe_increment(state.count)

    _check_no_complex_for_real(updates, state.mu)  # real moments: a real parameter

    def one(g, m, v):
      m_new, v_new = kernels.moments(g, m, v, b1, b2, grad_averaging)
      m_new, v_new = kernels.saturate(m_new, m.dtype), kernels.saturate(v_new, v.dtype)
      rdt = kernels.real_dtype(m_new.dtype)
      c1, c2 = kernels.corrections(count, b1, b2, rdt, bias_correction)
      u = kernels.direction(m_new, v_new, c1, c2, eps, eps_root)
      return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

    out = jax.tree.map(one, updates, state.mu, state.nu)
    tree_def = jax.tree.structure(updates)
    u, m, v = (
      jax.tree.unflatten(tree_def, [t[i] for t in tree_def.flatten_up_to(out)]) for i in range(3)
    )
    return u, ScaleByAdamState(count=count, mu=m, nu=v)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Decoupled weight decay
# ---------------------------------------------------------------------------


class AddDecayedWeightsState(NamedTuple):
  """State of :func:`add_decayed_weights`."""

  count: jax.Array  # shape=(), dtype=int32: steps taken (for a weight-decay schedule).


def add_decayed_weights(
  weight_decay: ScalarOrSchedule = 0.0,
  mask: masks_lib.MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Adds ``weight_decay * params`` to the updates where ``mask`` is True.

  .. math::
    u \leftarrow u + wd_t \, w

  ``wd_t`` is ``weight_decay`` or, for a schedule, ``weight_decay(count)``
  (dynamic weight decay, MindSpore's ``weight_decay`` Cell). Unlike
  ``optax.add_decayed_weights`` the sum runs in float32 for low-precision
  parameters and a weight decay that is concretely 0 adds nothing at all.

  Args:
    weight_decay: a number >= 0 or a schedule ``count -> wd``.
    mask: None (decay every leaf), ``"mindspore"`` (no ``beta``/``gamma`` in
      the path), ``"flax"``, a bool pytree (or prefix) or a callable
      ``params -> bool pytree``; see :mod:`lamb_optax.masks`.

  Returns:
    An ``optax.GradientTransformation`` with :class:`AddDecayedWeightsState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.add_decayed_weights(0.1, mask={"w": True, "gamma": False})
    >>> p = {"w": jnp.array([1.0, 2.0]), "gamma": jnp.array([3.0])}
    >>> u, _ = tx.update({"w": jnp.zeros(2), "gamma": jnp.zeros(1)}, tx.init(p), p)
    >>> u["w"], u["gamma"]
    (Array([0.1, 0.2], dtype=float32), Array([0.], dtype=float32))
  """
  validation.check_scalar_or_schedule("weight_decay", weight_decay)
  masks_lib.check_mask("mask", mask)
  decays_nothing = schedules.is_positive_constant(weight_decay) is False

  def init_fn(params):
    masks_lib.resolve("mask", mask, params)  # a bad mask fails here, before any step
    return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _require_params(params, "add_decayed_weights")
    _check_same_structure(updates, params)
    _check_no_complex_for_real(updates, params)
    count = optax.safe_increment(state.count)
    if decays_nothing:
      return updates, AddDecayedWeightsState(count=count)
    flags = masks_lib.resolve("mask", mask, params)
    wd = schedules.evaluate(weight_decay, state.count, _hyper_dtype(updates), "weight_decay")

    def one(flag, u, w):
      if not flag:
        return u
      return kernels.add_decay(u.astype(compute_dtype(u.dtype)), w, wd).astype(u.dtype)

    leaves = [
      one(f, u, w)
      for f, u, w in zip(flags, jax.tree.leaves(updates), jax.tree.leaves(params), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(updates), leaves), AddDecayedWeightsState(count)

  return optax.GradientTransformation(init_fn, update_fn)


class WithDecoupledWeightDecayState(NamedTuple):
  """State of :func:`with_decoupled_weight_decay`."""

  count: jax.Array  # shape=(), dtype=int32: steps taken (indexes the schedules).
  inner_state: Any  # the state of the wrapped transformation


def with_decoupled_weight_decay(
  inner: optax.GradientTransformation,
  learning_rate: schedules.LearningRate,
  weight_decay: ScalarOrSchedule = 0.0,
  mask: masks_lib.MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Runs ``inner`` on weights first shrunk by ``lr wd w``, and adds that shrink.

  .. math::
    w_s = (1 - lr_t\, wd_t)\, w, \quad u \leftarrow \operatorname{inner}(u, w_s) - lr_t\, wd_t\, w

  where ``mask`` is True (elsewhere ``w_s = w``), so the step applied to ``w``
  is the step ``inner`` computes for the shrunk weight, after the shrink:
  timm's ``Lamb(decoupled_decay=True)`` and Keras 3's ``weight_decay`` with
  ``inner`` the trust ratio and the learning rate (``lamb(...,
  decoupled_decay=True, fused=False)``). The shrink is computed in float32
  for low-precision parameters.

  Args:
    inner: the transformation that sees the shrunk weights as ``params``.
    learning_rate: the learning rate of the shrink, in any form of
      :func:`scale_by_learning_rate`.
    weight_decay: a number >= 0 or a schedule ``count -> wd``.
    mask: where the weights shrink; forms as :func:`add_decayed_weights`.

  Returns:
    An ``optax.GradientTransformation`` with :class:`WithDecoupledWeightDecayState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.with_decoupled_weight_decay(
    ...     lamb_optax.scale_by_learning_rate(0.1), learning_rate=0.1, weight_decay=0.5)
    >>> w = jnp.array([2.0])
    >>> tx.update(jnp.array([1.0]), tx.init(w), w)[0]  # -0.1 * 1 - 0.1 * 0.5 * 2
    Array([-0.2], dtype=float32)
  """
  lr = schedules.as_schedule("learning_rate", learning_rate)
  validation.check_scalar_or_schedule("weight_decay", weight_decay)
  masks_lib.check_mask("mask", mask)
  decays_nothing = schedules.is_positive_constant(weight_decay) is False

  def init_fn(params):
    masks_lib.resolve("mask", mask, params)  # a bad mask fails here, before any step
    return WithDecoupledWeightDecayState(jnp.zeros([], jnp.int32), inner.init(params))

  def update_fn(updates, state, params=None):
    _require_params(params, "with_decoupled_weight_decay")
    _check_same_structure(updates, params)
    _check_no_complex_for_real(updates, params)
    count = optax.safe_increment(state.count)
    if decays_nothing:
      updates, inner_state = inner.update(updates, state.inner_state, params)
      return updates, WithDecoupledWeightDecayState(count, inner_state)
    flags = masks_lib.resolve("mask", mask, params)
    hdt = _hyper_dtype(updates)
    step_size = schedules.evaluate(lr, state.count, hdt, "learning_rate")
    wd = schedules.evaluate(weight_decay, state.count, hdt, "weight_decay")
    leaves = jax.tree.leaves(params)
    shrunk = [
      w.astype(compute_dtype(w.dtype))
      * kernels.shrink_factor(step_size, wd, hdt).astype(_real_dtype(compute_dtype(w.dtype)))
      if f
      else w
      for f, w in zip(flags, leaves, strict=True)
    ]
    tree_def = jax.tree.structure(params)
    inner_u, inner_state = inner.update(
      updates, state.inner_state, jax.tree.unflatten(tree_def, shrunk)
    )
    out = [
      kernels.subtract_decay(u.astype(compute_dtype(u.dtype)), w, step_size, wd).astype(u.dtype)
      if f
      else u
      for f, u, w in zip(flags, jax.tree.leaves(inner_u), leaves, strict=True)
    ]
    return jax.tree.unflatten(tree_def, out), WithDecoupledWeightDecayState(count, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Trust ratio
# ---------------------------------------------------------------------------


class ScaleByTrustRatioState(NamedTuple):
  """State of :func:`scale_by_trust_ratio`."""

  # like params; each leaf float32 of shape leaf.shape[:layer_axes] (a scalar
  # per leaf by default): the ratios applied at the last step (1 before any).
  ratios: optax.Updates


def resolve_layer_axes(layer_axes: LayerAxes, tree: Any) -> list[int]:
  """One int per leaf of ``tree``: how many leading axes index layers."""
  leaves = masks_lib.named_leaves(tree)
  if layer_axes is None:
    return [0] * len(leaves)
  spec = layer_axes(tree) if callable(layer_axes) else layer_axes
  spec_def = jax.tree.structure(spec)
  try:
    subtrees = spec_def.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "`layer_axes` must be an int or an int pytree with the structure of the parameters"
      f" (or a prefix of it).\n  layer_axes: {spec_def}\n  params: {jax.tree.structure(tree)}"
    ) from e
  out: list[int] = []
  for k, sub in zip(jax.tree.leaves(spec), subtrees, strict=True):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
      raise TypeError(
        f"`layer_axes` leaves must be Python ints, got {type(k).__name__} {k!r} (under"
        " optax.inject_hyperparams, list 'layer_axes' in static_args)."
      )
    out.extend([int(k)] * len(jax.tree.leaves(sub)))
  for (path, leaf), k in zip(leaves, out, strict=True):
    if not 0 <= k <= np.ndim(leaf):
      raise ValueError(
        f"`layer_axes` for leaf {path or '<root>'!r} must be in [0, {np.ndim(leaf)}], got {k}."
      )
  return out


_TR_MASK = "mask (lamb's trust_ratio_mask)"


def scale_by_trust_ratio(
  min_ratio: Optional[jax.typing.ArrayLike] = None,
  max_ratio: Optional[jax.typing.ArrayLike] = None,
  mask: masks_lib.MaskOrFn = None,
  *,
  layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
  r"""Scales each update by LAMB's trust ratio ``||w|| / ||u||``.

  .. math::
    r = \begin{cases} \|w\| / \|u\| & \|w\| > 0,\ \|u\| > 0 \\ 1 & \text{else}
        \end{cases}, \quad r \leftarrow \operatorname{clip}(r, min, max),
    \quad u \leftarrow r\,u

  Norms are taken in float32 (float16 leaves whose sum of squares exceeds 65504
  still get the right ratio) and are safe from overflow and underflow
  (``kernels.safe_norms``), so finite inputs give finite updates.
  ``optax.scale_by_trust_ratio`` takes one norm per leaf, has no clipping, no
  exclusion mask and keeps no record of the ratios; this block adds all three,
  plus one ratio per layer for stacked leaves.

  Args:
    min_ratio: lower clipping bound for r, or None.
    max_ratio: upper clipping bound for r, or None (DeepSpeed uses [0.01, 10]).
    mask: where True the ratio applies; leaves where it is False get r = 1
      (TF-Addons' ``exclude_from_layer_adaptation``). Same forms as
      :func:`add_decayed_weights`'s mask; None applies the ratio everywhere.
    layer_axes: an int, an int pytree (or prefix) or a callable
      ``params -> int pytree``: how many leading axes of a leaf index
      independent layers (a ``scan``-stacked block). A leaf of shape
      ``(L, ...)`` with ``layer_axes=1`` gets L ratios. None means 0 everywhere.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByTrustRatioState`;
    :func:`lamb_optax.trust_ratios` reads the ratios back.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.scale_by_trust_ratio()
    >>> w, u = jnp.array([3.0, 4.0]), jnp.array([0.0, 0.5])
    >>> tx.update(u, tx.init(w), w)[0]  # r = 5 / 0.5 = 10
    Array([0., 5.], dtype=float32)

  References:
    You et al., `Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes <https://arxiv.org/abs/1904.00962>`_, 2020.
  """
  validation.check_optional_ratio_bounds(min_ratio, max_ratio)
  masks_lib.check_mask(_TR_MASK, mask)

  def init_fn(params):
    _check_float_leaves("params", params)
    masks_lib.resolve(_TR_MASK, mask, params)  # a bad mask fails here, before any step
    axes = resolve_layer_axes(layer_axes, params)
    # 1 per leaf (per layer), computed from p so that a per-layer ratio of a
    # leaf sharded along its layer axis starts sharded as the update leaves it.
    leaves = [
      jnp.sum(
        zeros_like_sharded(p, _real_dtype(compute_dtype(p.dtype))), axis=tuple(range(k, np.ndim(p)))
      )
      + 1
      for p, k in zip(jax.tree.leaves(params), axes, strict=True)
    ]
    return ScaleByTrustRatioState(ratios=jax.tree.unflatten(jax.tree.structure(params), leaves))

  def update_fn(updates, state, params=None):
    _require_params(params, "scale_by_trust_ratio")
    _check_same_structure(updates, params)
    _check_no_complex_for_real(updates, params)
    flags = masks_lib.resolve(_TR_MASK, mask, params)
    axes = resolve_layer_axes(layer_axes, params)
    new_u, ratios = [], []
    for flag, k, u, w in zip(
      flags, axes, jax.tree.leaves(updates), jax.tree.leaves(params), strict=True
    ):
      if not flag:
        new_u.append(u)
        ratios.append(jnp.ones(u.shape[:k], _real_dtype(compute_dtype(w.dtype))))
        continue
      w_norm, u_norm = kernels.safe_norms([w, u], k)
      scaled, r = kernels.trust_scale(u, w_norm, u_norm, min_ratio, max_ratio)
      new_u.append(scaled.astype(u.dtype))
      ratios.append(r)
    tree_def = jax.tree.structure(updates)
    ratios = [
      reuse_buffer(o, r) for o, r in zip(jax.tree.leaves(state.ratios), ratios, strict=True)
    ]
    return jax.tree.unflatten(tree_def, new_u), ScaleByTrustRatioState(
      ratios=jax.tree.unflatten(tree_def, ratios)
    )

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Learning rate
# ---------------------------------------------------------------------------


class ScaleByLearningRateState(NamedTuple):
  """State of :func:`scale_by_learning_rate`."""

  count: jax.Array  # shape=(), dtype=int32: steps taken (indexes the schedule).


def scale_by_learning_rate(learning_rate: schedules.LearningRate) -> optax.GradientTransformation:
  r"""Multiplies the updates by ``-lr_t``, in float32.

  ``lr_t`` is the learning rate of step ``count`` (0-based): the first update
  uses the first value. Every form of docs/design.md ("Learning rate forms") is accepted:

  * a number >= 0 or a 0-d array: fixed;
  * a 1-D array, list, tuple or other iterable of numbers: step ``i`` uses
    element ``i``; past the end the last element holds;
  * a callable ``count -> lr`` (any optax schedule, or a
    :mod:`lamb_optax.mindspore_compat` schedule).

  The state always holds a step counter, whatever the form, so the state
  structure does not change when a schedule replaces a constant.

  Args:
    learning_rate: the learning rate, in one of the forms above.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByLearningRateState`.

  Raises:
    TypeError: for an unsupported kind of value (bool, str, dict, ...).
    ValueError: for negative or NaN values and arrays of ndim > 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> import lamb_optax
    >>> tx = lamb_optax.scale_by_learning_rate([0.1, 0.01])
    >>> u, s = tx.update(jnp.ones(1), tx.init(jnp.ones(1)))
    >>> u, tx.update(jnp.ones(1), s)[0]
    (Array([-0.1], dtype=float32), Array([-0.01], dtype=float32))
  """
  lr = schedules.as_schedule("learning_rate", learning_rate)

  def init_fn(params):
    del params
    return ScaleByLearningRateState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    step_size = schedules.evaluate(lr, state.count, _hyper_dtype(updates), "learning_rate")

    def one(u):
      return kernels.scale_by_lr(u.astype(compute_dtype(u.dtype)), step_size).astype(u.dtype)

    return jax.tree.map(one, updates), ScaleByLearningRateState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
