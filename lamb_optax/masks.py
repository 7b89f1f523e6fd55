"""Ready-made weight-decay / trust-ratio masks and path helpers.

Every mask is a function ``params -> bool pytree`` that looks only at leaf
paths and shapes, so it works with Linen param dicts and ``flax.nnx`` state.
"""

from lamb_optax._src.masks import flax as flax
from lamb_optax._src.masks import from_regex as from_regex
from lamb_optax._src.masks import mindspore as mindspore
from lamb_optax._src.masks import named_leaves as named_leaves
from lamb_optax._src.masks import path_str as path_str

__all__ = ["flax", "from_regex", "mindspore", "named_leaves", "path_str"]
