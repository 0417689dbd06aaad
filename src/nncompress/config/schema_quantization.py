"""JSON Schemas of the NNCF 2.x quantization-family sections.

``quantization``, ``experimental_quantization`` (same keys) and ``binarization`` (which shares the
quantization initializer and staged-training ``params``). Key names and allowed values follow
NNCF 2.x.
"""

from __future__ import annotations

from nncompress.config.schema_common import (
    BATCHNORM_ADAPTATION,
    COMPRESSION_LR_MULTIPLIER,
    SCOPING_PROPERTIES,
    Schema,
    algorithm_section,
    array_of,
    boolean,
    integer,
    number,
    strict_object,
    string,
)

QUANTIZER_MODES = ("symmetric", "asymmetric")
"""Values of ``weights.mode`` / ``activations.mode``."""

RANGE_INIT_TYPES = (
    "mixed_min_max",
    "min_max",
    "mean_min_max",
    "threesigma",
    "percentile",
    "mean_percentile",
)
"""Values of ``initializer.range.type``."""

PRECISION_INIT_TYPES = ("hawq", "autoq", "manual")
"""Values of ``initializer.precision.type``."""

QUANTIZATION_PRESETS = ("performance", "mixed")
"""Values of ``preset``."""

OVERFLOW_FIX_OPTIONS = ("enable", "disable", "first_layer_only")
"""Values of ``overflow_fix``."""

BINARIZATION_MODES = ("xnor", "dorefa")
"""Values of ``mode`` in a ``binarization`` section."""

_QUANTIZER_PROPERTIES: dict[str, Schema] = {
    "mode": string("Symmetric or asymmetric (with a zero point) quantization.", QUANTIZER_MODES),
    "bits": integer("Bit width of the quantized values.", minimum=1),
    "signed": boolean("Force a signed (true) or unsigned (false) range; unset: from statistics."),
    "per_channel": boolean("One scale per output channel (weights) or per channel (activations)."),
}

_RANGE_PROPERTIES: dict[str, Schema] = {
    "num_init_samples": integer("Training samples used to initialize the quantizer ranges."),
    "type": string("Statistic the initial ranges come from.", RANGE_INIT_TYPES),
    "params": strict_object(
        {
            "min_percentile": number("Percentile taken as the range minimum.", minimum=0, maximum=100),
            "max_percentile": number("Percentile taken as the range maximum.", minimum=0, maximum=100),
        },
        "Parameters of the 'percentile' and 'mean_percentile' types.",
    ),
}

_RANGE_INITIALIZER: Schema = {
    "type": ["object", "array"],
    "description": "Quantizer range initialization: one setting for all quantizers, or a list of "
    "settings each limited by scopes or quantizer group.",
    "if": {"type": "array"},
    "then": {
        "items": strict_object(
            {
                **_RANGE_PROPERTIES,
                **SCOPING_PROPERTIES,
                "target_quantizer_group": string(
                    "Quantizers this setting applies to (default: all).", ["activations", "weights"]
                ),
            },
            "Range initialization for a subset of quantizers.",
        )
    },
    "else": strict_object(_RANGE_PROPERTIES, "Range initialization for all quantizers."),
}

_BITWIDTH_PER_SCOPE = array_of(
    {
        "type": "array",
        "items": [
            integer("Bit width: the first element of a [bits, scope] pair.", minimum=1),
            string("Quantizer scope: the second element of a [bits, scope] pair."),
        ],
        "minItems": 2,
        "additionalItems": False,
        "description": "A [bits, scope] pair.",
    },
    "Manual bit widths, as [bits, scope] pairs.",
)

_PRECISION_INITIALIZER = strict_object(
    {
        "type": string("Mixed-precision search method.", PRECISION_INIT_TYPES),
        "bits": array_of(integer("A bit width.", minimum=1), "Bit widths to choose from."),
        "num_data_points": integer("HAWQ: data points used to estimate Hessian traces."),
        "iter_number": integer("HAWQ: maximum Hutchinson iterations."),
        "tolerance": number("HAWQ: relative tolerance that stops the Hutchinson iterations."),
        "compression_ratio": number(
            "HAWQ: wanted bit-complexity ratio of INT8 to the mixed model; AutoQ: model size "
            "relative to FP32.",
            minimum=0,
        ),
        "eval_subset_ratio": number("AutoQ: share of the evaluation loader used per search step."),
        "warmup_iter_number": integer("AutoQ: random policies tried before learning."),
        "bitwidth_per_scope": _BITWIDTH_PER_SCOPE,
        "traces_per_layer_path": string("HAWQ: file with Hessian traces from a previous run."),
        "dump_init_precision_data": boolean("Dump data about the precision search."),
        "bitwidth_assignment_mode": string(
            "'strict': quantizers feeding the same operation share a bit width; 'liberal': not.",
            ["strict", "liberal"],
        ),
    },
    "Mixed-precision initialization: picks a bit width per quantizer.",
)

