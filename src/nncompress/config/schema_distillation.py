"""JSON Schema of the NNCF 2.x ``knowledge_distillation`` section."""

from __future__ import annotations

from nncompress.config.schema_common import algorithm_section, number, string

KNOWLEDGE_DISTILLATION_TYPES = ("mse", "softmax")
"""Values of ``type``."""

KNOWLEDGE_DISTILLATION_SCHEMA = algorithm_section(
    "knowledge_distillation",
    {
        "type": string(
            "Distillation loss between the compressed and original outputs.", KNOWLEDGE_DISTILLATION_TYPES
        ),
        "scale": number("Multiplier of the distillation loss."),
        "temperature": number("'softmax' type: temperature that softens the logits.", minimum=0),
    },
    "Adds a loss between the outputs of the compressed model and of the original model.",
    required=["type"],
)
"""Schema of a ``knowledge_distillation`` section."""
