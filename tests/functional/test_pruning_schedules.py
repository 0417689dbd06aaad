"""Pruning schedules against NNCF 2.x's documented values and a float64 restatement of its formulas."""

from __future__ import annotations

import doctest
import math

import pytest

from nncompress.errors import InvalidArgumentError
from nncompress.functional import pruning_schedules as ps
from nncompress.functional.pruning_schedules import (
    baseline_pruning_level,
    exponential_pruning_level,
    exponential_with_bias_coefficients,
    exponential_with_bias_pruning_level,
    pruning_freeze_epoch,
    pruning_level,
)


def test_doctests() -> None:
    assert doctest.testmod(ps).failed == 0


def test_exponential_with_bias_matches_nncf_unit_test_values() -> None:
    # NNCF 2.x tests/torch/pruning/test_schedulers.py::test_exponential_with_bias
    expected = [0, 0, 0, 0.1, 0.6489741, 0.6956869, 0.6996617, 0.7, 0.7, 0.7]
    got = [exponential_with_bias_pruning_level(e, 0.1, 0.7, 3, 5) for e in range(10)]
    assert got == pytest.approx(expected, rel=1e-6)
    assert pruning_freeze_epoch("exponential_with_bias", 3, 5) == 8


def test_exponential_with_bias_coefficients_match_nncf_and_fsolve() -> None:
    a, b, k = exponential_with_bias_coefficients(0.0, 0.5, 19)  # NNCF test_exponential_scheduler
    assert (a, b, k) == pytest.approx((-0.5, 0.5, 0.5836), abs=1e-4)
    scipy_optimize = pytest.importorskip("scipy.optimize")
    for p_min, p_max, t in [(0.0, 0.5, 19), (0.1, 0.7, 4), (0.05, 0.25, 9), (0.2, 0.4, 14)]:
        c = (0.75 * p_max - p_min) / (p_max - p_min)
        k_ref = scipy_optimize.fsolve(lambda x, c=c, t=t: math.exp(-x[0] * t) ** 0.125 - c * math.exp(-x[0] * t)
                                      + c - 1, [1.0])[0]
        a, b, k = exponential_with_bias_coefficients(p_min, p_max, t)
        assert k == pytest.approx(k_ref, rel=1e-5)
        assert a + b == pytest.approx(p_min, abs=1e-12)
        assert a * math.exp(-k * t) + b == pytest.approx(p_max, rel=1e-9)
        assert a * math.exp(-k * t / 8) + b == pytest.approx(0.75 * p_max, rel=1e-9)


def test_exponential_with_bias_refuses_init_near_target() -> None:
    with pytest.raises(InvalidArgumentError, match="5/7"):
        exponential_with_bias_coefficients(0.4, 0.5, 10)
    assert exponential_with_bias_pruning_level(3, 0.95, 0.1, 0, 1) == 0.1  # one step: the target at once


def ref_exponential(epoch: int, init: float, target: float, warmup: int, steps: int) -> float:
    """NNCF 2.x's ExponentialPruningScheduler restated: ExponentialDecaySchedule on the density."""
    if epoch < warmup:
        return 0.0
    d0, dt, last = 1.0 - init, 1.0 - target, steps - 1
    if last == 0:
        return target
    density = max(d0 * (dt / d0) ** ((epoch - warmup) / last), dt)
    return min(1.0 - density, target)


@pytest.mark.parametrize("init,target,warmup,steps", [(0.1, 0.4, 0, 15), (0.05, 0.25, 2, 10), (0.0, 0.5, 1, 20),
                                                       (0.1, 0.5, 0, 1), (0.0, 1.0, 0, 4)])
def test_exponential_matches_nncf_formula(init: float, target: float, warmup: int, steps: int) -> None:
    for epoch in range(-1, warmup + steps + 3):
        assert exponential_pruning_level(epoch, init, target, warmup, steps) == pytest.approx(
            ref_exponential(epoch, init, target, warmup, steps), abs=1e-12)
    assert exponential_pruning_level(warmup, init, target, warmup, steps) == pytest.approx(
        target if steps == 1 else init)
    assert pruning_freeze_epoch("exponential", warmup, steps) == warmup + steps


def test_exponential_with_init_above_target_stays_at_target() -> None:
    # NNCF's corpus config resnet18_pruning_accuracy_aware.json: init 0.95, target 0.1, one step
    assert [exponential_pruning_level(e, 0.95, 0.1, 0, 1) for e in range(3)] == [0.1, 0.1, 0.1]
    assert [exponential_pruning_level(e, 0.6, 0.2, 0, 3) for e in range(5)] == pytest.approx([0.2] * 5)


def test_baseline_and_dispatch() -> None:
    # NNCF test_baseline_scheduler: one warm-up epoch, then the target, frozen from epoch 1
    assert [baseline_pruning_level(e, 0.5, 1) for e in (0, 1, 2)] == [0.0, 0.5, 0.5]
    assert pruning_freeze_epoch("baseline", 1, 100) == 1
    assert pruning_level("baseline", 1, 0.3, 0.5, 1, 100) == 0.5
    assert pruning_level("exponential", 0, 0.3, 0.5, 0, 10) == pytest.approx(0.3)
    with pytest.raises(InvalidArgumentError, match="schedule"):
        pruning_level("polynomial", 0, 0.0, 0.5, 0, 10)
    with pytest.raises(InvalidArgumentError, match="pruning_steps"):
        exponential_pruning_level(0, 0.0, 0.5, 0, 0)
    with pytest.raises(InvalidArgumentError, match="target"):
        exponential_pruning_level(0, 0.0, 1.5, 0, 3)


@pytest.mark.parametrize("schedule", ps.PRUNING_SCHEDULES)
def test_levels_are_monotone_and_end_at_target(schedule: str) -> None:
    levels = [pruning_level(schedule, e, 0.1, 0.6, 2, 8) for e in range(-1, 15)]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(0.6) and levels[0] == 0.0
