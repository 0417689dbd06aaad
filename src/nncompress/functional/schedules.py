"""Sparsity-level schedules as pure functions of the epoch, matching legacy NNCF 2.x.

Every function here maps plain Python floats to a float (no torch, no state): a scheduler class
keeps the counters (epoch, step in epoch, bad epochs) and calls these. For the same config they
return the same numbers as NNCF 2.x (``nncf/common/schedulers.py``: ``PolynomialDecaySchedule``,
``ExponentialDecaySchedule``, ``MultiStepSchedule``; ``nncf/common/sparsity/schedulers.py``:
``PolynomialSparsityScheduler``, ``ExponentialSparsityScheduler``, ``MultiStepSparsityScheduler``,
``AdaptiveSparsityScheduler``), computed with the same float64 operations in the same order.
The one source of difference: NNCF takes powers with ``np.power``, whose SIMD code (AVX-512
builds of numpy) can differ from Python's ``**`` (the C library's ``pow``, used here) in the last
bit, so a level can differ from NNCF's by about 1e-16; everything else is bit-identical.

NNCF 2.x defaults for the schedule parameters (``nncf/config/schemata/defaults.py`` and the
``params.get(...)`` fallbacks of ``nncf/common/sparsity/schedulers.py``), exposed as constants:

==================================== ========================= =========================================
NNCF config key                      NNCF 2.x default          constant here
==================================== ========================= =========================================
``sparsity_init``                    ``0.0``                   :data:`DEFAULT_SPARSITY_INIT`
``params.sparsity_target``           ``0.5``                   :data:`DEFAULT_SPARSITY_TARGET`
``params.sparsity_target_epoch``     ``90``                    :data:`DEFAULT_SPARSITY_TARGET_EPOCH`
``params.sparsity_freeze_epoch``     ``100``                   :data:`DEFAULT_SPARSITY_FREEZE_EPOCH`
``params.schedule``                  ``"polynomial"``          :data:`DEFAULT_SCHEDULE`
``params.schedule`` (rb_sparsity)    ``"exponential"``         :data:`DEFAULT_RB_SCHEDULE`
``params.power``                     ``0.9``                   :data:`DEFAULT_POWER`
``params.concave``                   ``True``                  :data:`DEFAULT_CONCAVE`
``params.update_per_optimizer_step`` ``False``                 :data:`DEFAULT_UPDATE_PER_OPTIMIZER_STEP`
``params.steps_per_epoch``           none: measured in epoch 0 (none)
``params.multistep_steps``           ``[90]``                  :data:`DEFAULT_MULTISTEP_STEPS`
``params.multistep_sparsity_levels`` ``[0.1, 0.5]``            :data:`DEFAULT_MULTISTEP_LEVELS`
``params.patience``                  ``1``                     :data:`DEFAULT_PATIENCE`
``params.step`` (adaptive)           ``0.05``                  :data:`DEFAULT_ADAPTIVE_STEP`
``params.eps`` (adaptive)            ``0.03``                  :data:`DEFAULT_ADAPTIVE_EPS`
==================================== ========================= =========================================

``step`` and ``eps`` are not in NNCF's JSON schema; only the adaptive scheduler's code reads them.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise

from nncompress.errors import InvalidArgumentError

DEFAULT_SPARSITY_INIT: float = 0.0
DEFAULT_SPARSITY_TARGET: float = 0.5
DEFAULT_SPARSITY_TARGET_EPOCH: int = 90
DEFAULT_SPARSITY_FREEZE_EPOCH: int = 100
DEFAULT_SCHEDULE: str = "polynomial"
DEFAULT_RB_SCHEDULE: str = "exponential"
DEFAULT_POWER: float = 0.9
DEFAULT_CONCAVE: bool = True
DEFAULT_UPDATE_PER_OPTIMIZER_STEP: bool = False
DEFAULT_MULTISTEP_STEPS: tuple[int, ...] = (90,)
DEFAULT_MULTISTEP_LEVELS: tuple[float, ...] = (0.1, 0.5)
DEFAULT_PATIENCE: int = 1
DEFAULT_ADAPTIVE_STEP: float = 0.05
DEFAULT_ADAPTIVE_EPS: float = 0.03


def _check_level(name: str, value: float, *, upper_open: bool = False) -> None:
    """Raise unless ``value`` is a level in ``[0, 1]`` (``[0, 1)`` when ``upper_open``)."""
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0  # False for NaN
    if not ok:
        allowed = "[0, 1)" if upper_open else "[0, 1]"
        raise InvalidArgumentError(f"{name} must be a sparsity level in {allowed}, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite number ``>= 0``."""
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_epoch(epoch: float) -> None:
    """Raise if ``epoch`` is NaN (infinities are allowed: they clip like any far epoch)."""
    if math.isnan(epoch):
        raise InvalidArgumentError(f"epoch must be a number, got {epoch!r}")


