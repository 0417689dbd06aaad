"""LLM weight compression: ``compress_weights`` (INT8 / INT4 / NF4, AWQ, scale estimation, GPTQ).

See ``docs/weight_compression.md``.
"""

from nncompress.weight_compression.checkpoint import load_compressed, save_compressed
from nncompress.weight_compression.compress import compress_weights
from nncompress.weight_compression.kernels import exact_matmul
from nncompress.weight_compression.modules import CompressedEmbedding, CompressedLinear
from nncompress.weight_compression.onnx_export import export_compressed_onnx
from nncompress.weight_compression.params import (
    AdvancedCompressionParameters,
    AWQParams,
    BackupMode,
    CompressWeightsMode,
    GPTQParams,
    GroupSizeFallbackMode,
    ScaleEstimationParams,
    SensitivityMetric,
)

__all__ = [
    "AWQParams",
    "AdvancedCompressionParameters",
    "BackupMode",
    "CompressWeightsMode",
    "CompressedEmbedding",
    "CompressedLinear",
    "GPTQParams",
    "GroupSizeFallbackMode",
    "ScaleEstimationParams",
    "SensitivityMetric",
    "compress_weights",
    "exact_matmul",
    "export_compressed_onnx",
    "load_compressed",
    "save_compressed",
]
