"""``lamb``: the LAMB optimizer, computed by the engine or run as the chain of blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import jax
import optax

from lamb_optax._src import engine, precision, schedules, transforms, validation
from lamb_optax._src import groups as groups_lib
from lamb_optax._src import layout as layout_lib
from lamb_optax._src import masks as masks_lib
from lamb_optax._src import policy as policy_lib


def _chain(
  o: engine.Options, group: engine.GroupOptions, mask: masks_lib.MaskOrFn
) -> optax.GradientTransformation:
  """The chain of public blocks for one group: ``lamb(..., fused=False)``, the reference."""
  trust_mask = o.trust_ratio_mask
  if isinstance(trust_mask, str) and trust_mask == "decay":
    # The ratio applies exactly where the decay does: nowhere in a group that decays nothing.
    if schedules.is_positive_constant(group.weight_decay) is False:
      trust_mask = _nowhere
    else:
      trust_mask = mask
  trust_and_lr = [
    transforms.scale_by_trust_ratio(
      o.min_trust_ratio, o.max_trust_ratio, trust_mask, layer_axes=o.layer_axes
    ),
    transforms.scale_by_learning_rate(group.learning_rate),
  ]
  if o.decoupled_decay:
    tail = [
      transforms.with_decoupled_weight_decay(
        optax.chain(*trust_and_lr), group.learning_rate, group.weight_decay, mask
      )
    ]
  else:
    tail = [transforms.add_decayed_weights(group.weight_decay, mask), *trust_and_lr]
  return optax.chain(
    transforms.centralize_gradients(o.centralize_out_axis)
    if group.centralize
    else optax.identity(),
    transforms.scale_by_adam(
      o.b1,
      o.b2,
      o.eps,
      o.eps_root,
      o.moment_dtype,
      bias_correction=o.bias_correction,
      grad_averaging=o.grad_averaging,
      mu_dtype=o.mu_dtype,
    ),
    *tail,
  )


def _nowhere(params: Any) -> Any:
  return jax.tree.map(lambda _: False, params)


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
  mu_dtype: Optional[Any] = None,
  bias_correction: bool = True,
  grad_averaging: bool = True,
  decoupled_decay: bool = False,
  layer_axes: transforms.LayerAxes = None,
  centralize_out_axis: Optional[int] = None,
  master_weights: bool = False,
  fused: bool = True,
  layout: str = "auto",
  policy: Optional[policy_lib.Policy] = None,
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

  The optimizer is the chain ``centralize | identity -> scale_by_adam ->
  add_decayed_weights -> scale_by_trust_ratio -> scale_by_learning_rate`` of
  public blocks; by default an engine computes the same math in two passes
  over memory per leaf (or per packed bucket of small leaves), with one state
  for every platform and layout (:class:`lamb_optax.LambState`: one step count,
  the two moments, the last trust ratios). Parameter groups are per-leaf
  settings of that engine (``fused=False``: one chain per group, through
  ``optax.partition``).

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
      TF-Addons' ``exclude_from_layer_adaptation``; None applies it everywhere;
      ``"decay"`` applies it exactly where weight decay applies (the decay
      mask; with groups, the leaves of groups whose weight decay is not a
      constant 0): timm's default ``always_adapt=False``, apex without
      ``use_nvlamb``, TF-Addons' default exclusions. Other forms as ``mask``.
    min_trust_ratio: lower bound for r, or None (no clipping).
    max_trust_ratio: upper bound for r, or None (no clipping).
    moment_dtype: storage dtype of m and v; None stores float32 for
      bfloat16/float16 parameters and the parameter dtype otherwise.
    mu_dtype: storage dtype of the first moment m only (``optax.adam``'s
      ``mu_dtype``); None: as ``moment_dtype``.
    bias_correction: False drops Adam's bias corrections (``c1 = c2 = 1``):
      timm's, apex's and DeepSpeed's ``bias_correction=False``.
    grad_averaging: False accumulates ``m = b1 m + g`` (apex's and timm's
      ``grad_averaging=False``).
    decoupled_decay: True shrinks each decayed weight by ``lr wd w`` outside
      the trust ratio: ``w' = (1 - lr wd) w - lr r u`` with ``u`` the direction
      without the decay term and ``r = ||(1 - lr wd) w|| / ||u||`` (timm's
      ``decoupled_decay=True``; Keras 3's ``Lamb(weight_decay=...)``).
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
    fused: True (default) runs the engine; False runs the chain of public
      blocks itself (the readable reference, with the chain's state: a tuple
      of the blocks' states, which does not load into the engine's). In
      float32 they agree to rounding; for bfloat16/float16 the engine keeps
      the direction in float32 between stages where the chain rounds it to
      the gradient dtype.
    layout: where the state keeps each leaf's moments and ratios, and so how
      the step runs (expert override; see the README's "Speed and memory").
      ``"auto"`` (default): leaves of 2**16 elements and more keep their own
      arrays (sharded like the parameter); smaller leaves are packed into a
      few ``(rows, width)`` buffers when the tree has at least 256 of them
      (per-buffer and per-kernel costs then dominate: on 2000 leaves of 32x32
      this takes the CPU step to about half of ``optax.lamb``'s and the
      compile time to a tenth), else they keep their own arrays too.
      ``"per_leaf"``: every leaf keeps its own arrays. ``"pack_small"``: the
      leaves under 2**16 elements are packed however many there are.
      ``"packed"``: every leaf is packed. The layout depends only on the parameter tree and this
      argument, never on the platform or the device count, so a checkpoint
      restores into the same ``lamb(...)`` call anywhere; the math is the same
      for every layout (sums taken in another order).
    policy: how the step is lowered for a platform
      (:class:`lamb_optax.Policy`, expert override for benchmarks and tests);
      None picks :data:`lamb_optax.Policy.for_platform` of the platform the
      step is lowered for. It does not change the state.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    TypeError: ``learning_rate`` of an unsupported kind; ``b1``, ``b2``,
      ``eps``, ``eps_root`` or ``weight_decay`` not a real number (bool is
      not); ``grad_centralization`` not a bool.
    ValueError: ``eps <= 0``; ``b1`` or ``b2`` outside (0, 1);
      ``weight_decay < 0``; NaN; negative or 2-D learning rates; bad groups;
      an unknown ``layout``; ``layout`` or ``policy`` with ``fused=False``.
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
  if not (isinstance(trust_ratio_mask, str) and trust_ratio_mask == "decay"):
    masks_lib.check_mask("trust_ratio_mask", trust_ratio_mask)
  validation.check_optional_ratio_bounds(min_trust_ratio, max_trust_ratio)
  validation.check_dtype("moment_dtype", moment_dtype)
  validation.check_dtype("mu_dtype", mu_dtype)
  validation.check_bool("bias_correction", bias_correction)
  validation.check_bool("grad_averaging", grad_averaging)
  validation.check_bool("decoupled_decay", decoupled_decay)
  if centralize_out_axis is None:
    centralize_out_axis = -1
  elif isinstance(centralize_out_axis, bool) or not isinstance(centralize_out_axis, int):
    raise TypeError(
      f"`centralize_out_axis` must be an int or None, got {centralize_out_axis!r} (under"
      " optax.inject_hyperparams, list it in static_args or use lamb_optax.inject_hyperparams)."
    )
  validation.check_bool("master_weights", master_weights)
  validation.check_bool("fused", fused)
  if not isinstance(layout, str):
    raise TypeError(f"`layout` must be a str, got {type(layout).__name__} {layout!r}.")
  if layout not in layout_lib.MODES:
    raise ValueError(f"`layout` must be one of {list(layout_lib.MODES)}, got {layout!r}.")
  if policy is not None and not isinstance(policy, policy_lib.Policy):
    raise TypeError(
      f"`policy` must be a lamb_optax.Policy or None, got {type(policy).__name__} {policy!r}."
    )
  if not fused and (layout != "auto" or policy is not None):
    raise ValueError(
      f"`layout={layout!r}` and `policy={policy!r}` configure the engine; `fused=False` runs the"
      " chain of blocks instead. Pass one or the other."
    )
  if groups is None:
    group_options = (engine.GroupOptions(lr, weight_decay, False),)
    labels, engine_mask = None, mask
  else:
    parsed = groups_lib.parse_groups(groups, lr, weight_decay)
    group_options = tuple(
      engine.GroupOptions(g.lr, g.weight_decay, g.grad_centralization) for g in parsed.groups
    )
    engine_mask = None if isinstance(mask, str) and mask == "mindspore" else mask

    def labels(params: Any) -> list[int]:
      return groups_lib.assign(parsed, params)

  o = engine.Options(
    groups=group_options,
    labels=labels,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mask=engine_mask,
    trust_ratio_mask=trust_ratio_mask,
    min_trust_ratio=min_trust_ratio,
    max_trust_ratio=max_trust_ratio,
    moment_dtype=moment_dtype,
    mu_dtype=mu_dtype,
    bias_correction=bias_correction,
    grad_averaging=grad_averaging,
    decoupled_decay=decoupled_decay,
    layer_axes=layer_axes,
    centralize_out_axis=centralize_out_axis,
    layout=layout,
    policy=policy,
  )
  if fused:
    tx = engine.lamb_engine(o)
  elif groups is None:
    tx = _chain(o, group_options[0], engine_mask)
  else:
    chains = {f"group_{i}": _chain(o, g, engine_mask) for i, g in enumerate(group_options)}

    def chain_labels(params: Any) -> Any:
      names = [f"group_{i}" for i in labels(params)]
      return jax.tree.unflatten(jax.tree.structure(params), names)

    tx = optax.partition(chains, chain_labels)
  if not fused:
    tx = _with_state_check(tx)
  tx = precision.with_master_weights(tx) if master_weights else tx
  # Hyperparameters traced by optax.inject_hyperparams inside a jitted init could not be
  # range-checked above: check them when that init runs.
  runtime_checks = [
    (validation.check_open_unit, "b1", b1),
    (validation.check_open_unit, "b2", b2),
    (validation.check_positive, "eps", eps),
    (validation.check_non_negative, "eps_root", eps_root),
    (validation.check_non_negative, "weight_decay", weight_decay),
    (validation.check_non_negative, "learning_rate", lr),
    (validation.check_non_negative, "min_trust_ratio", min_trust_ratio),
    (validation.check_max_ratio, "max_trust_ratio", max_trust_ratio),
  ]
  if not any(validation.is_traced(value) for _, _, value in runtime_checks):
    return tx

  def init_fn(params):
    validation.check_when_run(runtime_checks)
    return tx.init(params)

  return type(tx)(init_fn, tx.update)


def _with_state_check(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """The chain, with an error that names the problem when ``update`` gets a foreign state."""
  tx = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    if params is not None:
      expected = jax.tree.structure(jax.eval_shape(tx.init, params))
      if jax.tree.structure(state) != expected:
        raise TypeError(
          "`state` is not the state this optimizer's `init` makes for these parameters"
          f" (got {type(state).__name__}). A checkpoint restored without a target is a plain"
          " dict: restore it against `jax.eval_shape(tx.init, params)`.\n"
          f"  state: {jax.tree.structure(state)}\n  expected: {expected}"
        )
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)