def polynomial_level(
    epoch: float, initial: float, target: float, target_epoch: float, power: float, concave: bool
) -> float:
    """Sparsity level of NNCF's polynomial schedule (``PolynomialDecaySchedule``).

    With ``p = clip(epoch / target_epoch, 0, 1)``::

        concave:  level = target - (target - initial) * (1 - p) ** power
        convex:   level = initial + (target - initial) * p ** power

    and ``level = target`` for every epoch when ``target_epoch == 0``. The level is ``initial``
    at (and before) epoch 0 and ``target`` from ``target_epoch`` on, up to one float64 rounding
    (NNCF's operation order is kept on purpose, so the rounding is NNCF's). For per-optimizer-step updates pass
    :func:`fractional_epoch` as ``epoch``.

    >>> polynomial_level(2, initial=0.0, target=0.8, target_epoch=4, power=2.0, concave=False)
    0.2
    >>> polynomial_level(100, 0.0, 0.5, 90, DEFAULT_POWER, DEFAULT_CONCAVE)
    0.5

    :param epoch: zero-based (possibly fractional or negative) epoch.
    :param initial: level at epoch 0, in ``[0, 1]`` (NNCF's ``sparsity_init``).
    :param target: level from ``target_epoch`` on, in ``[0, 1]`` (``sparsity_target``).
    :param target_epoch: epoch at which ``target`` is reached, finite and ``>= 0``.
    :param power: exponent, finite and ``> 0`` (NNCF default :data:`DEFAULT_POWER`).
    :param concave: approach ``target`` concavely (fast first) when true, convexly otherwise.
    :return: the sparsity level for ``epoch``.
    :raises InvalidArgumentError: for a level outside ``[0, 1]``, a negative or non-finite
        ``target_epoch``, a ``power`` that is not a finite positive number, or a NaN ``epoch``.
    """
    _check_epoch(epoch)
    _check_level("initial", initial)
    _check_level("target", target)
    _check_non_negative("target_epoch", target_epoch)
    if not (math.isfinite(power) and power > 0):
        raise InvalidArgumentError(f"power must be a finite number > 0, got {power!r}")
    if target_epoch == 0:
        return float(target)
    progress = min(1.0, max(0.0, epoch / target_epoch))
    if concave:
        return float(target - (target - initial) * (1 - progress) ** power)
    return float(initial + (target - initial) * progress**power)


