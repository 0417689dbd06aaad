"""Sparsity as NNCF 2.x behaves (issue 8): schedules call for call, const fine-tuning, embeddings,
statistics, the compression_rate setter, refused levels and the local-mode stage.

The expected level sequences are NNCF's own test numbers (``tests/torch/sparsity/test_schedulers.py``
of NNCF 2.x: ``test_polynomial_schedule_per_optimizer_step``, ``test_adaptive_scheduler_per_epoch_step``,
``test_polynomial_schedule_per_epoch_step``), re-derived below from NNCF's formula.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.algorithms.sparsity.schedulers import AdaptiveSparsityScheduler, PolynomialSparsityScheduler
from nncompress.api.compression import CompressionStage
from nncompress.errors import CompressionStateError, ConfigError, InvalidArgumentError
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN


class RecordingTarget:
    """Stands for a controller: records set_sparsity_level / freeze calls, ignores sets once frozen."""

    def __init__(self, level: float, measured: float = 0.0) -> None:
        self.level = level
        self.measured = measured
        self.sets: list[float] = []
        self.freezes = 0

    @property
    def compression_rate(self) -> float:
        return self.measured

    def set_sparsity_level(self, level: float) -> None:
        self.sets.append(level)
        if not self.freezes:
            self.level = level

    def freeze(self) -> None:
        self.freezes += 1


# NNCF's test: power 2, sparsity_init 0.1, target 0.5 at epoch 3, freeze at 4, convex, per step
POLY = {"initial": 0.1, "final": 0.5, "freeze_epoch": 4, "target_epoch": 3, "power": 2.0, "concave": False,
        "per_step": True}


def nncf_convex_level(epoch: int, step: int, steps_per_epoch: int) -> Fraction:
    """NNCF's PolynomialDecaySchedule, convex, in exact fractions: 0.1 + 0.4 * ((e + s/n) / 3) ** 2."""
    progress = min(max((epoch + Fraction(step, steps_per_epoch)) / 3, Fraction(0)), Fraction(1))
    return Fraction(1, 10) + Fraction(4, 10) * progress**2


def test_reference_formula_gives_nncf_test_numbers() -> None:
    assert [nncf_convex_level(0, s, 3) for s in range(3)] == [Fraction(1, 10), Fraction(85, 810), Fraction(97, 810)]
    assert [nncf_convex_level(1, s, 3) for s in range(3)] == [Fraction(13, 90), Fraction(145, 810),
                                                              Fraction(181, 810)]


def _levels_after_each_step(sched: PolynomialSparsityScheduler, target: RecordingTarget,
                            epochs: int, steps: int) -> list[float]:
    out = []
    for _ in range(epochs):
        sched.epoch_step()
        for _ in range(steps):
            sched.step()
            out.append(target.level)
    return out


def test_per_step_polynomial_with_steps_per_epoch_matches_nncf() -> None:
    target = RecordingTarget(0.1)
    sched = PolynomialSparsityScheduler(target, steps_per_epoch=3, **POLY)  # type: ignore[arg-type]
    levels = _levels_after_each_step(sched, target, 2, 3)
    expected = [float(nncf_convex_level(e, s, 3)) for e in range(2) for s in range(3)]
    assert levels == pytest.approx(expected, abs=1e-15)
    assert levels[:3] == pytest.approx([0.1, 85 / 810, 97 / 810], abs=1e-15)


def test_per_step_polynomial_without_steps_per_epoch_skips_the_first_epoch() -> None:
    target = RecordingTarget(0.1)
    sched = PolynomialSparsityScheduler(target, steps_per_epoch=None, **POLY)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="steps_per_epoch"):
        sched.epoch_step()
    for _ in range(3):
        sched.step()
        # the measuring epoch is not counted: no level set, counters stay at -1
        assert (target.sets, sched.current_epoch, sched.current_step) == ([], -1, -1)
    levels = [target.level] * 3
    sched.epoch_step()
    assert (sched.steps_per_epoch, sched.current_epoch) == (3, 0)
    for _ in range(3):
        sched.step()
        levels.append(target.level)
    # the sequence: 0.1, 0.1, 0.1, 0.1, 0.1049, 0.1198
    assert levels == pytest.approx([0.1, 0.1, 0.1, 0.1, 85 / 810, 97 / 810], abs=1e-15)
    assert [round(v, 4) for v in levels] == [0.1, 0.1, 0.1, 0.1, 0.1049, 0.1198]


