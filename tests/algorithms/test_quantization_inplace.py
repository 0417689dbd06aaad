"""In-place residual adds under quantization: ``out += identity`` quantized as NNCF 2.x, ONNX fused."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import nncompress as nnc
from tests.algorithms.test_mixed_precision_corpus import BasicBlock, ResNet


def test_inplace_residual_add_is_quantized_and_trains() -> None:
    # torchvision's ``out += identity`` (an ``add_``) gets its inputs quantized, as NNCF 2.x did; the
    # quantizer before it hands out a copy, since the add overwrites it and its backward keeps it
    torch.manual_seed(0)
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 4}}}}
    ctrl, model = nnc.create_compressed_model(ResNet(BasicBlock, (1, 1, 1, 1)), config,
                                              init_data=[(torch.randn(4, 3, 32, 32), torch.zeros(4))])
    copying = [q.name for q in ctrl.quantizers if q.copy_output]
    assert copying == [f"ResNet/Sequential[layer{i}]/BasicBlock[0]/BatchNorm2d[bn2]/batch_norm_0" for i in range(1, 5)]
    loss = model(torch.randn(2, 3, 32, 32)).square().mean()
    loss.backward()
    assert all(q.scale.grad is not None for q in ctrl.quantizers)



class _AddInPlaceNoRebind(nn.Module):
    """``x.add_(y)`` on the model input, ``x`` read again afterwards (the result is not rebound)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        x.add_(y)
        return self.fc(x.mean((2, 3)))


def test_inplace_add_keeps_its_write_when_its_input_cannot_be_quantized_at_the_producer() -> None:
    # quantizing the written tensor at the add's input would hand the add a copy: the write would
    # reach the copy only, and the later read of ``x`` would miss ``y`` (10% off before the fix)
    torch.manual_seed(0)
    float_model = _AddInPlaceNoRebind()
    config = {"input_info": {"sample_size": [1, 3, 8, 8]},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}}
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(float_model), config,
                                              init_data=[(torch.randn(8, 3, 8, 8), torch.zeros(8))])
    model.eval()
    float_model.eval()
    x = torch.randn(16, 3, 8, 8)
    expected = float_model(x.clone()).detach()
    got = model(x.clone()).detach()
    assert float((got - expected).abs().max()) < 0.02 * float(expected.abs().max())
    rows = [r for r in ctrl.capture_report.rows if r.op.endswith("add__0") and r.weight.startswith("input 0")]
    assert len(rows) == 1 and not rows[0].compressed and "in place" in rows[0].reason




def test_torchvision_resnet_with_inplace_adds_exports_fused_qlinear_add_and_conv(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = ResNet(BasicBlock, (1, 1, 1, 1))
    for _ in range(2):
        resnet(torch.randn(8, 3, 32, 32))  # BatchNorm statistics to fold
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": {"algorithm": "quantization", "initializer": {
                  "range": {"num_init_samples": 8}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}}
    ctrl, model = nnc.create_compressed_model(resnet, config, init_data=[(torch.randn(8, 3, 32, 32), torch.zeros(8))])
    path, optimized = tmp_path / "resnet.onnx", tmp_path / "resnet_opt.onnx"
    ctrl.export_model(str(path))
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(16, 3, 32, 32)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    model.eval()
    expected = model(x).detach().numpy()
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    fused = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert fused["QLinearAdd"] == 4 and fused["QLinearConv"] == 12  # every residual add and conv in int8
    assert fused["Add"] == 0 and fused["Conv"] == 0