def exponential_level(epoch: float, initial: float, target: float, target_epoch: float) -> float:
    """Sparsity level of NNCF's exponential schedule (``ExponentialSparsityScheduler``).

    NNCF decays the *density* ``d = 1 - level`` exponentially from ``d0 = 1 - initial`` to
    ``dt = 1 - target``, clips it at ``dt`` after ``target_epoch`` and clips the level at
    ``target``::

        d(epoch) = max(d0 * (dt / d0) ** (epoch / target_epoch), dt)
        level    = min(1 - d(epoch), target)

    and ``level = min(1 - dt, target)`` for every epoch when ``target_epoch == 0``.

    Differences from NNCF, both outside the range NNCF handles sensibly:

    - a negative ``epoch`` (NNCF's scheduler starts at epoch -1) is treated as 0, so the level
      never drops below ``initial``; NNCF's formula would extrapolate below it, although its
      scheduler reports ``initial`` before the first epoch;
    - ``initial > target`` is rejected: NNCF would return ``target`` until ``target_epoch``,
      then levels that keep falling and turn negative (which its controller then refuses).

    >>> exponential_level(1, initial=0.0, target=0.75, target_epoch=2)
    0.5
    >>> exponential_level(5, initial=0.0, target=0.75, target_epoch=2)
    0.75

    :param epoch: zero-based (possibly fractional) epoch; negative values count as 0.
    :param initial: level at epoch 0, in ``[0, 1)`` (its density ``1 - initial`` is divided by).
    :param target: level from ``target_epoch`` on, in ``[initial, 1]``.
    :param target_epoch: epoch at which ``target`` is reached, finite and ``>= 0``.
    :return: the sparsity level for ``epoch``.
    :raises InvalidArgumentError: for ``initial`` outside ``[0, 1)``, ``target`` outside
        ``[initial, 1]``, a negative or non-finite ``target_epoch``, or a NaN ``epoch``.
    """
    _check_epoch(epoch)
    _check_level("initial", initial, upper_open=True)
    _check_level("target", target)
    if target < initial:
        raise InvalidArgumentError(
            f"target must be >= initial ({initial!r}) for the exponential schedule, got {target!r}"
        )
    _check_non_negative("target_epoch", target_epoch)
    initial_density = 1.0 - initial
    target_density = 1.0 - target
    if target_epoch == 0:
        density = target_density
    else:
        decay_rate = target_density / initial_density
        density = max(initial_density * decay_rate ** (max(epoch, 0) / target_epoch), target_density)
    return float(min(1.0 - density, target))


def multistep_level(epoch: float, steps: Sequence[float], levels: Sequence[float]) -> float:
    """Sparsity level of NNCF's piecewise-constant schedule (``MultiStepSchedule``).

    ``levels[i]`` where ``i`` is the number of ``steps`` that are ``<= epoch``
    (``bisect_right``): ``levels[0]`` before ``steps[0]``, ``levels[1]`` from ``steps[0]`` up to
    ``steps[1]``, ..., ``levels[-1]`` from ``steps[-1]`` on. NNCF's scheduler also takes
    ``levels[-1]`` as the target level.

    NNCF sorts ``multistep_steps`` before use (without reordering the levels); here ``steps``
    must already be strictly increasing, so a config with unsorted or repeated steps is caught.

    >>> multistep_level(90, DEFAULT_MULTISTEP_STEPS, DEFAULT_MULTISTEP_LEVELS)
    0.5

    :param epoch: zero-based epoch.
    :param steps: epochs at which the next level starts, strictly increasing.
    :param levels: ``len(steps) + 1`` levels, each in ``[0, 1]``.
    :return: the sparsity level for ``epoch``.
    :raises InvalidArgumentError: if the lengths do not fit, ``steps`` is not strictly
        increasing, a level is outside ``[0, 1]`` or ``epoch`` is NaN.
    """
    _check_epoch(epoch)
    if len(levels) != len(steps) + 1:
        raise InvalidArgumentError(
            f"levels must have one more entry than steps ({len(steps)} steps), got {len(levels)} levels"
        )
    for previous, current in pairwise(steps):
        if not previous < current:
            raise InvalidArgumentError(f"steps must be strictly increasing, got {list(steps)!r}")
    for i, level in enumerate(levels):
        _check_level(f"levels[{i}]", level)
    return float(levels[bisect_right(steps, epoch)])


