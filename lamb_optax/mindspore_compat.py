"""The MindSpore-shaped surface: ``Lamb(...)``, schedule classes, dynamic-lr lists.

Values match MindSpore 2.10 (``tests/data/mindspore_lr_schedules.json`` holds
values read from MindSpore itself). The schedule classes return optax schedules
(callables ``step -> lr`` that work under ``jax.jit``); the list functions
return lists of floats, a form ``lamb`` accepts as a per-step learning rate.
"""

from lamb_optax._src.mindspore import CosineDecayLR as CosineDecayLR
from lamb_optax._src.mindspore import ExponentialDecayLR as ExponentialDecayLR
from lamb_optax._src.mindspore import InverseDecayLR as InverseDecayLR
from lamb_optax._src.mindspore import Lamb as Lamb
from lamb_optax._src.mindspore import NaturalExpDecayLR as NaturalExpDecayLR
from lamb_optax._src.mindspore import PolynomialDecayLR as PolynomialDecayLR
from lamb_optax._src.mindspore import WarmUpLR as WarmUpLR
from lamb_optax._src.mindspore import cosine_decay_lr as cosine_decay_lr
from lamb_optax._src.mindspore import exponential_decay_lr as exponential_decay_lr
from lamb_optax._src.mindspore import inverse_decay_lr as inverse_decay_lr
from lamb_optax._src.mindspore import natural_exp_decay_lr as natural_exp_decay_lr
from lamb_optax._src.mindspore import piecewise_constant_lr as piecewise_constant_lr
from lamb_optax._src.mindspore import polynomial_decay_lr as polynomial_decay_lr
from lamb_optax._src.mindspore import warmup_lr as warmup_lr

__all__ = [
  "CosineDecayLR",
  "ExponentialDecayLR",
  "InverseDecayLR",
  "Lamb",
  "NaturalExpDecayLR",
  "PolynomialDecayLR",
  "WarmUpLR",
  "cosine_decay_lr",
  "exponential_decay_lr",
  "inverse_decay_lr",
  "natural_exp_decay_lr",
  "piecewise_constant_lr",
  "polynomial_decay_lr",
  "warmup_lr",
]
