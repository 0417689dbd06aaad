"""Model-level test on real data: post-training INT8 quantization (``nnc.quantize``) of the digits CNN.

The dense CNN (trained once per module, about 2 s) is quantized from 300 training images (five
batches of 64, so 320 samples) without labels or training; the test set (360 images) measures it.

Figures of ``benchmarks/ptq.py`` (same data, its own dense model): FP32 accuracy 0.9917, INT8
0.9917; logit relative error ``||q - fp|| / ||fp||`` 0.0124 with fast bias correction and 0.0131
without; quantize() takes about 0.03 s. onnxruntime runs the export with the same argmax as PyTorch on every test image;
all 4 convs run as QLinearConv.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.demo.digits import DigitsCNN, evaluate, predict
from tests.models.conftest import Loaders

pytest.importorskip("sklearn")

QUIET = nnc.AdvancedQuantizationParameters(progress=False)


def _calibration(loaders: Loaders) -> nnc.Dataset:
    return nnc.Dataset(loaders[0], lambda batch: batch[0])


def _logits(model: nn.Module, loaders: Loaders) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in loaders[1]])


@pytest.fixture(scope="module")
def quantized(dense: DigitsCNN, loaders: Loaders) -> nn.Module:
    return nnc.quantize(dense, _calibration(loaders), subset_size=300, advanced_parameters=QUIET).eval()


def _relative_error(model: nn.Module, dense: DigitsCNN, loaders: Loaders) -> float:
    ref = _logits(dense, loaders)
    return float((_logits(model, loaders) - ref).norm() / ref.norm())


def test_accuracy_within_half_a_point_and_logits_within_5_percent(
    quantized: nn.Module, dense: DigitsCNN, loaders: Loaders
) -> None:
    fp32, int8 = evaluate(dense, loaders[1]), evaluate(quantized, loaders[1])
    assert int8 >= fp32 - 0.005, (fp32, int8)
    assert _relative_error(quantized, dense, loaders) <= 0.05


def test_fast_bias_correction_reduces_the_output_error(
    quantized: nn.Module, dense: DigitsCNN, loaders: Loaders
) -> None:
    without = nnc.quantize(dense, _calibration(loaders), subset_size=300, fast_bias_correction=False,
                           advanced_parameters=QUIET)
    with_fbc, no_fbc = _relative_error(quantized, dense, loaders), _relative_error(without, dense, loaders)
    assert with_fbc < 0.95 * no_fbc, (with_fbc, no_fbc)


def test_quantize_uses_subset_size_samples(dense: DigitsCNN, loaders: Loaders) -> None:
    seen = []
    nnc.quantize(dense, nnc.Dataset(loaders[0], lambda b: seen.append(len(b[0])) or b[0]), subset_size=100,
                 advanced_parameters=QUIET)
    assert seen == [64, 64]  # whole batches until at least 100 samples


def test_onnx_export_agrees_with_pytorch_and_fuses_integer_convs(
    quantized: nn.Module, loaders: Loaders, tmp_path: Path
) -> None:
    path, optimized = tmp_path / "digits_ptq.onnx", tmp_path / "digits_ptq_opt.onnx"
    nnc.export_model(quantized, str(path), model_args=(torch.zeros(1, 1, 8, 8),))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    torch_pred = predict(quantized, loaders[1])[0].argmax(1)
    ort_pred = torch.cat([torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]).argmax(1)
                          for x, _ in loaders[1]])
    assert float((ort_pred == torch_pred).float().mean()) >= 0.99
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    # every conv, the last one too: the global mean's input is quantized, so its output is requantized
    assert ops.count("QLinearConv") == 4 and "Conv" not in ops and "QLinearAdd" in ops
