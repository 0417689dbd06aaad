"""Const sparsity, and several algorithms combined in one config (composite builder/controller)."""

from __future__ import annotations

import json

import pytest
import torch

import nncompress as nnc
from nncompress.api.compression import CompressionStage
from nncompress.composite import CompositeCompressionAlgorithmController
from tests.model_zoo import ResidualCNN


def _presparsify(model: ResidualCNN, level: float) -> dict[str, torch.Tensor]:
    zeros = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p[torch.rand_like(p) < level] = 0
                zeros[name] = p == 0
    return zeros


def test_const_sparsity_keeps_loaded_zeros_through_training(cnn: ResidualCNN) -> None:
    # NNCF's masks start all ones; a loaded state_dict without masks (a stripped sparse model)
    # gives each mask the non-zero pattern of its loaded weight
    zeros = _presparsify(cnn, 0.5)
    config = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": {"algorithm": "const_sparsity"}}
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), config)
    assert ctrl.compression_rate == 0.0
    model.load_state_dict(cnn.state_dict())
    assert ctrl.compression_stage() is CompressionStage.FULLY_COMPRESSED
    expected_rate = sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values())
    assert ctrl.compression_rate == pytest.approx(expected_rate)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        ctrl.scheduler.step()
        loss = model(torch.randn(8, 1, 8, 8)).square().mean() + ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    stripped = ctrl.strip(strip_format=nnc.StripFormat.IN_PLACE)
    for name, z in zeros.items():
        assert torch.all(stripped.get_parameter(name)[z] == 0), name
    assert "const_sparsity" in ctrl.statistics().to_str()


def test_composite_of_two_algorithms(cnn: ResidualCNN) -> None:
    _presparsify(cnn, 0.3)
    config = {
        "input_info": {"sample_size": [2, 1, 8, 8]},
        "compression": [
            {"algorithm": "magnitude_sparsity", "target_scopes": ["{re}.*blocks.*"],
             "params": {"sparsity_target": 0.6, "sparsity_target_epoch": 2}},
            {"algorithm": "const_sparsity", "ignored_scopes": ["{re}.*blocks.*"]},
        ],
    }
    ctrl, model = nnc.create_compressed_model(cnn, config)
    assert isinstance(ctrl, CompositeCompressionAlgorithmController)
    assert ctrl.name == "magnitude_sparsity+const_sparsity"
    assert ctrl.maximal_compression_rate == 1.0
    stages = []
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        stages.append(ctrl.compression_stage())
    U, P, F = CompressionStage
    assert stages == [P, P, F]  # magnitude U/P/F folded with const F
    assert float(ctrl.loss()) == 0.0
    stats = ctrl.statistics().to_dict()
    assert "magnitude_sparsity/layers_level" in stats and "const_sparsity/layers_level" in stats
    report = ctrl.capture_report.to_str()
    assert "algorithm" in report and "const_sparsity" in report and "magnitude_sparsity" in report
    state = ctrl.get_compression_state()
    assert set(state["builder_state"]) == {"magnitude_sparsity", "const_sparsity"}
    json.dumps(state)
    ctrl2, model2 = nnc.create_compressed_model(ResidualCNN(), config, compression_state=state)
    model2.load_state_dict(model.state_dict())
    assert ctrl2.scheduler.get_state() == ctrl.scheduler.get_state()
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    model2.eval()
    assert torch.equal(model(x), model2(x))
    stripped = ctrl.strip()
    assert list(stripped.state_dict()) == list(ResidualCNN().state_dict())
    assert torch.allclose(stripped(x), model(x), atol=1e-6)


def test_config_without_compression_gives_an_inert_controller(cnn: ResidualCNN) -> None:
    ctrl, model = nnc.create_compressed_model(cnn, {"input_info": {"sample_size": [1, 1, 8, 8]}})
    ctrl.scheduler.epoch_step()
    assert ctrl.compression_stage() is CompressionStage.UNCOMPRESSED
    assert ctrl.compression_rate == 0.0
    assert ctrl.statistics().to_dict() == {}
