"""nncompress: compress PyTorch models, keep them accurate, export them to ONNX.

The training-time flow, compatible with NNCF 2.x configs::

    import nncompress as nnc

    config = nnc.CompressionConfig.from_json("magnitude_sparsity.json")
    ctrl, model = nnc.create_compressed_model(model, config)
    for epoch in range(epochs):
        ctrl.scheduler.epoch_step()
        for x, y in loader:
            ctrl.scheduler.step()
            loss = criterion(model(x), y) + ctrl.loss()
            ...
    ctrl.export_model("model.onnx")

Post-training INT8 quantization from unlabeled samples::

    q = nnc.quantize(model, nnc.Dataset(loader, lambda batch: batch[0]), subset_size=300)
    nnc.export_model(q, "model_int8.onnx")

Weight-only compression of an LLM (INT8 / INT4 / NF4, optionally AWQ, scale estimation, GPTQ)::

    nnc.compress_weights(llm, mode=nnc.CompressWeightsMode.INT4_SYM, group_size=64, ratio=0.8)
    nnc.save_compressed(llm, "llm_int4.pt")
"""

from nncompress.api.compression import (
    CompressionAlgorithmBuilder,
    CompressionAlgorithmController,
    CompressionLoss,
    CompressionScheduler,
    CompressionStage,
    StripFormat,
)
from nncompress.api.statistics import CompressionStatistics, NNCFStatistics
from nncompress.config import CompressionConfig
from nncompress.handles import add_compression_parameters, compression_controller, export_model, strip
from nncompress.model_creation import create_compressed_model, register_default_init_args
from nncompress.ptq import (
    AdvancedQuantizationParameters,
    Dataset,
    IgnoredScope,
    ModelType,
    QuantizationPreset,
    TargetDevice,
    quantize,
)
from nncompress.weight_compression import (
    AdvancedCompressionParameters,
    BackupMode,
    CompressWeightsMode,
    SensitivityMetric,
    compress_weights,
    load_compressed,
    save_compressed,
)

NNCFConfig = CompressionConfig
"""The name NNCF 2.x used for :class:`CompressionConfig`."""

__version__ = "0.1.0"

__all__ = [
    "AdvancedCompressionParameters",
    "AdvancedQuantizationParameters",
    "BackupMode",
    "CompressWeightsMode",
    "SensitivityMetric",
    "compress_weights",
    "load_compressed",
    "save_compressed",
    "add_compression_parameters",
    "CompressionAlgorithmBuilder",
    "CompressionAlgorithmController",
    "CompressionConfig",
    "CompressionLoss",
    "CompressionScheduler",
    "CompressionStage",
    "CompressionStatistics",
    "Dataset",
    "IgnoredScope",
    "ModelType",
    "NNCFConfig",
    "NNCFStatistics",
    "QuantizationPreset",
    "StripFormat",
    "TargetDevice",
    "compression_controller",
    "create_compressed_model",
    "export_model",
    "quantize",
    "register_default_init_args",
    "strip",
]
