"""Magnitude sparsity: schedules against the formulas, stage, freeze, local mode, statistics."""

from __future__ import annotations

import json

import pytest
import torch

import nncompress as nnc
from nncompress.api.compression import CompressionStage
from nncompress.errors import InvalidArgumentError
from nncompress.functional import schedules as fs
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN


def _max_level_error(ctrl) -> float:  # type: ignore[no-untyped-def]
    """One element of rounding per layer at most."""
    return 1.0 / min(r.mask.mask.numel() for r in ctrl.sparsified_weights) + 1e-9


@pytest.mark.parametrize(
    "params,formula",
    [
        ({"schedule": "polynomial", "sparsity_init": 0.1, "sparsity_target": 0.7, "sparsity_target_epoch": 4,
          "power": 3, "concave": True},
         lambda e: fs.polynomial_level(e, 0.1, 0.7, 4, 3, True)),
        ({"schedule": "polynomial", "sparsity_init": 0.0, "sparsity_target": 0.6, "sparsity_target_epoch": 3,
          "power": 2, "concave": False},
         lambda e: fs.polynomial_level(e, 0.0, 0.6, 3, 2, False)),
        ({"schedule": "exponential", "sparsity_init": 0.05, "sparsity_target": 0.8, "sparsity_target_epoch": 4},
         lambda e: fs.exponential_level(e, 0.05, 0.8, 4)),
        ({"schedule": "multistep", "multistep_steps": [2, 4], "multistep_sparsity_levels": [0.1, 0.3, 0.6]},
         lambda e: [0.1, 0.3, 0.6][(e >= 2) + (e >= 4)]),
    ],
)
def test_schedule_levels_follow_the_formula(cnn: ResidualCNN, params: dict, formula) -> None:  # type: ignore[no-untyped-def]
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config(params))
    for epoch in range(6):
        ctrl.scheduler.epoch_step()
        expected = formula(epoch)
        assert ctrl.scheduler.current_level == pytest.approx(expected, abs=1e-12)
        assert ctrl.statistics().magnitude_sparsity.current_level == pytest.approx(expected, abs=1e-12)
        assert abs(ctrl.compression_rate - expected) <= _max_level_error(ctrl) * 2


def test_stage_goes_uncompressed_partially_fully(cnn: ResidualCNN) -> None:
    ctrl, _ = nnc.create_compressed_model(
        cnn, sparsity_config({"sparsity_init": 0.0, "sparsity_target": 0.5, "sparsity_target_epoch": 2})
    )
    stages = []
    for _ in range(4):
        ctrl.scheduler.epoch_step()
        stages.append(ctrl.compression_stage())
    U, P, F = CompressionStage
    assert stages == [U, P, F, F]


def test_per_step_updates_with_and_without_steps_per_epoch(cnn: ResidualCNN) -> None:
    base = {"sparsity_init": 0.0, "sparsity_target": 0.8, "sparsity_target_epoch": 2, "power": 1,
            "concave": False, "update_per_optimizer_step": True}

    def levels_per_step(config: nnc.CompressionConfig, model: ResidualCNN) -> list[float]:
        ctrl, _ = nnc.create_compressed_model(model, config)
        levels = []
        for _ in range(2):  # 2 epochs of 4 steps
            ctrl.scheduler.epoch_step()
            for _ in range(4):
                ctrl.scheduler.step()
                levels.append(ctrl.scheduler.current_level)
        return levels

    given = levels_per_step(sparsity_config({**base, "steps_per_epoch": 4}), cnn)
    assert given == pytest.approx([0.8 * i / 8 for i in range(8)])
    # steps_per_epoch measured during the first epoch, which NNCF does not count: the second
    # epoch is epoch 0
    with pytest.warns(UserWarning, match="steps_per_epoch"):
        measured = levels_per_step(sparsity_config(base), ResidualCNN())
    assert measured[:4] == [0.0] * 4 and measured[4:] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_masks_only_recomputed_when_level_changes(cnn: ResidualCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    ctrl, _ = nnc.create_compressed_model(
        cnn, sparsity_config({"sparsity_target": 0.5, "sparsity_target_epoch": 1, "update_per_optimizer_step": True,
                              "steps_per_epoch": 3})
    )
    calls = []
    original = ctrl.set_sparsity_level
    monkeypatch.setattr(ctrl, "set_sparsity_level", lambda *a, **k: (calls.append(a), original(*a, **k)))
    ctrl.scheduler.epoch_step(5)  # past the target epoch: the level no longer changes
    for _ in range(10):
        ctrl.scheduler.step()
    assert len(calls) == 1


def test_freeze_epoch_stops_mask_updates(cnn: ResidualCNN) -> None:
    ctrl, model = nnc.create_compressed_model(
        cnn, sparsity_config({"sparsity_target": 0.5, "sparsity_target_epoch": 1, "sparsity_freeze_epoch": 2})
    )
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    masks = [r.mask.mask.clone() for r in ctrl.sparsified_weights]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p))  # would change the smallest weights
    ctrl.scheduler.epoch_step()
    assert all(torch.equal(m, r.mask.mask) for m, r in zip(masks, ctrl.sparsified_weights))


