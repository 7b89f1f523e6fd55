"""lamb_optax: the LAMB optimizer for JAX, as composable optax transformations."""

from lamb_optax import masks as masks
from lamb_optax import mindspore_compat as mindspore_compat
from lamb_optax._src.alias import lamb as lamb
from lamb_optax._src.diagnostics import group_hyperparams as group_hyperparams
from lamb_optax._src.diagnostics import trust_ratios as trust_ratios
from lamb_optax._src.engine import LambState as LambState
from lamb_optax._src.inject import inject_hyperparams as inject_hyperparams
from lamb_optax._src.layout import Moments as Moments
from lamb_optax._src.layout import TrustRatios as TrustRatios
from lamb_optax._src.policy import Policy as Policy
from lamb_optax._src.precision import MasterWeightsState as MasterWeightsState
from lamb_optax._src.precision import with_master_weights as with_master_weights
from lamb_optax._src.sharding import layer_axes_from_partitioning as layer_axes_from_partitioning
from lamb_optax._src.sharding import layer_axes_from_regex as layer_axes_from_regex
from lamb_optax._src.sharding import state_shardings as state_shardings
from lamb_optax._src.transforms import AddDecayedWeightsState as AddDecayedWeightsState
from lamb_optax._src.transforms import ScaleByAdamState as ScaleByAdamState
from lamb_optax._src.transforms import ScaleByLearningRateState as ScaleByLearningRateState
from lamb_optax._src.transforms import ScaleByTrustRatioState as ScaleByTrustRatioState
from lamb_optax._src.transforms import (
  WithDecoupledWeightDecayState as WithDecoupledWeightDecayState,
)
from lamb_optax._src.transforms import add_decayed_weights as add_decayed_weights
from lamb_optax._src.transforms import centralize_gradients as centralize_gradients
from lamb_optax._src.transforms import scale_by_adam as scale_by_adam
from lamb_optax._src.transforms import scale_by_learning_rate as scale_by_learning_rate
from lamb_optax._src.transforms import scale_by_trust_ratio as scale_by_trust_ratio
from lamb_optax._src.transforms import with_decoupled_weight_decay as with_decoupled_weight_decay

__version__ = "0.1.0"

__all__ = [
  "AddDecayedWeightsState",
  "LambState",
  "MasterWeightsState",
  "Moments",
  "Policy",
  "ScaleByAdamState",
  "ScaleByLearningRateState",
  "ScaleByTrustRatioState",
  "TrustRatios",
  "WithDecoupledWeightDecayState",
  "add_decayed_weights",
  "centralize_gradients",
  "group_hyperparams",
  "inject_hyperparams",
  "lamb",
  "layer_axes_from_partitioning",
  "layer_axes_from_regex",
  "masks",
  "mindspore_compat",
  "scale_by_adam",
  "scale_by_learning_rate",
  "scale_by_trust_ratio",
  "state_shardings",
  "trust_ratios",
  "with_decoupled_weight_decay",
  "with_master_weights",
]
