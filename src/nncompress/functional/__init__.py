"""Pure tensor-in, tensor-out (or float-in, float-out) math: no model walking, no state.

- :mod:`nncompress.functional.sparsity`: magnitude importance, thresholds, masks, sparsity rate.
- :mod:`nncompress.functional.schedules`: NNCF 2.x sparsity-level schedules and their defaults.
- :mod:`nncompress.functional.quantize`: integer ranges, scale/zero point, (fake) quantization, LSQ.
  Not re-exported here: its function ``quantize`` would shadow the submodule of that name.
"""

from nncompress.functional.schedules import (
    DEFAULT_ADAPTIVE_EPS,
    DEFAULT_ADAPTIVE_STEP,
    DEFAULT_CONCAVE,
    DEFAULT_MULTISTEP_LEVELS,
    DEFAULT_MULTISTEP_STEPS,
    DEFAULT_PATIENCE,
    DEFAULT_POWER,
    DEFAULT_RB_SCHEDULE,
    DEFAULT_SCHEDULE,
    DEFAULT_SPARSITY_FREEZE_EPOCH,
    DEFAULT_SPARSITY_INIT,
    DEFAULT_SPARSITY_TARGET,
    DEFAULT_SPARSITY_TARGET_EPOCH,
    DEFAULT_UPDATE_PER_OPTIMIZER_STEP,
    adaptive_level,
    exponential_level,
    fractional_epoch,
    multistep_level,
    polynomial_level,
)
from nncompress.functional.sparsity import (
    DEFAULT_WEIGHT_IMPORTANCE,
    WEIGHT_IMPORTANCE_MODES,
    binary_mask,
    global_threshold,
    local_threshold,
    sparsity_rate,
    weight_importance,
)

__all__ = [
    "DEFAULT_ADAPTIVE_EPS",
    "DEFAULT_ADAPTIVE_STEP",
    "DEFAULT_CONCAVE",
    "DEFAULT_MULTISTEP_LEVELS",
    "DEFAULT_MULTISTEP_STEPS",
    "DEFAULT_PATIENCE",
    "DEFAULT_POWER",
    "DEFAULT_RB_SCHEDULE",
    "DEFAULT_SCHEDULE",
    "DEFAULT_SPARSITY_FREEZE_EPOCH",
    "DEFAULT_SPARSITY_INIT",
    "DEFAULT_SPARSITY_TARGET",
    "DEFAULT_SPARSITY_TARGET_EPOCH",
    "DEFAULT_UPDATE_PER_OPTIMIZER_STEP",
    "DEFAULT_WEIGHT_IMPORTANCE",
    "WEIGHT_IMPORTANCE_MODES",
    "adaptive_level",
    "binary_mask",
    "exponential_level",
    "fractional_epoch",
    "global_threshold",
    "local_threshold",
    "multistep_level",
    "polynomial_level",
    "sparsity_rate",
    "weight_importance",
]
