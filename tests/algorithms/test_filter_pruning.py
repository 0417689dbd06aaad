"""filter_pruning: groups pruned, NNCF 2.x level semantics, FLOPs targets, schedules, zero_grad."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.algorithms.pruning.algo import FilterPruningController
from nncompress.algorithms.pruning.masks import FilterPruningMask
from nncompress.api.compression import CompressionStage
from nncompress.demo.cnns import CifarResNet
from nncompress.errors import InvalidArgumentError
from nncompress.functional.importance import filter_importance, pruned_count
from nncompress.torch.runtime import get_runtime

ALL = {"prune_first_conv": True, "prune_downsample_convs": True, "channel_multiple": 1}


def resnet(seed: int = 0, widths: tuple[int, ...] = (16, 32), blocks: int = 1) -> CifarResNet:
    """A tiny digits-sized ResNet with random BatchNorm statistics (so masked channels matter)."""
    torch.manual_seed(seed)
    model = CifarResNet(num_classes=10, widths=widths, blocks=blocks, in_channels=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.eval()


def pruning_config(params: dict[str, Any] | None = None, **section: Any) -> nnc.CompressionConfig:
    """A filter_pruning config; exact channel counts (``channel_multiple`` 1) unless ``params`` say otherwise:
    these nets are too narrow for the default multiple of 16."""
    params = {"channel_multiple": 1, **(params or {})}
    return nnc.CompressionConfig.from_dict({"input_info": {"sample_size": [2, 1, 8, 8]},
                                            "compression": {"algorithm": "filter_pruning", "params": params,
                                                            **section}})


def compress(params: dict[str, Any] | None = None, model: nn.Module | None = None,
             **section: Any) -> tuple[FilterPruningController, nn.Module]:
    ctrl, cm = nnc.create_compressed_model(model if model is not None else resnet(), pruning_config(params, **section))
    assert isinstance(ctrl, FilterPruningController)
    return ctrl, cm


def test_groups_and_nncf_default_flags() -> None:
    ctrl, _ = compress()
    # stem + residual (reads the input) and the strided stage are skipped by NNCF's defaults
    assert [g.layers for g in ctrl.pruned_groups] == [["layers.0.conv1"]]
    reasons = dict(ctrl.skipped_groups)
    assert "prune_first_conv" in reasons[0] and "prune_downsample_convs" in reasons[2]
    ctrl, _ = compress(ALL)
    assert len(ctrl.pruned_groups) == 4 and not ctrl.skipped_groups
    assert [row.compressed for row in ctrl.capture_report.rows] == [True] * 6


def test_ignored_scopes_skip_the_whole_group() -> None:
    ctrl, _ = compress(ALL, ignored_scopes=["{re}.*shortcut.*"])
    assert [g.layers for g in ctrl.pruned_groups if "layers.1.conv2" in g.layers] == []
    assert any("ignored_scopes" in r for _, r in ctrl.skipped_groups)


def group_importance(model: nn.Module, layers: list[str], metric: str = "L2") -> torch.Tensor:
    return sum(filter_importance(model.get_submodule(m).weight.double(), metric) for m in layers)  # type: ignore


@pytest.mark.parametrize("metric", ["L2", "L1", "geometric_median"])
def test_level_prunes_the_least_important_channels_of_each_group(metric: str) -> None:
    model = resnet(1)
    ctrl, cm = compress({**ALL, "filter_importance": metric}, model=copy.deepcopy(model), pruning_init=0.3)
    for g in ctrl.pruned_groups:
        keep = g.keep()
        n = pruned_count(g.channels, 0.3)
        assert int((~keep).sum()) == n
        imp = group_importance(model, g.layers, metric)  # summed over the group's producers, as NNCF
        assert set(torch.argsort(imp, stable=True)[:n].tolist()) == set((~keep).nonzero().flatten().tolist())


def test_all_weights_ranks_every_filter_together() -> None:
    ctrl, _ = compress({**ALL, "all_weights": True}, pruning_init=0.5)
    pruned = sum(int((~g.keep()).sum()) for g in ctrl.pruned_groups)
    assert pruned == int(0.5 * 96)
    assert len({int((~g.keep()).sum()) / g.channels for g in ctrl.pruned_groups}) > 1  # not uniform


def test_masks_give_the_stripped_model_output() -> None:
    ctrl, cm = compress(ALL, pruning_init=0.45)
    x = torch.randn(5, 1, 8, 8)
    masked = cm(x)
    stripped = ctrl.strip(do_copy=True)
    assert type(stripped) is CifarResNet and get_runtime(stripped) is None
    assert stripped.layers[1].conv1.out_channels == 32 - pruned_count(32, 0.45)
    assert stripped.layers[1].bn1.num_features == stripped.layers[1].conv1.out_channels
    assert sum(p.numel() for p in stripped.parameters()) < sum(p.numel() for p in resnet().parameters())
    torch.testing.assert_close(stripped(x), masked, rtol=1e-5, atol=1e-5)
    assert get_runtime(cm) is not None  # do_copy: the compressed model is untouched


@pytest.mark.parametrize("target", [0.2, 0.4, 0.6])
@pytest.mark.parametrize("all_weights", [False, True])
def test_flops_target_is_met_within_two_points(target: float, all_weights: bool) -> None:
    ctrl, cm = compress({**ALL, "pruning_flops_target": target, "all_weights": all_weights,
                         "schedule": "baseline"}, resnet(widths=(16, 32), blocks=2), pruning_init=target)
    stats = ctrl.statistics().filter_pruning
    assert abs(stats.flops_pruning_level - target) <= 0.02  # NNCF 2.19 removed 24.6% for a 40% target
    assert ctrl.compression_rate == pytest.approx(stats.flops_pruning_level)
    assert ctrl.compression_stage() is CompressionStage.FULLY_COMPRESSED
    assert 0.6 < ctrl.maximal_compression_rate < 1.0
    with pytest.raises(InvalidArgumentError, match="cannot be reached"):
        ctrl.compression_rate = 0.999


def test_flops_target_beyond_reach_is_a_config_error() -> None:
    with pytest.raises(nnc.errors.ConfigError, match="pruning_flops_target.*at most"):
        compress({"pruning_flops_target": 0.9})  # only one group is prunable with NNCF's defaults
    with pytest.raises(nnc.errors.ConfigError, match=r"pruning_init.*at most"):  # the level set at creation
        compress({"pruning_flops_target": 0.05}, pruning_init=0.9)


def levels_and_frozen(ctrl: FilterPruningController, epochs: int) -> list[tuple[float, bool]]:
    out = []
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        ctrl.scheduler.step()
        out.append((round(ctrl.pruning_level, 6), ctrl.frozen))
    return out


def test_baseline_schedule_as_nncf() -> None:
    # NNCF test_baseline_scheduler: level 0 in the warm-up epoch, then the target, frozen at once
    ctrl, _ = compress({**ALL, "schedule": "baseline", "num_init_steps": 1, "pruning_target": 0.5})
    assert levels_and_frozen(ctrl, 3) == [(0.0, False), (0.5, True), (0.5, True)]


def test_exponential_with_bias_schedule_and_freeze() -> None:
    ctrl, _ = compress({**ALL, "schedule": "exponential_with_bias", "pruning_target": 0.7, "num_init_steps": 3,
                        "pruning_steps": 5}, pruning_init=0.1)
    assert ctrl.pruning_level == 0.1  # pruning_init at creation
    got = levels_and_frozen(ctrl, 10)
    assert [lv for lv, _ in got] == pytest.approx([0, 0, 0, 0.1, 0.648974, 0.695687, 0.699662, 0.7, 0.7, 0.7],
                                                  abs=1e-6)
    assert [f for _, f in got] == [False] * 8 + [True] * 2
    masks = [g.keep().clone() for g in ctrl.pruned_groups]
    ctrl.set_pruning_level(0.2)  # frozen: ignored
    assert all(torch.equal(m, g.keep()) for m, g in zip(masks, ctrl.pruned_groups))


def test_warm_up_epochs_train_unpruned() -> None:
    ctrl, _ = compress({**ALL, "num_init_steps": 2, "pruning_steps": 3, "pruning_target": 0.5}, pruning_init=0.2)
    assert any(not bool(g.keep().all()) for g in ctrl.pruned_groups)
    ctrl.scheduler.epoch_step()
    assert all(bool(g.keep().all()) for g in ctrl.pruned_groups) and ctrl.compression_stage() is \
        CompressionStage.UNCOMPRESSED


def test_compression_rate_setter_keeps_frozen_flag() -> None:
    ctrl, _ = compress(ALL)
    ctrl.freeze()
    ctrl.compression_rate = 0.3
    assert ctrl.frozen and ctrl.compression_rate == 0.3
    assert ctrl.compression_stage() is CompressionStage.PARTIALLY_COMPRESSED
    assert int((~ctrl.pruned_groups[0].keep()).sum()) == pruned_count(16, 0.3)
    with pytest.raises(InvalidArgumentError, match="pruning level"):
        ctrl.compression_rate = 1.5
    assert ctrl.maximal_compression_rate == 1.0


def pruned_rows_grads(ctrl: FilterPruningController, cm: nn.Module) -> list[torch.Tensor]:
    cm.train()
    cm(torch.randn(4, 1, 8, 8)).square().sum().backward()
    grads = []
    for g in ctrl.pruned_groups:
        gone = ~g.keep()
        for layer in g.layers:
            grads.append(cm.get_submodule(layer).weight.grad[gone])
        for name, _, _ in g.importance:
            assert cm.get_parameter(name).grad is not None
    return grads


def test_zero_grad_true_zeroes_pruned_filter_gradients() -> None:
    ctrl, cm = compress(ALL, pruning_init=0.5)
    assert all(bool((g == 0).all()) for g in pruned_rows_grads(ctrl, cm))
    bn = cm.layers[0].bn1  # after group 1: its BatchNorm is masked too (prune_batch_norms default)
    assert bool((bn.weight.grad[~ctrl.pruned_groups[1].keep()] == 0).all())


def test_zero_grad_false_passes_the_gradient_through_the_mask() -> None:
    ctrl0, cm0 = compress(ALL, pruning_init=0.5)
    ctrl1, cm1 = compress({**ALL, "zero_grad": False}, pruning_init=0.5)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(cm0(x), cm1(x), rtol=0, atol=0)  # the same forward
    weight = torch.randn(4, 3, requires_grad=True)
    for zero_grad, expected in ((True, [1.0, 0.0, 1.0, 0.0]), (False, [1.0] * 4)):
        mask = FilterPruningMask(weight.detach(), 0, zero_grad)
        mask.mask.copy_(torch.tensor([1.0, 0.0, 1.0, 0.0]))
        weight.grad = None
        out = mask(weight)
        assert bool((out[1] == 0).all()) and torch.equal(out[0], weight[0])
        out.sum().backward()
        assert weight.grad is not None and weight.grad[:, 0].tolist() == expected


def test_prune_batch_norms_false_leaves_batchnorms_unmasked() -> None:
    ctrl, cm = compress({**ALL, "prune_batch_norms": False}, pruning_init=0.3)
    runtime = get_runtime(cm)
    assert runtime is not None
    masked = set(runtime.weight_points)
    assert not any(".bn" in name or "shortcut.1" in name for name in masked)
    assert all(isinstance(m, FilterPruningMask) for m in runtime.group("filter_pruning").values())


def test_all_weights_flops_maximum_respects_the_quota() -> None:
    ctrl, _ = compress({**ALL, "pruning_flops_target": 0.3, "all_weights": True}, pruning_init=0.3)
    most = ctrl.maximal_compression_rate
    ctrl.compression_rate = most
    assert ctrl.compression_rate == pytest.approx(most, abs=0.02)
    assert all(int((~g.keep()).sum()) <= int(0.9 * g.channels) for g in ctrl.pruned_groups)


@pytest.mark.parametrize("all_weights", [False, True])
def test_flops_target_with_nncf_default_flags(all_weights: bool) -> None:
    # the stem and strided groups are skipped: the pruned groups' indices (1, 2, 5) are not their positions
    ctrl, _ = compress({"pruning_flops_target": 0.3, "all_weights": all_weights}, resnet(blocks=2), pruning_init=0.3)
    assert [g.index for g in ctrl.pruned_groups] == [1, 2, 5]
    assert ctrl.compression_rate == pytest.approx(0.3, abs=0.02)
    if all_weights:
        assert all(int((~g.keep()).sum()) <= int(0.9 * g.channels) for g in ctrl.pruned_groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda() -> None:
    model = resnet().cuda()
    ctrl, cm = nnc.create_compressed_model(model, pruning_config({**ALL, "pruning_flops_target": 0.4},
                                                                 pruning_init=0.4))
    x = torch.randn(3, 1, 8, 8, device="cuda")
    stripped = ctrl.strip(do_copy=True)
    torch.testing.assert_close(stripped(x), cm(x), rtol=1e-4, atol=1e-4)
