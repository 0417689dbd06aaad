"""JSON Schemas of the NNCF 2.x sparsity sections.

``magnitude_sparsity``, ``rb_sparsity``, ``const_sparsity`` and ``movement_sparsity``. Key names
and allowed values follow NNCF 2.x; sparsity levels are additionally bounded to ``[0, 1]`` and
epoch/step counts must be non-negative integers.
"""

from __future__ import annotations

from nncompress.config.schema_common import (
    COMPRESSION_LR_MULTIPLIER,
    GENERIC_INITIALIZER,
    SCOPES,
    SCOPING_PROPERTIES,
    Schema,
    algorithm_section,
    array_of,
    boolean,
    integer,
    level,
    number,
    strict_object,
    string,
)

SPARSITY_SCHEDULES = ("polynomial", "exponential", "adaptive", "multistep")
"""Values of ``params.schedule`` for magnitude and RB sparsity."""

SPARSITY_LEVEL_SETTING_MODES = ("global", "local")
"""Values of ``params.sparsity_level_setting_mode``."""

WEIGHT_IMPORTANCES = ("abs", "normed_abs")
"""Values of ``params.weight_importance`` (magnitude sparsity)."""

_SPARSITY_INIT: dict[str, Schema] = {
    "sparsity_init": level("Sparsity level applied when the algorithm is created (default 0)."),
}

_COMMON_SPARSITY_PARAMS: dict[str, Schema] = {
    "schedule": string("How the sparsity level grows during training.", SPARSITY_SCHEDULES),
    "sparsity_target": level("Sparsity level reached at `sparsity_target_epoch`."),
    "sparsity_target_epoch": integer("Epoch at which the level reaches `sparsity_target`."),
    "sparsity_freeze_epoch": integer("Epoch from which the sparsity masks stop changing."),
    "sparsity_level_setting_mode": string(
        "'global': one level over all weights of the model; 'local': a level per layer.",
        SPARSITY_LEVEL_SETTING_MODES,
    ),
    "update_per_optimizer_step": boolean("Update the level on every scheduler step instead of every epoch."),
    "steps_per_epoch": integer(
        "Optimizer steps per epoch, needed with `update_per_optimizer_step` in the first epoch.",
        minimum=1,
    ),
    "multistep_steps": array_of(
        integer("An epoch index."), "Epochs at which the multistep schedule moves to its next level."
    ),
    "multistep_sparsity_levels": array_of(
        level("A sparsity level."),
        "Levels of the multistep schedule: one more than `multistep_steps`; the first applies at once.",
    ),
    "patience": integer("Adaptive schedule: epochs without improvement before the level grows."),
    "power": number("Polynomial schedule: the exponent of the polynomial."),
    "concave": boolean("Polynomial schedule: approach the target in a concave (true) or convex way."),
}

MAGNITUDE_SPARSITY_SCHEMA = algorithm_section(
    "magnitude_sparsity",
    {
        **_SPARSITY_INIT,
        "params": strict_object(
            {
                **_COMMON_SPARSITY_PARAMS,
                "weight_importance": string(
                    "How weights are ranked: by absolute value, or by absolute value divided by "
                    "the layer's L2 norm.",
                    WEIGHT_IMPORTANCES,
                ),
            },
            "Schedule and ranking of magnitude sparsity.",
        ),
        "initializer": GENERIC_INITIALIZER,
        **SCOPING_PROPERTIES,
        **COMPRESSION_LR_MULTIPLIER,
    },
    "Zeroes the weights of smallest magnitude, following a sparsity-level schedule.",
)
"""Schema of a ``magnitude_sparsity`` section."""

RB_SPARSITY_SCHEMA = algorithm_section(
    "rb_sparsity",
    {
        **_SPARSITY_INIT,
        "params": strict_object(_COMMON_SPARSITY_PARAMS, "Schedule of RB sparsity."),
        "initializer": GENERIC_INITIALIZER,
        **SCOPING_PROPERTIES,
        **COMPRESSION_LR_MULTIPLIER,
    },
    "Regularization-based sparsity: learns which weights to zero with a sparsity loss.",
)
"""Schema of an ``rb_sparsity`` section."""

CONST_SPARSITY_SCHEMA = algorithm_section(
    "const_sparsity",
    {**SCOPING_PROPERTIES},
    "Keeps the sparsity masks loaded from a checkpoint fixed; takes no parameters.",
)
"""Schema of a ``const_sparsity`` section."""

MOVEMENT_SPARSE_STRUCTURE_MODES = ("fine", "block", "per_dim")
"""Values of ``sparse_structure_by_scopes[].mode`` (movement sparsity)."""

MOVEMENT_SPARSITY_SCHEMA = algorithm_section(
    "movement_sparsity",
    {
        "params": strict_object(
            {
                "warmup_start_epoch": integer("First epoch of the warm-up stage."),
                "warmup_end_epoch": integer("Epoch that ends the warm-up stage (excluded)."),
                "importance_regularization_factor": number("Regularization factor on the importance scores."),
                "enable_structured_masking": boolean("Resolve structured masks after the warm-up stage."),
                "power": number("Exponent of the polynomial threshold decay."),
                "init_importance_threshold": number("Importance threshold at the warm-up start."),
                "final_importance_threshold": number("Importance threshold at the warm-up end."),
                "steps_per_epoch": integer("Training steps per epoch.", minimum=1),
                "schedule": string(
                    "Threshold schedule (older NNCF 2.x releases).", ["threshold_polynomial_decay"]
                ),
                "update_per_optimizer_step": boolean(
                    "Update the schedule on every optimizer step (older NNCF 2.x releases)."
                ),
            },
            "Warm-up schedule of movement sparsity.",
            ["warmup_start_epoch", "warmup_end_epoch", "importance_regularization_factor"],
        ),
        "sparse_structure_by_scopes": array_of(
            strict_object(
                {
                    "mode": string("How the matched layers are sparsified.", MOVEMENT_SPARSE_STRUCTURE_MODES),
                    "sparse_factors": array_of(
                        integer("A block dimension.", minimum=1), "Block shape for mode 'block'."
                    ),
                    "axis": integer("Dimension sparsified for mode 'per_dim'."),
                    "target_scopes": {**SCOPES, "description": "Layers this structure applies to."},
                },
                "Sparse structure of a group of layers.",
                ["mode", "target_scopes"],
            ),
            "Sparse structure of each group of layers.",
        ),
        **SCOPING_PROPERTIES,
        **COMPRESSION_LR_MULTIPLIER,
    },
    "Movement sparsity for fine-tuning transformers: learns weight importance scores.",
)
"""Schema of a ``movement_sparsity`` section."""
