"""``lamb``: the LAMB optimizer as a fixed-length chain of lamb_optax blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import jax
import numpy as np
import optax

from lamb_optax._src import fused as fused_lib
from lamb_optax._src import groups as groups_lib
from lamb_optax._src import masks as masks_lib
from lamb_optax._src import precision, schedules, transforms, validation
from lamb_optax._src.multi_tensor import multi_tensor_lamb


def _chain(
  *, fused: bool, multi_tensor: Union[bool, str], **options: Any
) -> optax.GradientTransformationExtraArgs:
  """The chain of blocks for one set of options, as ``lamb``'s ``fused``/``multi_tensor`` say.

  ``options`` are the fields of :class:`fused_lib.Options`; the fused paths take
  the chain too (the default path uses its init, so both have one state).
  """
  o = fused_lib.Options(**options)
  chain = optax.chain(
    transforms.centralize_gradients(o.centralize_out_axis) if o.centralize else optax.identity(),
    transforms.scale_by_adam(o.b1, o.b2, o.eps, o.eps_root, o.moment_dtype),
    transforms.add_decayed_weights(o.weight_decay, o.mask),
    transforms.scale_by_trust_ratio(
      o.min_trust_ratio, o.max_trust_ratio, o.trust_ratio_mask, layer_axes=o.layer_axes
    ),
    transforms.scale_by_learning_rate(o.learning_rate),
  )
  if multi_tensor:
    return multi_tensor_lamb(chain, o, pack_all=multi_tensor == "all")
  if not fused:
    return chain
  return fused_lib.fused_lamb(chain, o)


def lamb(
  learning_rate: schedules.LearningRate,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-6,
  eps_root: jax.typing.ArrayLike = 0.0,
  weight_decay: transforms.ScalarOrSchedule = 0.0,
  mask: masks_lib.MaskOrFn = "mindspore",
  *,
  groups: Optional[Sequence[dict[str, Any]]] = None,
  trust_ratio_mask: masks_lib.MaskOrFn = None,
  min_trust_ratio: Optional[jax.typing.ArrayLike] = None,
  max_trust_ratio: Optional[jax.typing.ArrayLike] = None,
  moment_dtype: Optional[Any] = None,
  layer_axes: transforms.LayerAxes = None,
  centralize_out_axis: Optional[int] = None,
  master_weights: bool = False,
  fused: bool = True,
  multi_tensor: Union[bool, str] = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The LAMB optimizer (layer-wise adaptive moments for large batches).

  Per parameter leaf, at step :math:`t = count + 1`:

  .. math::
    g &\leftarrow \operatorname{centralize}(g) \quad \text{(groups with grad_centralization)} \\
    m &\leftarrow b_1 m + (1-b_1) g, \qquad v \leftarrow b_2 v + (1-b_2) g^2 \\
    u &\leftarrow \frac{m/(1-b_1^t)}{\sqrt{v/(1-b_2^t) + \epsilon_{root}} + \epsilon}
         + wd_t\, w \quad \text{(where the decay mask is True)} \\
    r &\leftarrow \|w\|/\|u\| \text{ if both norms} > 0 \text{ else } 1,
         \text{ clipped to } [min, max] \text{ if given} \\
    w &\leftarrow w - lr_t\, r\, u

  This is MindSpore 2.x's ``nn.Lamb`` and, with the same mask, ``optax.lamb``
  (whose signature this extends: it is a drop-in replacement). Arithmetic and
  norms run in float32 for low-precision parameters. ``lr_t`` is the learning
  rate of step ``count`` (0-based).

  The optimizer is ``optax.chain(centralize | identity, scale_by_adam,
  add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate)``, by
  default fused into two passes over memory per leaf; with ``groups`` each
  group gets such a chain through ``optax.partition``.

  Args:
    learning_rate: a number >= 0, a 0-d array, a 1-D array / list / iterable
      (one value per step; past the end the last value holds) or a schedule
      ``count -> lr``.
    b1: decay rate of the first moment, in (0, 1).
    b2: decay rate of the second moment, in (0, 1).
    eps: added to the denominator outside the square root, > 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: a number >= 0 or a schedule ``count -> wd`` (dynamic weight
      decay).
    mask: which leaves are decayed. The default ``"mindspore"`` is MindSpore's
      rule: decay a leaf iff its ``/``-joined path contains neither ``beta``
      nor ``gamma``. ``None`` decays every leaf (``optax.lamb``'s default);
      ``"flax"`` skips biases and norm scales; or a bool pytree (or prefix), or
      a callable ``params -> bool pytree`` (see :mod:`lamb_optax.masks`). With
      ``groups``, the default means "every leaf of a group whose weight decay
      is > 0"; an explicit mask further restricts that.
    groups: MindSpore-style parameter groups, a list of dicts with keys
      ``params`` (a regex searched in the path, a callable
      ``(path, leaf) -> bool`` or a list of exact paths), ``lr``,
      ``weight_decay``, ``grad_centralization`` (bool; centralizes the
      group's convolution kernels, a 2-D leaf in such a group is an error), or
      a dict holding only ``order_params`` (a list of paths, each of which must
      belong to a group; it is validated and otherwise has no effect, because
      XLA schedules the fused update itself). Every leaf must be in exactly
      one group.
    trust_ratio_mask: where False the trust ratio is not applied (r = 1), as
      TF-Addons' ``exclude_from_layer_adaptation``; None applies it everywhere.
    min_trust_ratio: lower bound for r, or None (no clipping).
    max_trust_ratio: upper bound for r, or None (no clipping).
    moment_dtype: storage dtype of m and v; None stores float32 for
      bfloat16/float16 parameters and the parameter dtype otherwise.
    layer_axes: leading axes of a leaf that index independent (stacked,
      scanned) layers: an int, an int pytree or ``params -> int pytree``; each
      layer gets its own trust ratio. None: one ratio per leaf.
    centralize_out_axis: output-channel axis for gradient centralization;
      None means the last axis (Flax's channel-last layout); 0 for PyTorch and
      MindSpore layouts.
    master_weights: keep a float32 copy of bfloat16/float16 parameters in the
      state (4 bytes per such parameter) and emit float32 updates that make
      each parameter equal its rounded master (apex/Paddle multi-precision).
      No effect on float32/float64 parameters.
    fused: True (default) computes the chain's math in two passes over memory
      per leaf (``lamb_optax._src.fused``); False runs the chain of blocks
      itself. Both have the same state. In float32 they agree to rounding; for
      bfloat16/float16 the fused path keeps the direction in float32 between
      stages where the chain rounds it to the gradient dtype.
    multi_tensor: True packs the moments of leaves under 65536 elements into
      a few flat buffers (up to 64 leaves each, per dtype and mask) and
      computes their step there, with each trust ratio from a segment sum;
      larger leaves keep their own arrays and the fused step
      (``lamb_optax._src.multi_tensor``). Same math as the default. For
      models with many small leaves it cuts compile time and per-step host
      time (2000 leaves of 32x32 on CPU: 0.49x optax.lamb's step, 0.12x its
      compile time; see the README). Not the default: packed state is not
      sharded like the parameters (use it on one device or with data
      parallelism), and its state has another structure (checkpoints do not
      carry over between the two settings). Needs ``fused=True``.
      ``"all"`` packs every leaf, large ones too: fewer, larger kernels and
      fewer buffers per call, which is what GPUs want (on an H200, a trial of
      this layout took BERT-base's step to 6.9 ms against optax.lamb's 10.8
      ms; see the README). On CPU it is slower than ``True`` (the packing
      copies g and w of the large leaves), and no large leaf keeps a sharding
      of its own.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    TypeError: ``learning_rate`` of an unsupported kind; ``b1``, ``b2``,
      ``eps``, ``eps_root`` or ``weight_decay`` not a real number (bool is
      not); ``grad_centralization`` not a bool.
    ValueError: ``eps <= 0``; ``b1`` or ``b2`` outside (0, 1);
      ``weight_decay < 0``; NaN; negative or 2-D learning rates; bad groups;
      ``multi_tensor`` with ``fused=False``.
    KeyError: a group holds an unknown key.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import lamb_optax
    >>> params = {"w": jnp.array([1.0, 2.0, 3.0])}
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = lamb_optax.lamb(learning_rate=0.1, weight_decay=0.01)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(f"{loss(params):.3f}")
    7.922

  References:
    You et al., `Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes <https://arxiv.org/abs/1904.00962>`_, 2020.
  """
  lr = schedules.as_schedule("learning_rate", learning_rate)
  validation.check_open_unit("b1", b1)
  validation.check_open_unit("b2", b2)
  validation.check_positive("eps", eps)
  validation.check_non_negative("eps_root", eps_root)
  validation.check_scalar_or_schedule("weight_decay", weight_decay)
  masks_lib.check_mask("mask", mask)
  masks_lib.check_mask("trust_ratio_mask", trust_ratio_mask)
  validation.check_optional_ratio_bounds(min_trust_ratio, max_trust_ratio)
  validation.check_dtype("moment_dtype", moment_dtype)
  if centralize_out_axis is None:
    centralize_out_axis = -1
  elif isinstance(centralize_out_axis, bool) or not isinstance(centralize_out_axis, int):
    raise TypeError(
      f"`centralize_out_axis` must be an int or None, got {centralize_out_axis!r} (under"
      " optax.inject_hyperparams, list it in static_args or use lamb_optax.inject_hyperparams)."
    )
  common = dict(
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    centralize_out_axis=centralize_out_axis,
    trust_ratio_mask=trust_ratio_mask,
    min_trust_ratio=min_trust_ratio,
    max_trust_ratio=max_trust_ratio,
    moment_dtype=moment_dtype,
    layer_axes=layer_axes,
    fused=fused,
    multi_tensor=multi_tensor,
  )
  validation.check_bool("master_weights", master_weights)
  validation.check_bool("fused", fused)
  if not (isinstance(multi_tensor, (bool, np.bool_)) or multi_tensor == "all"):
    raise TypeError(
      f"`multi_tensor` must be a bool or 'all', got {type(multi_tensor).__name__} {multi_tensor!r}."
    )
  if multi_tensor and not fused:
    raise ValueError(
      f"`multi_tensor={multi_tensor!r}` computes the fused update on flat buffers; it cannot be"
      " combined with `fused=False` (the chain of blocks). Pass one of them."
    )
  wrap = precision.with_master_weights if master_weights else (lambda tx: tx)
  if groups is None:
    return wrap(
      _chain(learning_rate=lr, weight_decay=weight_decay, mask=mask, centralize=False, **common)
    )

  parsed = groups_lib.parse_groups(groups, lr, weight_decay)
  group_mask = None if isinstance(mask, str) and mask == "mindspore" else mask
  chains = {
    g.label: _chain(
      learning_rate=g.lr,
      weight_decay=g.weight_decay,
      mask=group_mask,
      centralize=g.grad_centralization,
      **common,
    )
    for g in parsed.groups
  }

  def labels(params: Any) -> Any:
    owner = groups_lib.assign(parsed, params)
    names = [parsed.groups[i].label for i in owner]
    return jax.tree.unflatten(jax.tree.structure(params), names)

  return wrap(optax.partition(chains, labels))
