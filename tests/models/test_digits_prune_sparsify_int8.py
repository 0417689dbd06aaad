"""One NNCF 2.x config, prune -> sparsify -> QAT -> INT8 ONNX, on real digits.

``examples/configs/digits_prune_sparsify_int8.json``: filter pruning to 40% of the FLOPs (kept
channels in multiples of 16), magnitude sparsity to 50% and INT8 quantization, trained together
from a dense digits ResNet; the export is a physically smaller INT8 ONNX that onnxruntime runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import nncompress as nnc
from nncompress.demo.cnns import CifarResNet
from nncompress.demo.digits import evaluate, predict, train_dense, train_epoch
from nncompress.torch.export import export_onnx
from tests.models.conftest import Loaders

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "digits_prune_sparsify_int8.json"
EPOCHS = 4


@pytest.fixture(scope="module")
def dense_resnet(loaders: Loaders) -> CifarResNet:
    return train_dense(seed=0, loaders=loaders,
                       factory=lambda: CifarResNet(num_classes=10, widths=(16, 32, 64), blocks=1, in_channels=1))


def conv_out_channels(path: Path) -> list[int]:
    """Output channels of every conv weight initializer of an ONNX file (int8 or float)."""
    model = onnx.load(str(path))
    return [numpy_helper.to_array(t).shape[0] for t in model.graph.initializer
            if len(t.dims) == 4 and t.dims[2] in (1, 3)]


def test_prune_sparsify_quantize_in_one_config(dense_resnet: CifarResNet, loaders: Loaders, tmp_path: Path) -> None:
    train, test = loaders
    dense_accuracy = evaluate(dense_resnet, test)
    config = nnc.CompressionConfig.from_dict(json.loads(CONFIG.read_text(encoding="utf-8")))
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(dense_resnet), config, init_data=train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(EPOCHS):
        ctrl.scheduler.epoch_step()
        train_epoch(model, train, optimizer, ctrl)
    stats = ctrl.statistics()
    assert stats.filter_pruning.flops_pruning_level >= 0.35
    assert stats.magnitude_sparsity.layers_level == pytest.approx(0.5, abs=0.01)
    accuracy = evaluate(model, test)
    assert accuracy >= 0.95 and accuracy >= dense_accuracy - 0.03

    dense_path, path = tmp_path / "dense.onnx", tmp_path / "combined_int8.onnx"
    nnc.export_model(model, str(path))
    export_onnx(dense_resnet.eval(), ((torch.zeros(1, 1, 8, 8),), {}), dense_path)
    kinds = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    assert sum(conv_out_channels(path)) < 0.75 * sum(conv_out_channels(dense_path))  # channels removed

    logits, labels = predict(model, test)
    xs = torch.cat([x for x, _ in test]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: xs})[0]
    assert float(np.mean(got.argmax(1) == logits.argmax(1).numpy())) >= 0.97
    assert float(np.mean(got.argmax(1) == labels.numpy())) >= 0.94
