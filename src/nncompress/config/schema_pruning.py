"""JSON Schema of the NNCF 2.x ``filter_pruning`` section.

Key names and allowed values follow NNCF 2.x; pruning levels are additionally bounded to
``[0, 1]``.
"""

from __future__ import annotations

from nncompress.config.schema_common import (
    GENERIC_INITIALIZER,
    SCOPING_PROPERTIES,
    algorithm_section,
    boolean,
    integer,
    level,
    strict_object,
    string,
)

PRUNING_SCHEDULES = ("exponential", "exponential_with_bias", "baseline")
"""Values of ``params.schedule`` (the same as :data:`nncompress.functional.pruning_schedules.PRUNING_SCHEDULES`)."""

FILTER_IMPORTANCES = ("L2", "L1", "geometric_median")
"""Values of ``params.filter_importance`` (as :data:`nncompress.functional.importance.FILTER_IMPORTANCES`)."""

INTERLAYER_RANKING_TYPES = ("unweighted_ranking", "learned_ranking")
"""Values of ``params.interlayer_ranking_type``."""

_LEGR_PARAMS = strict_object(
    {
        "generations": integer("Generations of the evolutionary search."),
        "train_steps": integer("Training steps used to estimate a pruned model's accuracy."),
        "max_pruning": level("Highest pruning level the learned ranking will be used for."),
        "random_seed": integer("Seed of the ranking coefficient generation.", minimum=None),
    },
    "Parameters of the LeGR learned ranking.",
)

FILTER_PRUNING_SCHEMA = algorithm_section(
    "filter_pruning",
    {
        "pruning_init": level("Pruning level applied when the algorithm is created (default 0)."),
        "initializer": GENERIC_INITIALIZER,
        "params": strict_object(
            {
                "schedule": string("How the pruning level grows during training.", PRUNING_SCHEDULES),
                "pruning_target": level("Pruning level reached after `pruning_steps` epochs."),
                "pruning_flops_target": level("Share of the model FLOPs to remove instead."),
                "pruning_steps": integer("Epochs over which the level grows to the target."),
                "num_init_steps": integer("Epochs of training before pruning starts."),
                "filter_importance": string("Filter importance metric.", FILTER_IMPORTANCES),
                "interlayer_ranking_type": string(
                    "How filters of different layers are ranked together.", INTERLAYER_RANKING_TYPES
                ),
                "all_weights": boolean("Rank the filters of all layers together."),
                "prune_first_conv": boolean("Also prune the first convolutions of the model."),
                "prune_downsample_convs": boolean("Also prune convolutions with stride > 1."),
                "prune_batch_norms": boolean("Also prune the BatchNorms after pruned convolutions."),
                "channel_multiple": integer(
                    "nncompress: channels kept per group are rounded up to a multiple of this (default 16, "
                    "the block width of onnxruntime's fast CPU convolutions; NNCF 2.x rounded to 8); 1 keeps "
                    "exact counts.",
                    minimum=1,
                ),
                "zero_grad": boolean("Zero the gradients of pruned filters during training (default true; "
                                     "false lets them keep learning, so they may come back)."),
                "legr_params": _LEGR_PARAMS,
                "save_ranking_coeffs_path": string("File to save the LeGR ranking coefficients to."),
                "load_ranking_coeffs_path": string("File to load the LeGR ranking coefficients from."),
            },
            "Schedule and ranking of filter pruning.",
        ),
        **SCOPING_PROPERTIES,
    },
    "Removes whole convolution filters (output channels) during training.",
)
"""Schema of a ``filter_pruning`` section."""