QUANTIZATION_INITIALIZER = strict_object(
    {
        "batchnorm_adaptation": BATCHNORM_ADAPTATION,
        "range": _RANGE_INITIALIZER,
        "precision": _PRECISION_INITIALIZER,
    },
    "Initialization run once when quantization is applied.",
)
"""The ``initializer`` of ``quantization`` and ``binarization`` sections."""

STAGED_PARAMS = strict_object(
    {
        "batch_multiplier": integer("Batches whose gradients are accumulated per step.", minimum=1),
        "activations_quant_start_epoch": integer("Epoch from which activations are quantized."),
        "weights_quant_start_epoch": integer("Epoch from which weights are quantized."),
        "lr_poly_drop_start_epoch": integer("Epoch from which the learning rate drops."),
        "lr_poly_drop_duration_epochs": integer("Epochs over which the learning rate drops."),
        "disable_wd_start_epoch": integer("Epoch from which weight decay is disabled."),
        "base_lr": number("Initial learning rate.", minimum=0),
        "base_wd": number("Initial weight decay.", minimum=0),
    },
    "Staged quantization training schedule.",
)
"""The ``params`` of ``quantization`` and ``binarization`` sections (staged training)."""

_QUANTIZER_GROUP_PROPERTIES: dict[str, Schema] = {
    **_QUANTIZER_PROPERTIES,
    **SCOPING_PROPERTIES,
    "logarithm_scale": boolean("Train the logarithm of the scale instead of the scale."),
}

_SCOPE_OVERRIDE: Schema = {
    "type": "object",
    "description": "Quantizer settings per scope (the keys are scopes, '{re}' for regexes).",
    "patternProperties": {
        ".*": strict_object(
            {**_QUANTIZER_PROPERTIES, "initializer": strict_object({"range": _RANGE_INITIALIZER})},
            "Quantizer settings for the matching operations.",
        )
    },
}


def _quantization_schema(name: str) -> Schema:
    """Schema of a quantization section whose ``algorithm`` is ``name``.

    :param name: ``quantization`` or ``experimental_quantization``.
    :return: the schema.
    """
    return algorithm_section(
        name,
        {
            "weights": strict_object(_QUANTIZER_GROUP_PROPERTIES, "Settings of weight quantizers."),
            "activations": strict_object(
                {
                    **_QUANTIZER_GROUP_PROPERTIES,
                    "unified_scale_ops": array_of(
                        array_of(string("An operation input."), "Inputs sharing one quantizer."),
                        "Groups of operation inputs that must share one activation quantizer.",
                    ),
                },
                "Settings of activation quantizers.",
            ),
            "initializer": QUANTIZATION_INITIALIZER,
            "preset": string(
                "'performance': symmetric quantizers; 'mixed': asymmetric activations.",
                QUANTIZATION_PRESETS,
            ),
            "quantize_inputs": boolean("Quantize the model inputs."),
            "quantize_outputs": boolean("Quantize the model outputs."),
            "scope_overrides": strict_object(
                {"weights": _SCOPE_OVERRIDE, "activations": _SCOPE_OVERRIDE},
                "Quantizer settings that override the group settings for given scopes.",
            ),
            "export_to_onnx_standard_ops": boolean(
                "Export as QuantizeLinear/DequantizeLinear pairs instead of FakeQuantize (deprecated)."
            ),
            "overflow_fix": string(
                "Apply the 7-bit overflow fix to all layers, none, or the first layer only.",
                OVERFLOW_FIX_OPTIONS,
            ),
            "params": STAGED_PARAMS,
            **SCOPING_PROPERTIES,
            **COMPRESSION_LR_MULTIPLIER,
        },
        "Quantization-aware training: inserts fake-quantizers on weights and activations.",
    )


QUANTIZATION_SCHEMA = _quantization_schema("quantization")
"""Schema of a ``quantization`` section."""

EXPERIMENTAL_QUANTIZATION_SCHEMA = _quantization_schema("experimental_quantization")
"""Schema of an ``experimental_quantization`` section (same keys as ``quantization``)."""

BINARIZATION_SCHEMA = algorithm_section(
    "binarization",
    {
        "mode": string("XNOR or DoReFa binarization.", BINARIZATION_MODES),
        "initializer": QUANTIZATION_INITIALIZER,
        "params": STAGED_PARAMS,
        **SCOPING_PROPERTIES,
        **COMPRESSION_LR_MULTIPLIER,
    },
    "Binarizes weights and activations (an extreme case of quantization).",
)
"""Schema of a ``binarization`` section."""
