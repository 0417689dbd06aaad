"""The JSON Schema (draft 7) of a whole NNCF 2.x config file.

:data:`CONFIG_SCHEMA` validates a config on its own, e.g.::

    import jsonschema
    from nncompress.config.schema import CONFIG_SCHEMA

    jsonschema.Draft7Validator(CONFIG_SCHEMA).validate(
        {"input_info": {"sample_size": [1, 3, 32, 32]},
         "compression": {"algorithm": "magnitude_sparsity", "params": {"sparsity_target": 0.5}}}
    )

Top-level keys the schema does not know (``model``, ``optimizer``, ``dataset``... in NNCF's
example configs) are allowed and kept. Inside a ``compression`` section, the ``algorithm`` key
selects the section's schema (:data:`ALGORITHM_SCHEMAS`), which allows no unknown keys.
"""

from __future__ import annotations

from types import MappingProxyType

from nncompress.config.schema_common import (
    Schema,
    array_of,
    boolean,
    integer,
    number,
    object_or_list_of,
    strict_object,
    string,
)
from nncompress.config.schema_distillation import KNOWLEDGE_DISTILLATION_SCHEMA
from nncompress.config.schema_nas import BOOTSTRAP_NAS_SCHEMA
from nncompress.config.schema_pruning import FILTER_PRUNING_SCHEMA
from nncompress.config.schema_quantization import (
    BINARIZATION_SCHEMA,
    EXPERIMENTAL_QUANTIZATION_SCHEMA,
    QUANTIZATION_SCHEMA,
)
from nncompress.config.schema_sparsity import (
    CONST_SPARSITY_SCHEMA,
    MAGNITUDE_SPARSITY_SCHEMA,
    MOVEMENT_SPARSITY_SCHEMA,
    RB_SPARSITY_SCHEMA,
)

ALGORITHM_SCHEMAS = MappingProxyType(
    {
        "quantization": QUANTIZATION_SCHEMA,
        "experimental_quantization": EXPERIMENTAL_QUANTIZATION_SCHEMA,
        "binarization": BINARIZATION_SCHEMA,
        "magnitude_sparsity": MAGNITUDE_SPARSITY_SCHEMA,
        "rb_sparsity": RB_SPARSITY_SCHEMA,
        "const_sparsity": CONST_SPARSITY_SCHEMA,
        "movement_sparsity": MOVEMENT_SPARSITY_SCHEMA,
        "filter_pruning": FILTER_PRUNING_SCHEMA,
        "knowledge_distillation": KNOWLEDGE_DISTILLATION_SCHEMA,
    }
)
"""Schema of a ``compression`` section, by the NNCF 2.x algorithm name in its ``algorithm`` key."""

KNOWN_ALGORITHMS = frozenset(ALGORITHM_SCHEMAS)
"""Every algorithm name NNCF 2.x accepted in a ``compression`` section."""

INPUT_DTYPES = (
    "float",
    "float32",
    "float16",
    "half",
    "bfloat16",
    "double",
    "float64",
    "long",
    "int64",
    "int",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)
"""Values of ``input_info[].type`` (torch dtype names; NNCF 2.x itself used "float" and "long")."""

INPUT_FILLERS = ("zeros", "ones", "random")
"""Values of ``input_info[].filler``."""

TARGET_DEVICES = ("ANY", "CPU", "GPU", "VPU", "NPU", "CPU_SPR", "TRIAL")
"""Values of ``target_device``."""

ACCURACY_AWARE_MODES = ("early_exit", "adaptive_compression_level")
"""Values of ``accuracy_aware_training.mode``."""

_INPUT_INFO_PROPERTIES: dict[str, Schema] = {
    "sample_size": array_of(
        integer("A dimension.", minimum=1), "Shape of the input tensor, batch dimension included."
    ),
    "type": string("Data type of the input tensor (default 'float').", INPUT_DTYPES),
    "keyword": string("Pass the tensor to forward() as this keyword argument instead of positionally."),
    "filler": string("Values of the tensor made to trace the model (default 'ones').", INPUT_FILLERS),
}

INPUT_INFO_SCHEMA: Schema = {
    "type": ["object", "array"],
    "description": "The model inputs: one object, or a list with one object per input. An "
    "empty object means 'unspecified'.",
    "if": {"type": "array"},
    "then": {
        "items": strict_object(_INPUT_INFO_PROPERTIES, "One model input.", ["sample_size"]),
        "minItems": 1,
    },
    "else": {
        **strict_object(_INPUT_INFO_PROPERTIES, "The single model input."),
        "if": {"minProperties": 1},
        "then": {"required": ["sample_size"]},
    },
}
"""Schema of the top-level ``input_info``."""