def test_steps_before_the_first_epoch_step_give_steps_per_epoch() -> None:
    target = RecordingTarget(0.1)
    sched = PolynomialSparsityScheduler(target, steps_per_epoch=None, **POLY)  # type: ignore[arg-type]
    for _ in range(3):  # a loop that calls epoch_step() at the end of each epoch
        sched.step()
    assert target.level == 0.1
    sched.epoch_step()
    assert (sched.steps_per_epoch, sched.current_epoch) == (3, 0)
    levels = []
    for _ in range(3):
        sched.step()
        levels.append(target.level)
    assert levels == pytest.approx([0.1, 85 / 810, 97 / 810], abs=1e-15)


def test_per_step_freezes_at_the_first_step_of_the_freeze_epoch() -> None:
    target = RecordingTarget(0.1)
    sched = PolynomialSparsityScheduler(target, steps_per_epoch=3, **POLY)  # type: ignore[arg-type]
    levels = _levels_after_each_step(sched, target, 5, 3)
    assert levels[9:12] == pytest.approx([0.5] * 3)  # epoch 3 reaches the target
    assert target.freezes == 3  # one per step() of epoch 4, as NNCF's _update_sparsity_level


@pytest.mark.parametrize(("concave", "expected"), [
    (False, [0.1, 13 / 90, 25 / 90, 0.5, 0.5]),
    (True, [0.1, 29 / 90, 41 / 90, 0.5, 0.5]),
])
def test_per_epoch_polynomial_matches_nncf(concave: bool, expected: list[float]) -> None:
    target = RecordingTarget(0.1)
    sched = PolynomialSparsityScheduler(target, 0.1, 0.5, 4, 3, 2.0, concave, False, None)  # type: ignore[arg-type]
    for i, level in enumerate(expected):
        sched.epoch_step()
        for _ in range(3):
            sched.step()
        assert target.sets[-1] == pytest.approx(level, abs=1e-15)
        assert target.freezes == (1 if i == 4 else 0)


def test_freeze_comes_before_the_level_of_the_freeze_epoch(cnn: ResidualCNN) -> None:
    # freeze at epoch 1, before the target: NNCF freezes first, so epoch 1 keeps epoch 0's masks
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config(
        {"sparsity_init": 0.1, "sparsity_target": 0.7, "sparsity_target_epoch": 3, "sparsity_freeze_epoch": 1}))
    ctrl.scheduler.epoch_step()
    masks = [r.mask.mask.clone() for r in ctrl.sparsified_weights]
    ctrl.scheduler.epoch_step()
    assert all(torch.equal(m, r.mask.mask) for m, r in zip(masks, ctrl.sparsified_weights))
    assert ctrl.current_level == pytest.approx(0.1)


def test_adaptive_first_epoch_step_counts_as_nncf() -> None:
    target = RecordingTarget(0.2)
    sched = AdaptiveSparsityScheduler(target, 0.2, 0.4, 7, 1, 0.05, 0.03)  # type: ignore[arg-type]
    measured = [0.3, 0.2, 0.22, 0.31, 0.34, 0.37, 0.48]
    levels = []
    for m in measured:
        target.measured = m
        sched.epoch_step()
        for _ in range(3):
            sched.step()
        levels.append(target.sets[-1])
    assert levels == pytest.approx([0.25, 0.25, 0.3, 0.35, 0.4, 0.4, 0.4], abs=1e-12)


# --- const sparsity ------------------------------------------------------------------------------

CONST = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": {"algorithm": "const_sparsity"}}


