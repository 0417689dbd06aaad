"""Capture runs in eval mode, as NNCF 2.x does (issue 8): batch-1 input_info works with BatchNorm
after global pooling, and a training-only auxiliary head (Inception's AuxLogits) is not compressed,
yet runs and trains in training-mode forwards."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode

import nncompress as nnc
from nncompress.graph.capture import capture
from nncompress.torch.runtime import get_runtime


class AuxHead(nn.Module):
    """Inception-v3's AuxLogits in small: pool to 1x1, conv, BatchNorm (one value per channel), linear."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(F.adaptive_avg_pool2d(x, 1))))  # (N, 8, 1, 1)
        return self.fc(torch.flatten(x, 1))


class InceptionLike(nn.Module):
    """Stem, a two-branch mixed block, the aux head only while training, BatchNorm after global pooling.
    Input (N, 1, 8, 8); returns ``(logits, aux_logits)`` in training, ``logits`` in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch1x1 = nn.Conv2d(8, 8, 1)
        self.branch3x3 = nn.Conv2d(8, 8, 3, padding=1)
        self.AuxLogits = AuxHead(16, 10)
        self.head_conv = nn.Conv2d(16, 16, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        x = torch.cat([F.relu(self.branch1x1(x)), F.relu(self.branch3x3(x))], dim=1)  # (N, 16, 8, 8)
        aux = self.AuxLogits(x) if self.training else None
        x = F.relu(self.head_bn(self.head_conv(F.adaptive_avg_pool2d(x, 1))))  # (N, 16, 1, 1)
        logits = self.fc(torch.flatten(x, 1))
        return (logits, aux) if aux is not None else logits


def _data(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def _config(algorithm: str) -> dict:
    section = {"algorithm": algorithm, "initializer": {"range": {"num_init_samples": 32}}}
    if algorithm == "magnitude_sparsity":
        section = {"algorithm": algorithm, "sparsity_init": 0.5}
    return {"input_info": {"sample_size": [1, 1, 8, 8]}, "compression": section}


def test_capture_runs_in_eval_mode_and_restores_each_mode() -> None:
    net = InceptionLike().train()
    net.stem.eval()
    graph = capture(net, (torch.randn(1, 1, 8, 8),))  # train-mode BatchNorm would refuse one value per channel
    assert not any("AuxLogits" in n for n in graph.nodes)
    assert "InceptionLike/BatchNorm2d[head_bn]/batch_norm_0" in graph.nodes
    assert net.training and not net.stem.training and not net.stem[1].training and net.AuxLogits.training


@pytest.mark.parametrize("algorithm", ["quantization", "magnitude_sparsity"])
def test_training_only_aux_head_is_not_compressed_and_trains(algorithm: str) -> None:
    torch.manual_seed(0)
    net = InceptionLike().train()
    ctrl, model = nnc.create_compressed_model(net, _config(algorithm), init_data=_data())
    assert model.training and all(m.training for m in model.modules())
    rt = get_runtime(model)
    assert rt is not None
    points = [*rt.weight_points, *rt.pre_points, *rt.post_points]
    assert points and not any("AuxLogits" in p for p in points)
    assert any("head_conv" in p for p in points)

    x, y = _data(1)[0]
    aux_before = model.AuxLogits.conv.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            ctrl.scheduler.step()
            opt.zero_grad()
            logits, aux = model(x)  # runs the aux head: ops capture never saw, touching no point
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    unseen = [w for w in caught if "did not run when the model was captured" in str(w.message)]
    # The sparsity runtime has no operation points, so it numbers no ops and has nothing to check.
    assert len(unseen) == (1 if algorithm == "quantization" else 0)
    if unseen:
        assert "InceptionLike/AuxHead[AuxLogits]/Conv2d[conv]/conv2d_0" in str(unseen[0].message)
    assert losses[-1] < losses[0]
    assert not torch.equal(model.AuxLogits.conv.weight, aux_before)  # the aux head trains (uncompressed)
    assert _get_current_function_mode() is None

    model.eval()
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)  # eval: no aux, the captured path


def test_ptq_of_a_training_mode_model_leaves_the_aux_head_alone() -> None:
    torch.manual_seed(0)
    net = InceptionLike().train()
    quantized = nnc.quantize(net, [x for x, _ in _data(2)], subset_size=32)
    rt = get_runtime(quantized)
    assert rt is not None and quantized.training
    points = [*rt.weight_points, *rt.pre_points, *rt.post_points]
    assert points and not any("AuxLogits" in p for p in points)
    quantized.eval()
    assert torch.isfinite(quantized(torch.randn(2, 1, 8, 8))).all()