def adaptive_level(
    current_level: float,
    measured_level: float,
    num_bad_epochs: int,
    patience: int,
    step: float,
    target: float,
    eps: float,
) -> tuple[float, int]:
    """One epoch of NNCF's adaptive schedule (``AdaptiveSparsityScheduler``, used by RB sparsity).

    An epoch is "bad" when the model's measured sparsity has (nearly) caught up with the
    scheduled level; after ``patience`` bad epochs the level rises by ``step``::

        bad   = num_bad_epochs + 1  if measured_level >= current_level - eps  else num_bad_epochs
        level = current_level + step, bad = 0   if bad >= patience
        level = min(level, target)

    Recent NNCF 2.x runs this once per ``epoch_step()``. (Older 2.x releases evaluated it twice per
    epoch and applied the second result without storing it; that bug is not reproduced.)

    >>> adaptive_level(0.3, 0.29, 0, DEFAULT_PATIENCE, DEFAULT_ADAPTIVE_STEP, 0.9, DEFAULT_ADAPTIVE_EPS)
    (0.35, 0)

    :param current_level: the level scheduled for the last epoch, in ``[0, 1]``
        (``sparsity_init`` before the first call).
    :param measured_level: the sparsity the model actually has now, in ``[0, 1]``.
    :param num_bad_epochs: bad epochs counted so far, ``>= 0``.
    :param patience: bad epochs needed before the level rises, ``>= 0`` (NNCF default 1).
    :param step: how much the level rises, finite and ``>= 0`` (NNCF key ``step``, default 0.05).
    :param target: the highest level, in ``[0, 1]``.
    :param eps: tolerance on ``measured_level``, finite and ``>= 0`` (NNCF default 0.03).
    :return: ``(new level, new bad-epoch counter)``.
    :raises InvalidArgumentError: for a level outside ``[0, 1]`` or a negative or non-finite
        counter, patience, step or eps.
    """
    _check_level("current_level", current_level)
    _check_level("measured_level", measured_level)
    _check_level("target", target)
    _check_non_negative("num_bad_epochs", num_bad_epochs)
    _check_non_negative("patience", patience)
    _check_non_negative("step", step)
    _check_non_negative("eps", eps)
    if measured_level >= current_level - eps:
        num_bad_epochs += 1
    level = current_level
    if num_bad_epochs >= patience:
        num_bad_epochs = 0
        level = current_level + step
    return float(min(level, target)), num_bad_epochs


def fractional_epoch(epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """Epoch position of an optimizer step, for ``update_per_optimizer_step`` schedules.

    As NNCF's ``PolynomialDecaySchedule``: ``epoch + step_in_epoch / steps_per_epoch``, where
    ``step_in_epoch`` is zero-based. NNCF's scheduler counts the ``step()`` calls made since the
    last ``epoch_step()`` and passes ``max(count - 1, 0)``, so the first step of an epoch is at
    ``epoch + 0``. NNCF only uses it for the polynomial schedule.

    >>> fractional_epoch(3, 2, 4)
    3.5

    :param epoch: zero-based epoch (NNCF's scheduler starts at -1).
    :param step_in_epoch: zero-based optimizer step inside the epoch,
        in ``[0, steps_per_epoch)``.
    :param steps_per_epoch: optimizer steps per epoch, ``> 0``.
    :return: the fractional epoch.
    :raises InvalidArgumentError: if ``steps_per_epoch <= 0`` or ``step_in_epoch`` is outside
        ``[0, steps_per_epoch)``.
    """
    if not steps_per_epoch > 0:
        raise InvalidArgumentError(f"steps_per_epoch must be > 0, got {steps_per_epoch!r}")
    if not 0 <= step_in_epoch < steps_per_epoch:
        raise InvalidArgumentError(
            f"step_in_epoch must be in [0, steps_per_epoch={steps_per_epoch}), got {step_in_epoch!r}"
        )
    return float(epoch + step_in_epoch / steps_per_epoch)


__all__ = [
    "DEFAULT_ADAPTIVE_EPS",
    "DEFAULT_ADAPTIVE_STEP",
    "DEFAULT_CONCAVE",
    "DEFAULT_MULTISTEP_LEVELS",
    "DEFAULT_MULTISTEP_STEPS",
    "DEFAULT_PATIENCE",
    "DEFAULT_POWER",
    "DEFAULT_RB_SCHEDULE",
    "DEFAULT_SCHEDULE",
    "DEFAULT_SPARSITY_FREEZE_EPOCH",
    "DEFAULT_SPARSITY_INIT",
    "DEFAULT_SPARSITY_TARGET",
    "DEFAULT_SPARSITY_TARGET_EPOCH",
    "DEFAULT_UPDATE_PER_OPTIMIZER_STEP",
    "adaptive_level",
    "exponential_level",
    "fractional_epoch",
    "multistep_level",
    "polynomial_level",
]
