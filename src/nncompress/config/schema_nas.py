"""JSON Schema of the NNCF 2.x top-level ``bootstrapNAS`` section (neural architecture search).

nncompress does not implement BootstrapNAS; the schema exists so that NAS configs are recognised
(and rejected with a "not supported" error) rather than mistaken for typos.
"""

from __future__ import annotations

from nncompress.config.schema_common import (
    BATCHNORM_ADAPTATION,
    SCOPING_PROPERTIES,
    array_of,
    boolean,
    integer,
    number,
    object_or_list_of,
    strict_object,
    string,
)
from nncompress.config.schema_distillation import KNOWLEDGE_DISTILLATION_SCHEMA

_STRINGS = {"type": "array", "items": {"type": "string"}}

_ELASTICITY = strict_object(
    {
        "depth": strict_object(
            {
                "skipped_blocks": array_of(_STRINGS, "Blocks that may be skipped: [start, end] names."),
                "min_block_size": integer("Auto mode: fewest operations in a skipped block."),
                "max_block_size": integer("Auto mode: most operations in a skipped block."),
                "hw_fused_ops": boolean("Keep operations fused at inference in the same block."),
            },
            "Elastic depth.",
        ),
        "width": strict_object(
            {
                "min_width": integer("Fewest output channels a layer may keep."),
                "max_num_widths": integer("Most width values per layer (-1: no limit).", minimum=-1),
                "width_step": integer("Step between generated width values."),
                "width_multipliers": array_of(number("A width multiplier."), "Width multipliers."),
                "filter_importance": string("Filter importance metric used to reorder filters."),
                "external_importance_path": string("File with external filter importances."),
            },
            "Elastic width.",
        ),
        "kernel": strict_object(
            {"max_num_kernels": integer("Most kernel sizes per layer (-1: no limit).", minimum=-1)},
            "Elastic kernel size.",
        ),
        "available_elasticity_dims": {**_STRINGS, "description": "Elastic dimensions to sample."},
        "ignored_scopes": SCOPING_PROPERTIES["ignored_scopes"],
        "target_scopes": SCOPING_PROPERTIES["target_scopes"],
    },
    "Elastic dimensions of the super-network.",
)

_STAGE = strict_object(
    {
        "train_dims": {**_STRINGS, "description": "Elastic dimensions trained in this stage."},
        "epochs": integer("Length of the stage in epochs."),
        "depth_indicator": integer("How many blocks per group may be skipped."),
        "width_indicator": integer("How many width values per layer may be used."),
        "reorg_weights": boolean("Reorder filters by importance at the start of the stage."),
        "bn_adapt": boolean("Adapt BatchNorm statistics at the start of the stage."),
        "init_lr": number("Learning rate the stage starts from."),
        "epochs_lr": integer("Epochs over which the stage's learning rate is adjusted."),
        "sample_rate": integer("Iterations per sampled sub-network.", minimum=1),
    },
    "One stage of super-network training.",
)

_TRAINING = strict_object(
    {
        "algorithm": string("Super-network training strategy.", ["progressive_shrinking"]),
        "progressivity_of_elasticity": {**_STRINGS, "description": "Order elastic dimensions are added in."},
        "batchnorm_adaptation": BATCHNORM_ADAPTATION,
        "schedule": strict_object(
            {"list_stage_descriptions": array_of(_STAGE, "The training stages.")},
            "Training stages.",
        ),
        "elasticity": _ELASTICITY,
        "lr_schedule": strict_object(
            {"params": strict_object({"base_lr": number("Global learning rate.")})},
            "Global learning-rate schedule.",
        ),
        "train_steps": integer("Samples per training epoch."),
    },
    "Super-network training.",
)

_SEARCH = strict_object(
    {
        "algorithm": string("Search algorithm.", ["NSGA2", "RNSGA2"]),
        "batchnorm_adaptation": BATCHNORM_ADAPTATION,
        "num_evals": integer("Evaluations the search may use."),
        "num_constraints": integer("Constraints of the search problem."),
        "population": integer("Population size of the evolutionary search."),
        "crossover_prob": number("Crossover probability.", minimum=0, maximum=1),
        "crossover_eta": number("Crossover eta."),
        "mutation_eta": number("Mutation eta."),
        "mutation_prob": number("Mutation probability.", minimum=0, maximum=1),
        "acc_delta": number("Tolerated absolute accuracy difference."),
        "ref_acc": number("Reference accuracy of the pre-trained model."),
        "aspiration_points": array_of(number("A coordinate."), "Preferred points of the Pareto front."),
        "epsilon": number("RNSGA2: epsilon distance of surviving solutions."),
        "weights": number("RNSGA2: weights."),
        "extreme_points_as_ref_points": boolean("Use the extreme points as aspiration points."),
        "compression": object_or_list_of(
            KNOWLEDGE_DISTILLATION_SCHEMA, "Knowledge distillation used during the search."
        ),
    },
    "Sub-network search.",
)

BOOTSTRAP_NAS_SCHEMA = strict_object(
    {"training": _TRAINING, "search": _SEARCH},
    "BootstrapNAS: trains a super-network and searches it for sub-networks.",
)
"""Schema of the top-level ``bootstrapNAS`` section."""