def _train(model: nn.Module, ctrl: nnc.api.compression.CompressionAlgorithmController, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(1)
    for _ in range(steps):
        ctrl.scheduler.step()
        loss = model(torch.randn(8, 1, 8, 8)).square().mean() + ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_const_masks_start_all_ones_as_nncf(cnn: ResidualCNN) -> None:
    with torch.no_grad():
        cnn.stem[0].weight[0] = 0  # zeros in the weight do not make the mask
    ctrl, _ = nnc.create_compressed_model(cnn, CONST)
    assert all(bool(r.mask.mask.eq(1).all()) for r in ctrl.sparsified_weights)
    assert ctrl.compression_stage() is CompressionStage.FULLY_COMPRESSED


def test_magnitude_checkpoint_continues_with_const_sparsity(cnn: ResidualCNN) -> None:
    mag, mag_model = nnc.create_compressed_model(cnn, sparsity_config(
        {"sparsity_init": 0.3, "sparsity_target": 0.6, "sparsity_target_epoch": 2}))
    for _ in range(3):
        mag.scheduler.epoch_step()
        _train(mag_model, mag, 2)
    checkpoint = {"model": mag_model.state_dict(), "compression_state": mag.get_compression_state()}
    with pytest.raises(CompressionStateError, match="load the checkpoint's state_dict"):
        nnc.create_compressed_model(ResidualCNN(), CONST, compression_state=checkpoint["compression_state"])

    const, model = nnc.create_compressed_model(ResidualCNN(), CONST)
    result = model.load_state_dict(checkpoint["model"])  # strict: every key is taken
    assert not result.missing_keys and not result.unexpected_keys
    for c, m in zip(const.sparsified_weights, mag.sparsified_weights):
        assert c.weight == m.weight and torch.equal(c.mask.mask, m.mask.mask)
    assert const.compression_rate == pytest.approx(mag.compression_rate)
    x = torch.randn(4, 1, 8, 8)
    mag_model.eval()
    model.eval()
    assert torch.equal(model(x), mag_model(x))
    model.train()
    _train(model, const, 3)  # the masked weights stay zero through fine-tuning
    stripped = const.strip(do_copy=True, strip_format=nnc.StripFormat.IN_PLACE)
    for rec in const.sparsified_weights:
        assert torch.all(stripped.get_parameter(rec.weight)[rec.mask.mask == 0] == 0)


# --- embeddings, statistics, rate setter, refused levels, local stage ---------------------------


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


def _token_config(**params: object) -> dict[str, object]:
    return {"compression": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5, "params": params}}


def test_embedding_weights_are_sparsified_rows_only_and_exact() -> None:
    torch.manual_seed(0)
    net = TokenNet()
    ids = torch.randint(0, 50, (3, 7))
    ctrl, model = nnc.create_compressed_model(net, _token_config(), example_input=ids)
    names = [r.weight for r in ctrl.sparsified_weights]
    assert "emb.weight" in names
    mask = next(r.mask.mask for r in ctrl.sparsified_weights if r.weight == "emb.weight")
    assert 0.3 < float((mask == 0).float().mean()) < 0.7
    out = model(ids)
    out.sum().backward()
    grad = model.emb.weight.grad.clone()
    # reference: the whole table masked, plain PyTorch
    ref_w = model.emb.weight.detach().clone().requires_grad_(True)
    fc_mask = next(r.mask.mask for r in ctrl.sparsified_weights if r.weight == "fc.weight")
    ref = F.linear(F.embedding(ids, ref_w * mask).mean(1), model.fc.weight.detach() * fc_mask, model.fc.bias.detach())
    ref.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    assert ref_w.grad is not None and torch.allclose(grad, ref_w.grad, atol=1e-6)


def test_model_level_counts_only_the_models_own_parameters() -> None:
    torch.manual_seed(0)
    net = TokenNet()
    own = {n: p.numel() for n, p in net.named_parameters()}
    with torch.no_grad():
        net.fc.bias.zero_()  # natural zeros of other parameters count, as NNCF
    config = {"compression": [
        {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5},
        {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}},
    ]}
    ids = torch.randint(0, 50, (3, 7))
    ctrl, model = nnc.create_compressed_model(net, config, example_input=ids)
    assert sum(p.numel() for p in model.parameters()) > sum(own.values())  # quantizers added parameters
    stats = ctrl.statistics().magnitude_sparsity
    sparse = ctrl.child_ctrls[0]
    zeros = sum(int((r.mask.mask == 0).sum()) for r in sparse.sparsified_weights) + own["fc.bias"]
    assert stats.model_level == pytest.approx(zeros / sum(own.values()))
    assert stats.layers_level == pytest.approx(sparse.compression_rate)


