"""filter_pruning's ``channel_multiple``: kept channels rounded up to a multiple (default 16).

onnxruntime's CPU convolutions work on blocks of 16 channels; widths off the multiple made a pruned
ResNet slower than the dense one (``benchmarks/pruning.py``), so the default keeps multiples of 16.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.algorithms.pruning import levels
from nncompress.algorithms.pruning.algo import FilterPruningController
from nncompress.demo.cnns import CifarResNet
from nncompress.errors import ConfigError


def config(**params: Any) -> nnc.CompressionConfig:
    return nnc.CompressionConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 16, 16]},
        "compression": {"algorithm": "filter_pruning",
                        "params": {"schedule": "baseline", "prune_first_conv": True, "prune_downsample_convs": True,
                                   **params}}})


def pruned(widths: tuple[int, ...] = (32, 64, 128), blocks: int = 2, **params: Any
           ) -> tuple[FilterPruningController, nn.Module]:
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(CifarResNet(widths=widths, blocks=blocks), config(**params))
    assert isinstance(ctrl, FilterPruningController)
    ctrl.scheduler.epoch_step()  # baseline: the target at once
    return ctrl, model


def test_rounding_rules() -> None:
    # kept = ceil(kept / m) * m, at most the whole group (NNCF 2.x's rule, with its multiple of 8)
    assert [levels.rounded_pruned(64, p, 16) for p in (0, 1, 15, 16, 17, 47, 48, 63)] == [0, 0, 0, 16, 16, 32, 48, 48]
    assert [levels.rounded_pruned(24, p, 16) for p in (0, 7, 8, 20)] == [0, 0, 8, 8]
    assert levels.rounded_pruned(10, 3, 1) == 3
    assert [levels.next_pruned(64, p, 16) for p in (0, 16, 32, 48)] == [16, 32, 48, None]
    assert [levels.next_pruned(24, p, 16) for p in (0, 8)] == [8, None]
    assert [levels.next_pruned(5, p, 1) for p in (0, 3, 4)] == [1, 4, None]
    assert (levels.min_kept(16, 16), levels.min_kept(40, 16), levels.min_kept(40, 1)) == (16, 16, 1)
    assert levels.uniform_counts({0: 64, 1: 24}, 0.3, 16) == {0: 16, 1: 0}


def test_round_keeps_brings_back_the_most_important_removed_channels() -> None:
    keep = torch.tensor([True] * 10 + [False] * 22)  # 10 kept: rounds up to 16
    importance = torch.arange(32, dtype=torch.float64)
    (rounded,) = levels.round_keeps([keep], [importance], 16)
    assert int(rounded.sum()) == 16
    assert rounded[:10].all() and rounded[26:].all() and not rounded[10:26].any()


@pytest.mark.parametrize("all_weights", [False, True])
def test_default_keeps_multiples_of_16_and_meets_the_flops_target(all_weights: bool) -> None:
    ctrl, model = pruned(pruning_flops_target=0.4, all_weights=all_weights)
    stats = ctrl.statistics().filter_pruning
    assert abs(stats.flops_pruning_level - 0.4) <= 0.02
    for group in ctrl.pruned_groups:
        kept = int(group.keep().sum())
        assert kept == group.channels or kept % 16 == 0
    stripped = ctrl.strip(do_copy=True)
    widths = [m.out_channels for m in stripped.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 16 == 0 for w in widths) and sum(widths) < sum(
        m.out_channels for m in CifarResNet().modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(stripped.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_filter_level_is_rounded_too() -> None:
    ctrl, _ = pruned(pruning_target=0.3)
    # 32 -> keeps 32 (ceil(22.4) = 23 rounds up to 32); 64 -> 48; 128 -> 96
    assert sorted({(g.channels, int(g.keep().sum())) for g in ctrl.pruned_groups}) == [(32, 32), (64, 48), (128, 96)]


def test_narrow_groups_are_skipped_with_the_reason() -> None:
    ctrl, _ = pruned(widths=(16, 32), blocks=1, pruning_target=0.5)
    reasons = dict(ctrl.skipped_groups)
    assert reasons and all("channel_multiple (16)" in r for r in reasons.values())
    assert {g.channels for g in ctrl.pruned_groups} == {32}
    exact, _ = pruned(widths=(16, 32), blocks=1, pruning_target=0.5, channel_multiple=1)
    assert not exact.skipped_groups


def test_all_weights_flops_target_with_a_skipped_group() -> None:
    # regression: the global ranking gave positions, the FLOPs search wanted group indices
    ctrl, _ = pruned(widths=(16, 32, 64), pruning_flops_target=0.3, all_weights=True)
    assert ctrl.skipped_groups
    assert abs(ctrl.statistics().filter_pruning.flops_pruning_level - 0.3) <= 0.03


def test_bad_multiple_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="channel_multiple"):
        config(channel_multiple=0)


def test_coarse_steps_trade_between_groups_to_reach_the_target() -> None:
    # 32-64-128 at 50%: uniform multiples of 16 jump from 46% to 55%; trading steps between groups lands closer
    ctrl, _ = pruned(pruning_flops_target=0.5)
    assert abs(ctrl.statistics().filter_pruning.flops_pruning_level - 0.5) <= 0.01
    assert levels.previous_pruned(64, 48, 16) == 32 and levels.previous_pruned(24, 8, 16) == 0
    assert levels.previous_pruned(64, 0, 16) is None
