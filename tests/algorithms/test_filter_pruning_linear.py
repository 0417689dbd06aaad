"""filter_pruning of linears on ``[N, F]`` activations: a CNN with an MLP head and a plain MLP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.algorithms.pruning.algo import FilterPruningController
from nncompress.functional.importance import pruned_count
from nncompress.graph.capture import capture
from nncompress.graph.flops import layer_costs, total_flops
from nncompress.torch.runtime import get_runtime

ALL = {"prune_first_conv": True, "prune_downsample_convs": True, "channel_multiple": 1}


class CnnMlp(nn.Module):
    """conv 1->16, conv 16->32, max pool, flatten (32 x 4 x 4), Linear -> BatchNorm1d -> ReLU -> Dropout
    -> Linear -> ReLU -> Linear(10), on digits-sized ``(N, 1, 8, 8)`` inputs."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc1, self.bn = nn.Linear(32 * 16, 64), nn.BatchNorm1d(64)
        self.drop = nn.Dropout(0.2)
        self.fc2, self.fc3 = nn.Linear(64, 48), nn.Linear(48, 10)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.5, 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        x = torch.flatten(F.max_pool2d(x, 2), 1)
        return self.fc3(F.relu(self.fc2(self.drop(F.relu(self.bn(self.fc1(x)))))))


def compress(model: nn.Module, params: dict[str, Any], size: list[int], **section: Any
             ) -> tuple[FilterPruningController, nn.Module]:
    config = nnc.CompressionConfig.from_dict({"input_info": {"sample_size": size},
                                              "compression": {"algorithm": "filter_pruning", "params": params,
                                                              **section}})
    ctrl, cm = nnc.create_compressed_model(model, config)
    assert isinstance(ctrl, FilterPruningController)
    return ctrl, cm


def test_mlp_head_groups_are_pruned_and_strip_matches_the_masks() -> None:
    ctrl, cm = compress(CnnMlp(), ALL, [2, 1, 8, 8], pruning_init=0.5)
    assert [g.layers for g in ctrl.pruned_groups] == [["c1"], ["c2"], ["fc1"], ["fc2"]]
    fc1 = next(g for g in ctrl.pruned_groups if g.layers == ["fc1"])
    assert int((~fc1.keep()).sum()) == pruned_count(64, 0.5)
    x = torch.randn(5, 1, 8, 8)
    masked = cm(x).detach()
    rows = cm.get_submodule("fc1").weight.detach()  # the raw weight: the mask applies in forward
    assert rows.shape == (64, 512)
    stripped = ctrl.strip(do_copy=True)
    assert type(stripped) is CnnMlp and get_runtime(stripped) is None
    assert stripped.fc1.out_features == stripped.bn.num_features == stripped.fc2.in_features == 32
    assert stripped.fc2.out_features == stripped.fc3.in_features == 48 - pruned_count(48, 0.5)
    assert stripped.fc1.in_features == (32 - pruned_count(32, 0.5)) * 16
    assert sum(p.numel() for p in stripped.parameters()) < sum(p.numel() for p in CnnMlp().parameters())
    torch.testing.assert_close(stripped(x), masked, rtol=1e-5, atol=1e-5)


def test_nncf_defaults_skip_the_first_linear_of_an_mlp() -> None:
    """NNCF's first prunable nodes include linears: with ``prune_first_conv`` false an MLP's first
    linear is left alone, the next one is pruned."""
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    ctrl, cm = compress(mlp, {"channel_multiple": 1}, [2, 64], pruning_init=0.5)
    assert [g.layers for g in ctrl.pruned_groups] == [["2"]]
    assert any("prune_first_conv" in reason for _, reason in ctrl.skipped_groups)
    stripped = ctrl.strip(do_copy=True)
    assert type(stripped) is nn.Sequential and stripped[2].out_features == 8 and stripped[4].in_features == 8
    x = torch.randn(3, 64)
    torch.testing.assert_close(stripped(x), cm(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_flops_target_counts_the_linears(target: float) -> None:
    ctrl, _ = compress(CnnMlp(), {**ALL, "pruning_flops_target": target, "schedule": "baseline"}, [2, 1, 8, 8],
                       pruning_init=target)
    stats = ctrl.statistics().filter_pruning
    assert abs(stats.flops_pruning_level - target) <= 0.02
    stripped = ctrl.strip(do_copy=True)
    dense = CnnMlp()
    x = torch.randn(2, 1, 8, 8)
    full, left = (total_flops(layer_costs(capture(m, (x,)), [])) for m in (dense, stripped))
    assert 1 - left / full == pytest.approx(stats.flops_pruning_level, abs=1e-9)


def test_pruned_mlp_head_exports_to_onnx_that_matches(tmp_path: Path) -> None:
    ctrl, cm = compress(CnnMlp(), ALL, [2, 1, 8, 8], pruning_init=0.5)
    x = torch.randn(3, 1, 8, 8)
    expected = cm(x).detach().numpy()
    path = tmp_path / "pruned.onnx"
    ctrl.export_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    gemm_out = [inits[n.input[1]].dims[0] for n in graph.node if n.op_type == "Gemm" and n.input[1] in inits]
    assert gemm_out == [32, 48 - pruned_count(48, 0.5), 10]