def test_compression_rate_setter_sets_the_level_and_freezes(cnn: ResidualCNN) -> None:
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_target": 0.8, "sparsity_target_epoch": 2}))
    ctrl.compression_rate = 0.4
    assert ctrl.compression_rate == pytest.approx(0.4, abs=0.02)
    assert ctrl.current_level == 0.4 and ctrl.frozen
    masks = [r.mask.mask.clone() for r in ctrl.sparsified_weights]
    ctrl.scheduler.epoch_step(5)  # frozen, as after NNCF's setter
    assert all(torch.equal(m, r.mask.mask) for m, r in zip(masks, ctrl.sparsified_weights))
    with pytest.raises(InvalidArgumentError, match=r"1\.0.*\[0, 1\)|\[0, 1\).*1\.0"):
        ctrl.compression_rate = 1.0
    const, _ = nnc.create_compressed_model(ResidualCNN(), CONST)
    with pytest.raises(InvalidArgumentError, match="const_sparsity"):
        const.compression_rate = 0.5


def test_composite_compression_rate_setter_sets_the_first_child(cnn: ResidualCNN) -> None:
    config = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": [
        {"algorithm": "magnitude_sparsity", "target_scopes": ["{re}.*blocks.*"]},
        {"algorithm": "const_sparsity", "ignored_scopes": ["{re}.*blocks.*"]},
    ]}
    ctrl, _ = nnc.create_compressed_model(cnn, config)
    ctrl.compression_rate = 0.3
    assert ctrl.child_ctrls[0].current_level == 0.3


@pytest.mark.parametrize("level", [1.0, 1.5, -0.1, float("nan")])
def test_set_sparsity_level_outside_zero_one_open_is_refused(cnn: ResidualCNN, level: float) -> None:
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_init": 0.2}))
    masks = [r.mask.mask.clone() for r in ctrl.sparsified_weights]
    with pytest.raises(InvalidArgumentError) as info:
        ctrl.set_sparsity_level(level)
    assert repr(level) in str(info.value) and "[0, 1)" in str(info.value)
    assert all(torch.equal(m, r.mask.mask) for m, r in zip(masks, ctrl.sparsified_weights))


@pytest.mark.parametrize("params", [
    {"sparsity_target": 1.0},
    {"schedule": "multistep", "multistep_steps": [2], "multistep_sparsity_levels": [0.5, 1.0]},
])
def test_schedules_that_reach_level_one_are_refused_at_creation(cnn: ResidualCNN, params: dict) -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        nnc.create_compressed_model(cnn, sparsity_config(params))


def test_local_mode_stage_is_fully_compressed_even_at_level_zero(cnn: ResidualCNN) -> None:
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_level_setting_mode": "local"}))
    assert ctrl.current_level == 0.0
    assert ctrl.compression_stage() is CompressionStage.FULLY_COMPRESSED
    glob, _ = nnc.create_compressed_model(ResidualCNN(), sparsity_config({}))
    assert glob.compression_stage() is CompressionStage.UNCOMPRESSED


def test_embedding_bag_weights_are_sparsified() -> None:
    class BagNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = nn.EmbeddingBag(30, 8, mode="sum")
            self.fc = nn.Linear(8, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.bag(ids))

    torch.manual_seed(0)
    ids = torch.randint(0, 30, (4, 5))
    ctrl, model = nnc.create_compressed_model(BagNet(), _token_config(), example_input=ids)
    assert [r.weight for r in ctrl.sparsified_weights] == ["bag.weight", "fc.weight"]
    bag_mask, fc_mask = (r.mask.mask for r in ctrl.sparsified_weights)
    ref = F.linear(F.embedding_bag(ids, model.bag.weight * bag_mask, mode="sum"), model.fc.weight * fc_mask,
                   model.fc.bias)
    assert torch.allclose(model(ids), ref, atol=1e-6)


@pytest.mark.parametrize("level", [1.0, -0.1, float("nan"), True, "0.5"])
@pytest.mark.parametrize("frozen", [False, True])
def test_compression_rate_setter_refuses_as_set_sparsity_level(cnn: ResidualCNN, level: object, frozen: bool) -> None:
    """One level check (``set_sparsity_level``'s) for both ways to set a level; a refused level
    leaves the masks and the frozen flag as they were."""
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_init": 0.2}))
    ctrl.freeze(frozen)
    masks = [r.mask.mask.clone() for r in ctrl.sparsified_weights]
    with pytest.raises(InvalidArgumentError) as direct:
        ctrl.set_sparsity_level(level)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError) as setter:
        ctrl.compression_rate = level  # type: ignore[assignment]
    assert str(setter.value) == str(direct.value)
    assert ctrl.frozen is frozen and ctrl.current_level == 0.2
    assert all(torch.equal(m, r.mask.mask) for m, r in zip(masks, ctrl.sparsified_weights))