def test_global_vs_local_thresholds(cnn: ResidualCNN) -> None:
    ctrl, _ = nnc.create_compressed_model(
        cnn, sparsity_config({"sparsity_level_setting_mode": "local", "weight_importance": "abs"})
    )
    ctrl.set_sparsity_level(0.5)
    for rec in ctrl.sparsified_weights:
        level = float((rec.mask.mask == 0).float().mean())
        assert abs(level - 0.5) <= 1 / rec.mask.mask.numel() + 1e-9
    ctrl.set_sparsity_level(0.9, layer="fc.weight")
    fc = next(r for r in ctrl.sparsified_weights if r.weight == "fc.weight")
    assert float((fc.mask.mask == 0).float().mean()) == pytest.approx(0.9, abs=1 / 160)
    with pytest.raises(InvalidArgumentError, match="1.5"):
        ctrl.set_sparsity_level(1.5)
    with pytest.raises(InvalidArgumentError, match="nope"):
        ctrl.set_sparsity_level(0.2, layer="nope")


def test_global_abs_threshold_is_shared_and_exact(cnn: ResidualCNN) -> None:
    ctrl, model = nnc.create_compressed_model(cnn, sparsity_config({"weight_importance": "abs"}))
    ctrl.set_sparsity_level(0.3)
    weights = torch.cat([model.get_parameter(r.weight).detach().abs().flatten() for r in ctrl.sparsified_weights])
    k = round(0.3 * weights.numel())
    threshold = weights.double().sort().values[k - 1].item()
    assert [r.threshold for r in ctrl.sparsified_weights] == [pytest.approx(threshold)] * len(ctrl.sparsified_weights)
    assert ctrl.compression_rate == pytest.approx(k / weights.numel())


def test_statistics_tables_and_flat_metrics(cnn: ResidualCNN) -> None:
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_target": 0.5, "sparsity_target_epoch": 0}))
    ctrl.scheduler.epoch_step()
    stats = ctrl.statistics()
    text = stats.to_str()
    assert "magnitude_sparsity" in text and "fc.weight" in text and "16x1x3x3" in text
    flat = stats.to_dict()
    assert flat["magnitude_sparsity/layers_level"] == pytest.approx(0.5, abs=0.01)
    assert 0 < flat["magnitude_sparsity/model_level"] < flat["magnitude_sparsity/layers_level"]
    assert "magnitude_sparsity/layer/fc.weight" in flat
    json.dumps(flat)


def test_training_keeps_masked_weights_at_zero(cnn: ResidualCNN) -> None:
    ctrl, model = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_target": 0.6, "sparsity_target_epoch": 0}))
    ctrl.scheduler.epoch_step()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        ctrl.scheduler.step()
        loss = model(torch.randn(8, 1, 8, 8)).square().mean() + ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    stripped = ctrl.strip()
    zeros = sum(int((stripped.get_parameter(r.weight) == 0).sum()) for r in ctrl.sparsified_weights)
    total = sum(r.mask.mask.numel() for r in ctrl.sparsified_weights)
    assert zeros / total == pytest.approx(ctrl.compression_rate)
    assert ctrl.compression_rate == pytest.approx(0.6, abs=0.01)


def test_disable_scheduler_stops_level_changes(cnn: ResidualCNN) -> None:
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_target": 0.5, "sparsity_target_epoch": 3}))
    ctrl.disable_scheduler()
    for _ in range(5):
        ctrl.scheduler.epoch_step()
    assert ctrl.compression_rate == 0.0
