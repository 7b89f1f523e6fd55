"""Ready-made weight-decay / trust-ratio masks and path helpers.

Every mask is a function ``params -> bool pytree`` that looks only at leaf
paths and shapes, so it works with Linen param dicts and ``flax.nnx`` state.
"""

import warnings
from typing import Any

from lamb_optax._src.masks import flax_weights as flax_weights
from lamb_optax._src.masks import from_regex as from_regex
from lamb_optax._src.masks import mindspore as mindspore
from lamb_optax._src.masks import named_leaves as named_leaves
from lamb_optax._src.masks import path_str as path_str

__all__ = ["flax_weights", "from_regex", "mindspore", "named_leaves", "path_str"]


def __getattr__(name: str) -> Any:
  # `masks.flax` (0.1.0) was renamed: `from lamb_optax.masks import flax` shadowed the package.
  if name == "flax":
    warnings.warn(
      "`lamb_optax.masks.flax` is deprecated: use `lamb_optax.masks.flax_weights`, the same"
      " rule under a name that does not shadow the `flax` package (the string rule"
      " mask='flax' is unchanged).",
      DeprecationWarning,
      stacklevel=2,
    )
    return flax_weights
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