_DEGRADATION: dict[str, Schema] = {
    "maximal_relative_accuracy_degradation": number(
        "Largest accuracy drop allowed, in percent of the original accuracy.", minimum=0
    ),
    "maximal_absolute_accuracy_degradation": number(
        "Largest accuracy drop allowed, in units of the metric.", minimum=0
    ),
}
_ONE_DEGRADATION: Schema = {
    "oneOf": [{"required": [key]} for key in _DEGRADATION],
    "description": "exactly one of 'maximal_relative_accuracy_degradation' and "
    "'maximal_absolute_accuracy_degradation' must be given",
}

_EARLY_EXIT_PARAMS: Schema = {
    **strict_object(
        {**_DEGRADATION, "maximal_total_epochs": integer("Most fine-tuning epochs.")},
        "Parameters of early-exit training.",
        ["maximal_total_epochs"],
    ),
    **_ONE_DEGRADATION,
}

_ADAPTIVE_PARAMS: Schema = {
    **strict_object(
        {
            **_DEGRADATION,
            "initial_training_phase_epochs": integer("Epochs of the initial fine-tuning phase."),
            "initial_compression_rate_step": number("First change of the compression rate.", minimum=0),
            "compression_rate_step_reduction_factor": number(
                "Factor the compression rate step is reduced by.", minimum=0
            ),
            "lr_reduction_factor": number("Factor the learning rate is reduced by.", minimum=0),
            "minimal_compression_rate_step": number("Smallest compression rate step.", minimum=0),
            "patience_epochs": integer("Epochs of fine-tuning per compression rate."),
            "maximal_total_epochs": integer("Most fine-tuning epochs."),
        },
        "Parameters of adaptive-compression-level training.",
        ["initial_training_phase_epochs", "patience_epochs"],
    ),
    **_ONE_DEGRADATION,
}

ACCURACY_AWARE_TRAINING_SCHEMA: Schema = {
    **strict_object(
        {
            "mode": string("Accuracy-aware training loop to run.", ACCURACY_AWARE_MODES),
            "params": {"type": "object", "description": "Parameters of the mode."},
        },
        "Accuracy-aware training: fine-tune until the accuracy drop is within bounds.",
        ["mode", "params"],
    ),
    "allOf": [
        {
            "if": {"properties": {"mode": {"const": mode}}, "required": ["mode"]},
            "then": {"properties": {"params": params}},
        }
        for mode, params in (
            ("early_exit", _EARLY_EXIT_PARAMS),
            ("adaptive_compression_level", _ADAPTIVE_PARAMS),
        )
    ],
}
"""Schema of the top-level ``accuracy_aware_training`` section."""

COMPRESSION_SECTION_SCHEMA: Schema = {
    "type": "object",
    "description": "One compression algorithm and its settings.",
    "required": ["algorithm"],
    "properties": {"algorithm": string("Name of the algorithm.", sorted(ALGORITHM_SCHEMAS))},
    "allOf": [
        {
            "if": {"properties": {"algorithm": {"const": name}}, "required": ["algorithm"]},
            "then": section,
        }
        for name, section in ALGORITHM_SCHEMAS.items()
    ],
}
"""Schema of one ``compression`` section: the ``algorithm`` key selects the rest."""

CONFIG_SCHEMA: Schema = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "NNCF 2.x compression config",
    "type": "object",
    "properties": {
        "input_info": INPUT_INFO_SCHEMA,
        "target_device": string("Hardware the compressed model is meant for.", TARGET_DEVICES),
        "compression": object_or_list_of(
            COMPRESSION_SECTION_SCHEMA, "One compression section or a list of them.", min_items=0
        ),
        "accuracy_aware_training": ACCURACY_AWARE_TRAINING_SCHEMA,
        "bootstrapNAS": BOOTSTRAP_NAS_SCHEMA,
        "compression_lr_multiplier": number("Default gradient multiplier of every algorithm.", minimum=0),
        "disable_shape_matching": boolean("Deprecated in NNCF 2.x: relax input shape matching."),
        "log_dir": string("Directory for logs written by the compression algorithms."),
    },
    "additionalProperties": True,
}
"""Schema of a whole config file."""
