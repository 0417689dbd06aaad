"""Model-level test on real data: INT8 quantization-aware training of a small CNN on digits.

One dense model is trained per module (about 2 s); INT8 quantizers are placed on it, their
ranges initialised on 256 training images with BatchNorm adaptation, and it is fine-tuned for
2 epochs. The tests then check accuracy against FP32, the ONNX export (QuantizeLinear /
DequantizeLinear, fused by onnxruntime into QLinearConv) against the PyTorch fake-quant model on
the whole test set, and the statistics.

Figures (torch 2.13 CPU, 1 thread; test set of 360 images, so one image is 0.28 points): FP32
0.9917; after range init 0.9917 / 0.9889 depending on the calibration batches; after 2 QAT
epochs (SGD, lr 1e-3, momentum 0.9) 0.9917. Over dense seeds 0 and 3 and 5 calibration orders
each, QAT ended within one image of FP32 every time (Adam 1e-5 / 3e-5 and SGD 3e-3 alike).
onnxruntime agrees with PyTorch's fake-quant model on every argmax (largest logit difference
~0.06).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.algorithms.quantization.algo import QuantizationController
from nncompress.demo.digits import DigitsCNN, digits_loaders, evaluate, predict, train_epoch

pytest.importorskip("sklearn")

from tests.models.conftest import Loaders

QAT_EPOCHS = 2
QAT_CONFIG = {
    "input_info": {"sample_size": [1, 1, 8, 8]},
    "compression": {
        "algorithm": "quantization",
        "initializer": {"range": {"num_init_samples": 256},
                        "batchnorm_adaptation": {"num_bn_adaptation_samples": 256}},
    },
}


@dataclass
class Trained:
    """The fine-tuned quantized model, its accuracies (after range init, per QAT epoch), its initial steps."""

    ctrl: QuantizationController
    model: nn.Module
    init_acc: float
    accs: list[float]
    scales_before: list[torch.Tensor]




@pytest.fixture(scope="module")
def fp32_acc(dense: DigitsCNN, loaders: Loaders) -> float:
    return evaluate(dense, loaders[1])


@pytest.fixture(scope="module")
def qat(dense: DigitsCNN) -> Trained:
    # fresh loaders: the calibration and training batches do not depend on what ran before
    train, test = digits_loaders(seed=0)
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(dense), QAT_CONFIG, init_data=train)
    assert isinstance(ctrl, QuantizationController)
    init_acc = evaluate(model, test)
    scales_before = [q.scale.detach().clone() for q in ctrl.quantizers]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    accs = []
    for _ in range(QAT_EPOCHS):
        ctrl.scheduler.epoch_step()
        train_epoch(model, train, optimizer, ctrl)
        accs.append(evaluate(model, test))
    return Trained(ctrl, model, init_acc, accs, scales_before)


def test_dense_model_is_accurate(fp32_acc: float) -> None:
    assert fp32_acc >= 0.97


def test_quantizers_placed_and_initialised(qat: Trained) -> None:
    stats = qat.ctrl.statistics().quantization
    assert stats.weights.total == 5 and stats.weights.per_channel == 5  # 3 convs, the depthwise conv, the linear
    assert stats.activations.total == 7 and stats.activations.per_channel == 0
    assert stats.bits == {8: (5, 7)}
    assert all(bool(q.initialized) for q in qat.ctrl.quantizers)
    assert qat.ctrl.compression_stage() == nnc.CompressionStage.FULLY_COMPRESSED
    assert qat.model.training  # evaluate restores the mode


def test_range_init_alone_is_close_to_fp32(qat: Trained, fp32_acc: float) -> None:
    assert qat.init_acc >= fp32_acc - 0.01, (fp32_acc, qat.init_acc)


def test_qat_accuracy_within_half_a_point_of_fp32(qat: Trained, fp32_acc: float) -> None:
    assert qat.accs[-1] >= fp32_acc - 0.005, (fp32_acc, qat.init_acc, qat.accs)


def test_qat_trains_the_quantizer_ranges(qat: Trained) -> None:
    # every range gets NNCF 2.x's gradient; under SGD at lr 1e-3 the weights' ranges move by about
    # 1e-6 an epoch (as in NNCF, compression_lr_multiplier or Adam make them move faster)
    assert all(q.scale.grad is not None and bool(q.scale.grad.any()) for q in qat.ctrl.quantizers)
    weights = [(q, before) for q, before in zip(qat.ctrl.quantizers, qat.scales_before) if q.group == "weights"]
    assert all(not torch.equal(q.scale.detach(), before) for q, before in weights)


@pytest.fixture(scope="module")
def exported(qat: Trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("digits_qat")
    path, optimized = folder / "digits_int8.onnx", folder / "digits_int8_opt.onnx"
    qat.ctrl.export_model(str(path), input_names=["images"], output_names=["logits"])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable, QDQ fused
    opts.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return path, optimized


def test_export_is_qdq_without_batchnorm(exported: tuple[Path, Path]) -> None:
    ops = [n.op_type for n in onnx.load(str(exported[0])).graph.node]
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= set(ops)
    assert "BatchNormalization" not in ops  # folded into the convs


def test_onnxruntime_agrees_with_fake_quant_on_the_test_set(qat: Trained, exported: tuple[Path, Path],
                                                            loaders: Loaders, fp32_acc: float) -> None:
    test = loaders[1]
    torch_logits, labels = predict(qat.model, test)  # eval mode: fake-quant with BatchNorm running stats
    native_logits, _ = predict(qat.ctrl.strip(do_copy=True, strip_format=nnc.StripFormat.NATIVE), test)
    assert torch.equal(native_logits.argmax(1), torch_logits.argmax(1))
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    images = torch.cat([x for x, _ in test]).numpy()
    ort_logits = session.run(["logits"], {"images": images})[0]  # the whole test set, one batch
    assert ort_logits.shape == (360, 10)
    agreement = float((ort_logits.argmax(1) == torch_logits.argmax(1).numpy()).mean())
    assert agreement >= 0.99
    assert np.abs(ort_logits - torch_logits.numpy()).max() < 0.05 * np.abs(torch_logits.numpy()).max()
    assert float((ort_logits.argmax(1) == labels.numpy()).mean()) >= fp32_acc - 0.01


def test_onnxruntime_fuses_qdq_into_qlinearconv(exported: tuple[Path, Path], loaders: Loaders) -> None:
    fused = [n.op_type for n in onnx.load(str(exported[1])).graph.node]
    assert "QLinearConv" in fused, sorted(set(fused))
    assert fused.count("QLinearConv") == 4  # the last conv too: the global mean's input is quantized
    session = ort.InferenceSession(str(exported[1]), providers=["CPUExecutionProvider"])  # the saved graph runs
    images = torch.cat([x for x, _ in loaders[1]]).numpy()
    plain = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": images})[0], plain.run(None, {"images": images})[0],
                               atol=1e-5)
