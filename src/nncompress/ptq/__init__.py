"""Post-training quantization: ``quantize(model, Dataset(...))`` and its options."""

from nncompress.ptq.dataset import Dataset
from nncompress.ptq.params import (
    AdvancedQuantizationParameters,
    IgnoredScope,
    ModelType,
    QuantizationPreset,
    TargetDevice,
)
from nncompress.ptq.pipeline import QuantizationSummary, quantize

__all__ = [
    "AdvancedQuantizationParameters",
    "Dataset",
    "IgnoredScope",
    "ModelType",
    "QuantizationPreset",
    "QuantizationSummary",
    "TargetDevice",
    "quantize",
]
