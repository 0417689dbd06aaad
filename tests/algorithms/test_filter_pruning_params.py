"""filter_pruning: typed params (NNCF 2.x defaults, checks) and the count searches for a FLOPs target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.algorithms.pruning import levels
from nncompress.algorithms.pruning.params import FilterPruningParams
from nncompress.config import CompressionConfig
from nncompress.errors import ConfigError, UnsupportedAlgorithmError


def params_of(section: dict[str, Any]) -> FilterPruningParams:
    """Params of a section, validated by the config's schema first."""
    config = CompressionConfig.from_dict({"input_info": {"sample_size": [1, 3, 8, 8]},
                                          "compression": {"algorithm": "filter_pruning", **section}})
    return FilterPruningParams.from_section(config.algorithm_sections()[0])


def test_defaults_are_nncf_2x() -> None:
    p = params_of({})
    assert (p.pruning_init, p.schedule, p.pruning_target, p.pruning_steps, p.num_init_steps) == (
        0.0, "exponential", 0.5, 100, 0)
    assert (p.filter_importance, p.all_weights, p.prune_first_conv, p.prune_downsample_convs,
            p.prune_batch_norms, p.zero_grad) == ("L2", False, False, False, True, True)
    assert not p.prune_flops and p.target_level == 0.5 and p.freeze_epoch == 100


def test_section_values_and_flops_target() -> None:
    p = params_of({"pruning_init": 0.1, "params": {"schedule": "baseline", "pruning_flops_target": 0.4,
                                                   "num_init_steps": 2, "zero_grad": False, "all_weights": True}})
    assert p.pruning_init == 0.1 and p.prune_flops and p.target_level == 0.4 and p.freeze_epoch == 2
    assert not p.zero_grad and p.all_weights


def test_both_targets_refused() -> None:
    with pytest.raises(ConfigError, match="pruning_flops_target.*either pruning_target"):
        params_of({"params": {"pruning_target": 0.3, "pruning_flops_target": 0.3}})


def test_learned_ranking_refused_clearly() -> None:
    with pytest.raises(UnsupportedAlgorithmError, match="interlayer_ranking_type.*learned_ranking.*not supported"):
        params_of({"params": {"interlayer_ranking_type": "learned_ranking", "pruning_flops_target": 0.3}})


def test_schedule_checks() -> None:
    with pytest.raises(ConfigError, match="pruning_steps"):
        params_of({"params": {"pruning_steps": 0}})
    with pytest.raises(ConfigError, match="5/7"):
        params_of({"pruning_init": 0.4, "params": {"schedule": "exponential_with_bias", "pruning_target": 0.5}})
    # NNCF's own accuracy-aware test config: init above target, one step
    assert params_of({"pruning_init": 0.95, "params": {"pruning_target": 0.1, "pruning_steps": 1}}).pruning_init == 0.95


def test_schema_knows_zero_grad_and_rejects_typos() -> None:
    with pytest.raises(ConfigError, match="zero_grad"):
        params_of({"params": {"zero_grad": "yes"}})
    with pytest.raises(ConfigError):
        params_of({"params": {"prune_first_convs": True}})


# -- count searches on a toy cost model: removing a channel of group g removes w[g] FLOPs ----------

def toy(weights: Mapping[int, int], channels: Mapping[int, int]) -> levels.Removed:
    full = sum(weights[g] * channels[g] for g in channels) + 100  # +100: FLOPs no group touches

    def removed(counts: Mapping[int, int]) -> float:
        return sum(weights[g] * counts[g] for g in counts) / full

    return removed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 40), st.integers(1, 30)), min_size=1, max_size=6), st.floats(0.0, 0.6))
def test_uniform_flops_counts_are_closest_and_near_uniform(groups: list[tuple[int, int]], target: float) -> None:
    channels = {i: c for i, (c, _) in enumerate(groups)}
    weights = {i: w for i, (_, w) in enumerate(groups)}
    removed = toy(weights, channels)
    most = removed(levels.uniform_counts(channels, 1.0))
    if target > most:
        with pytest.raises(Exception, match="cannot be reached"):
            levels.uniform_counts_for_flops(channels, removed, target)
        return
    counts = levels.uniform_counts_for_flops(channels, removed, target)
    assert all(0 <= counts[g] <= channels[g] - 1 for g in channels)
    # within one channel's FLOPs of the target (the closest of the two states around it)
    step = max(weights.values()) / (sum(weights[g] * channels[g] for g in channels) + 100)
    assert abs(removed(counts) - target) <= step / 2 + 1e-12 or removed(counts) >= target
    assert abs(removed(counts) - target) <= step + 1e-12
    # near-uniform: every group's count is a uniform level's count, or between two neighbouring levels
    levels_seen = [counts[g] / channels[g] for g in channels]
    assert max(levels_seen) - min(levels_seen) <= max(1 / c for c in channels.values()) + 1e-9


def test_global_flops_counts_follow_the_order_and_quota() -> None:
    channels = {0: 10, 1: 4}
    removed = toy({0: 1, 1: 5}, channels)
    order = [(1, 0), (1, 1), (1, 2), (1, 3), *[(0, c) for c in range(10)]]
    counts, gone = levels.global_counts_for_flops(channels, order, removed, 0.155)
    assert counts == {0: 5, 1: 3}  # quota: floor(0.9 * 4) = 3 of group 1 at most; then group 0 in order
    assert gone == [(1, 0), (1, 1), (1, 2), *[(0, c) for c in range(5)]]
    assert removed(counts) == pytest.approx(20 / 130)
    with pytest.raises(Exception, match="cannot be reached"):
        levels.global_counts_for_flops(channels, order, removed, 0.9)
