"""Schedules against NNCF 2.x's formulas (numpy float64 references), hand values and properties."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional import schedules
from nncompress.functional.schedules import (
    DEFAULT_ADAPTIVE_EPS,
    DEFAULT_ADAPTIVE_STEP,
    DEFAULT_CONCAVE,
    DEFAULT_MULTISTEP_LEVELS,
    DEFAULT_MULTISTEP_STEPS,
    DEFAULT_PATIENCE,
    DEFAULT_POWER,
    DEFAULT_SPARSITY_INIT,
    DEFAULT_SPARSITY_TARGET,
    DEFAULT_SPARSITY_TARGET_EPOCH,
    adaptive_level,
    exponential_level,
    fractional_epoch,
    multistep_level,
    polynomial_level,
)

# Levels agree with NNCF's np.power-based formulas up to a last-bit difference of pow().
ULP_TOL = 1e-15

levels = st.floats(0.0, 1.0)
epochs = st.floats(-10.0, 400.0)
target_epochs = st.integers(1, 200) | st.floats(0.5, 200.0)
powers = st.floats(0.1, 5.0)


# --- plain numpy float64 references, written from NNCF 2.x's definitions -----------------------


def ref_polynomial(
    epoch: float, initial: float, target: float, target_epoch: float, power: float, concave: bool
) -> float:
    if target_epoch == 0:
        return target
    progress = np.clip(np.float64(epoch) / np.float64(target_epoch), 0.0, 1.0)
    if concave:
        return float(target - (target - initial) * np.power(1.0 - progress, power))
    return float(initial + (target - initial) * np.power(progress, power))


def ref_exponential(epoch: float, initial: float, target: float, target_epoch: float) -> float:
    d0, dt = np.float64(1.0) - initial, np.float64(1.0) - target
    if target_epoch == 0:
        density = dt
    else:
        density = max(d0 * np.power(dt / d0, max(epoch, 0.0) / target_epoch), dt)
    return float(min(1.0 - density, target))


def ref_multistep(epoch: float, steps: list[int], values: list[float]) -> float:
    passed = sum(1 for s in steps if s <= epoch)  # linear scan, not bisect
    return values[passed]


# --- polynomial --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(-1, 0.0), (0, 0.0), (45, 0.232056634365926708946748418744), (90, 0.5), (91, 0.5), (1000, 0.5)],
)
def test_polynomial_nncf_defaults_hand_values(epoch: int, expected: float) -> None:
    # 0.5 - 0.5 * (1 - 45/90) ** 0.9 = 0.5 - 0.5 * 2 ** -0.9
    level = polynomial_level(
        epoch,
        DEFAULT_SPARSITY_INIT,
        DEFAULT_SPARSITY_TARGET,
        DEFAULT_SPARSITY_TARGET_EPOCH,
        DEFAULT_POWER,
        DEFAULT_CONCAVE,
    )
    assert level == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    ("epoch", "concave", "expected"),
    [
        (0, True, 0.0),
        (1, True, 0.35),  # 0.8 - 0.8 * 0.75 ** 2
        (2, True, 0.6),  # 0.8 - 0.8 * 0.5 ** 2
        (2, False, 0.2),  # 0.8 * 0.5 ** 2
        (3, False, 0.45),  # 0.8 * 0.75 ** 2
        (4, False, 0.8),
        (9, True, 0.8),
    ],
)
def test_polynomial_power_two_hand_values(epoch: int, concave: bool, expected: float) -> None:
    assert polynomial_level(epoch, 0.0, 0.8, 4, 2.0, concave) == pytest.approx(expected, abs=1e-15)


def test_polynomial_convex_default_power_hand_value() -> None:
    # 0.5 * 0.5 ** 0.9
    assert polynomial_level(45, 0.0, 0.5, 90, 0.9, False) == pytest.approx(0.267943365634073291, abs=1e-15)


def test_polynomial_zero_target_epoch_is_target_everywhere() -> None:
    assert [polynomial_level(e, 0.1, 0.7, 0, 0.9, True) for e in (-1, 0, 5)] == [0.7, 0.7, 0.7]


def test_polynomial_per_step_hand_value() -> None:
    # update_per_optimizer_step: epoch 3, 3rd of 4 steps (zero-based 2) -> 3.5; p = 0.35
    epoch = fractional_epoch(3, 2, 4)
    assert epoch == 3.5
    level = polynomial_level(epoch, 0.0, 0.5, 10, 0.9, True)
    assert level == pytest.approx(0.160693620370937506748, abs=1e-15)  # 0.5 - 0.5 * 0.65 ** 0.9


@given(epochs, levels, levels, target_epochs, powers, st.booleans())
def test_polynomial_matches_numpy_reference(
    epoch: float, initial: float, target: float, target_epoch: float, power: float, concave: bool
) -> None:
    ours = polynomial_level(epoch, initial, target, target_epoch, power, concave)
    assert ours == pytest.approx(
        ref_polynomial(epoch, initial, target, target_epoch, power, concave), abs=ULP_TOL
    )


@given(epochs, epochs, levels, levels, target_epochs, powers, st.booleans())
def test_polynomial_is_monotone_for_rising_levels(
    e1: float, e2: float, a: float, b: float, target_epoch: float, power: float, concave: bool
) -> None:
    (e1, e2), (initial, target) = sorted((e1, e2)), sorted((a, b))
    assert polynomial_level(e1, initial, target, target_epoch, power, concave) <= polynomial_level(
        e2, initial, target, target_epoch, power, concave
    )


@given(levels, levels, target_epochs, powers, st.booleans(), st.floats(0.0, 1000.0))
def test_polynomial_endpoints(
    initial: float, target: float, target_epoch: float, power: float, concave: bool, extra: float
) -> None:
    def level(epoch: float) -> float:
        return polynomial_level(epoch, initial, target, target_epoch, power, concave)

    assert level(0) == pytest.approx(initial, abs=ULP_TOL)
    assert level(target_epoch) == pytest.approx(target, abs=ULP_TOL)
    assert level(target_epoch + extra) == level(target_epoch)  # clipped: exactly constant after
    assert level(-extra) == level(0)  # clipped: exactly constant before


# --- exponential -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(-3, 0.0), (0, 0.0), (1, 0.5), (2, 0.75), (3, 0.75), (100, 0.75)],
)
def test_exponential_hand_values(epoch: int, expected: float) -> None:
    # densities 1 -> 0.25 over 2 epochs: 1 * 0.25 ** (epoch / 2), floored at 0.25
    assert exponential_level(epoch, 0.0, 0.75, 2) == expected


def test_exponential_half_way_hand_value() -> None:
    # 1 - 0.5 ** (45 / 90) = 1 - sqrt(0.5)
    assert exponential_level(45, 0.0, 0.5, 90) == pytest.approx(0.292893218813452475599, abs=1e-15)


def test_exponential_zero_target_epoch_is_target_everywhere() -> None:
    assert [exponential_level(e, 0.1, 0.7, 0) for e in (-1, 0, 5)] == pytest.approx([0.7] * 3, abs=ULP_TOL)


@st.composite
def rising_pair(draw: st.DrawFn) -> tuple[float, float]:
    initial = draw(st.floats(0.0, 0.999))
    return initial, draw(st.floats(initial, 1.0))


@given(epochs, rising_pair(), target_epochs)
def test_exponential_matches_numpy_reference(
    epoch: float, pair: tuple[float, float], target_epoch: float
) -> None:
    initial, target = pair
    ours = exponential_level(epoch, initial, target, target_epoch)
    assert ours == pytest.approx(ref_exponential(epoch, initial, target, target_epoch), abs=ULP_TOL)


@given(epochs, epochs, rising_pair(), target_epochs, st.floats(0.0, 1000.0))
def test_exponential_monotone_and_endpoints(
    e1: float, e2: float, pair: tuple[float, float], target_epoch: float, extra: float
) -> None:
    initial, target = pair
    e1, e2 = sorted((e1, e2))

    def level(epoch: float) -> float:
        return exponential_level(epoch, initial, target, target_epoch)

    assert level(e1) <= level(e2) <= target
    assert level(0) == pytest.approx(initial, abs=ULP_TOL)
    assert level(target_epoch) == pytest.approx(target, abs=ULP_TOL)
    assert level(target_epoch + extra) == pytest.approx(target, abs=ULP_TOL)


# --- multistep ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("epoch", "expected"), [(-1, 0.1), (0, 0.1), (89, 0.1), (90, 0.5), (1000, 0.5)])
def test_multistep_nncf_defaults(epoch: int, expected: float) -> None:
    assert multistep_level(epoch, DEFAULT_MULTISTEP_STEPS, DEFAULT_MULTISTEP_LEVELS) == expected


def test_multistep_config_from_nncf_examples() -> None:
    steps, values = [5, 10, 20, 30], [0.1, 0.2, 0.3, 0.4, 0.5]
    got = [multistep_level(e, steps, values) for e in (0, 4, 5, 9, 10, 19, 20, 29, 30, 99)]
    assert got == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5]


@given(
    st.lists(st.integers(0, 300), unique=True, max_size=8)
    .map(sorted)
    .flatmap(
        lambda steps: st.tuples(
            st.just(steps), st.lists(levels, min_size=len(steps) + 1, max_size=len(steps) + 1)
        )
    ),
    st.integers(-5, 350),
)
def test_multistep_matches_linear_scan(steps_and_values: tuple[list[int], list[float]], epoch: int) -> None:
    steps, values = steps_and_values
    assert multistep_level(epoch, steps, values) == ref_multistep(epoch, steps, values)


# --- adaptive ----------------------------------------------------------------------------------


def test_adaptive_patience_one_steps_every_good_epoch() -> None:
    level, bad, history = 0.3, 0, []
    for _ in range(14):
        level, bad = adaptive_level(
            level, level, bad, DEFAULT_PATIENCE, DEFAULT_ADAPTIVE_STEP, 0.9, DEFAULT_ADAPTIVE_EPS
        )
        history.append(level)
    # 0.3 + 0.05 * k, capped at 0.9 after 12 increases
    assert history == pytest.approx([min(0.3 + 0.05 * k, 0.9) for k in range(1, 15)], abs=1e-12)
    assert history[-1] == 0.9 and bad == 0


def test_adaptive_patience_three() -> None:
    level, bad = 0.3, 0
    seen = []
    for _ in range(6):
        # the model lags 0.02 behind the schedule, within eps = 0.03: every epoch is "bad"
        level, bad = adaptive_level(level, level - 0.02, bad, 3, 0.05, 0.9, 0.03)
        seen.append((round(level, 12), bad))
    assert seen == [(0.3, 1), (0.3, 2), (0.35, 0), (0.35, 1), (0.35, 2), (0.4, 0)]


def test_adaptive_lagging_model_keeps_level_and_counter() -> None:
    # measured 0.2 < 0.3 - 0.03: the model has not caught up, nothing changes
    assert adaptive_level(0.3, 0.2, 1, 3, 0.05, 0.9, 0.03) == (0.3, 1)


def test_adaptive_clips_to_target() -> None:
    assert adaptive_level(0.88, 0.9, 0, 1, 0.05, 0.9, 0.03) == (0.9, 0)
    assert adaptive_level(0.95, 0.1, 0, 1, 0.05, 0.9, 0.03) == (0.9, 0)  # above target: clipped


@given(levels, levels, st.integers(0, 5), st.integers(0, 5), st.floats(0.0, 0.5), levels, st.floats(0.0, 0.2))
def test_adaptive_matches_reference(
    current: float, measured: float, bad: int, patience: int, step: float, target: float, eps: float
) -> None:
    bad_ref = bad + 1 if measured >= current - eps else bad
    level_ref = current
    if bad_ref >= patience:
        bad_ref, level_ref = 0, current + step
    assert adaptive_level(current, measured, bad, patience, step, target, eps) == (
        min(level_ref, target),
        bad_ref,
    )


# --- fractional epoch --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"), [((0, 0, 10), 0.0), ((3, 2, 4), 3.5), ((-1, 1, 4), -0.75), ((7, 99, 100), 7.99)]
)
def test_fractional_epoch(args: tuple[int, int, int], expected: float) -> None:
    assert fractional_epoch(*args) == expected


@given(st.integers(-1, 100), st.integers(1, 1000), levels, levels, target_epochs, powers, st.booleans())
def test_first_step_of_epoch_equals_epoch_schedule(
    epoch: int,
    steps_per_epoch: int,
    initial: float,
    target: float,
    target_epoch: float,
    power: float,
    concave: bool,
) -> None:
    args = (initial, target, target_epoch, power, concave)
    assert polynomial_level(fractional_epoch(epoch, 0, steps_per_epoch), *args) == polynomial_level(
        epoch, *args
    )


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda: polynomial_level(0, -0.1, 0.5, 90, 0.9, True), "-0.1"),
        (lambda: polynomial_level(0, 0.0, 1.5, 90, 0.9, True), "1.5"),
        (lambda: polynomial_level(0, 0.0, math.nan, 90, 0.9, True), "nan"),
        (lambda: polynomial_level(0, 0.0, 0.5, -1, 0.9, True), "-1"),
        (lambda: polynomial_level(0, 0.0, 0.5, math.inf, 0.9, True), "inf"),
        (lambda: polynomial_level(0, 0.0, 0.5, 90, 0.0, True), "0.0"),
        (lambda: polynomial_level(0, 0.0, 0.5, 90, -2.0, True), "-2.0"),
        (lambda: polynomial_level(math.nan, 0.0, 0.5, 90, 0.9, True), "nan"),
        (lambda: exponential_level(0, 1.0, 1.0, 10), "1.0"),
        (lambda: exponential_level(0, 0.5, 0.2, 10), "0.2"),
        (lambda: exponential_level(0, 0.0, 0.5, -3), "-3"),
        (lambda: multistep_level(0, [10, 20], [0.1, 0.2]), "2 levels"),
        (lambda: multistep_level(0, [20, 10], [0.1, 0.2, 0.3]), "[20, 10]"),
        (lambda: multistep_level(0, [10, 10], [0.1, 0.2, 0.3]), "[10, 10]"),
        (lambda: multistep_level(0, [10], [0.1, 1.2]), "1.2"),
        (lambda: adaptive_level(0.3, 0.3, -1, 1, 0.05, 0.9, 0.03), "-1"),
        (lambda: adaptive_level(0.3, 0.3, 0, 1, -0.05, 0.9, 0.03), "-0.05"),
        (lambda: adaptive_level(0.3, 1.3, 0, 1, 0.05, 0.9, 0.03), "1.3"),
        (lambda: adaptive_level(0.3, 0.3, 0, 1, 0.05, 0.9, math.inf), "inf"),
        (lambda: fractional_epoch(1, 0, 0), "0"),
        (lambda: fractional_epoch(1, 4, 4), "4"),
        (lambda: fractional_epoch(1, -1, 4), "-1"),
    ],
)
def test_bad_arguments_raise_naming_the_value(call: Callable[[], object], bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert bad in str(info.value)
    assert isinstance(info.value, ValueError)


def test_docstring_examples() -> None:
    assert doctest.testmod(schedules).failed == 0
