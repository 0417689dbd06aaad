"""Filter-pruning schedules of NNCF 2.x as pure functions of the epoch.

NNCF 2.x (``nncf/common/pruning/schedulers.py``) sets the pruning level on every
``epoch_step()``; the level of zero-based epoch ``e`` with ``w = num_init_steps`` warm-up epochs
and ``s = pruning_steps`` is:

- ``e < w``: 0 (the model trains unpruned; masks are all ones);
- ``"baseline"``: ``pruning_target`` from epoch ``w`` on; masks are frozen from epoch ``w``;
- ``"exponential"`` (default): the *density* ``1 - level`` decays exponentially from
  ``1 - pruning_init`` at epoch ``w`` to ``1 - pruning_target`` at epoch ``w + s - 1``
  (:func:`exponential_pruning_level`); masks are frozen from epoch ``w + s``;
- ``"exponential_with_bias"``: ``a * exp(-k * (e - w)) + b`` through ``pruning_init`` at ``w``
  and ``pruning_target`` at ``w + s - 1``, with ``k`` chosen so that 3/4 of the target is
  reached after 1/8 of the steps (:func:`exponential_with_bias_coefficients`); frozen from ``w + s``.

The levels are NNCF's values (its unit tests: ``[0, 0, 0, 0.1, 0.6489741, 0.6956869, 0.6996617,
0.7, ...]`` for init 0.1, target 0.7, 3 warm-up and 5 pruning epochs). When ``pruning_flops_target``
is set the level is a share of FLOPs instead of filters; the schedule is the same.
"""

from __future__ import annotations

import math

from nncompress.errors import InvalidArgumentError

PRUNING_SCHEDULES: tuple[str, ...] = ("exponential", "exponential_with_bias", "baseline")
"""Values of ``params.schedule``."""

DEFAULT_PRUNING_SCHEDULE: str = "exponential"
DEFAULT_PRUNING_INIT: float = 0.0
DEFAULT_PRUNING_TARGET: float = 0.5
DEFAULT_PRUNING_STEPS: int = 100
DEFAULT_NUM_INIT_STEPS: int = 0

_BIAS_FACTOR = 0.125  # NNCF's: 3/4 of the target after 1/8 of the pruning epochs


def _check_level(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"{name} must be a pruning level in [0, 1], got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")


def exponential_pruning_level(epoch: int, initial: float, target: float, num_init_steps: int,
                              pruning_steps: int) -> float:
    """Level of NNCF's ``"exponential"`` pruning schedule at zero-based ``epoch``.

    With ``d0 = 1 - initial``, ``dt = 1 - target``, ``T = pruning_steps - 1`` and ``t = epoch -
    num_init_steps``::

        level = 0                                          if t < 0
        level = target                                     if T == 0 or t >= T
        level = min(1 - max(d0 * (dt / d0) ** (t / T), dt), target)   otherwise

    This is NNCF's formula; where ``initial > target`` (a config in NNCF's own corpus has 0.95
    and 0.1) NNCF's levels drop below ``target`` and towards negative values after epoch ``T``,
    where here they stay at ``target``.

    >>> [round(exponential_pruning_level(e, 0.0, 0.75, 1, 3), 4) for e in range(-1, 5)]
    [0.0, 0.0, 0.0, 0.5, 0.75, 0.75]

    :param epoch: the epoch (``-1`` before the first ``epoch_step()``).
    :param initial: ``pruning_init``, in ``[0, 1)``.
    :param target: ``pruning_target`` (or ``pruning_flops_target``), in ``[0, 1]``.
    :param num_init_steps: warm-up epochs, ``>= 0``.
    :param pruning_steps: epochs from ``initial`` to ``target``, ``>= 1``.
    :return: the level.
    :raises InvalidArgumentError: for values outside those ranges.
    """
    _check_level("initial", initial)
    _check_level("target", target)
    _check_count("num_init_steps", num_init_steps, 0)
    _check_count("pruning_steps", pruning_steps, 1)
    if initial >= 1.0:
        raise InvalidArgumentError(f"initial must be below 1 for the exponential schedule, got {initial!r}")
    t = epoch - num_init_steps
    last = pruning_steps - 1
    if t < 0:
        return 0.0
    if last == 0 or t >= last:
        return float(target)
    d0, dt = 1.0 - initial, 1.0 - target
    density = max(d0 * (dt / d0) ** (t / last), dt)
    return float(min(1.0 - density, target))


def exponential_with_bias_coefficients(initial: float, target: float, target_epoch: int) -> tuple[float, float, float]:
    """``(a, b, k)`` of ``level(t) = a * exp(-k * t) + b`` as NNCF's ``ExponentialWithBiasPruningScheduler``.

    They solve ``a + b = initial``, ``a * exp(-k * T) + b = target`` and ``a * exp(-k * T / 8) + b
    = 3/4 * target`` (``T = target_epoch``). With ``y = exp(-k * T)`` the last equation is
    ``y ** (1/8) - c * y + c - 1 = 0``, ``c = (3/4 * target - initial) / (target - initial)``; its
    root in ``(0, 1)`` is found by bisection (NNCF calls ``scipy.optimize.fsolve`` from ``k = 1``).
    The root exists only when ``initial < 5/7 * target``.

    >>> a, b, k = exponential_with_bias_coefficients(0.0, 0.5, 19)
    >>> round(a, 4), round(b, 4), round(k, 3)
    (-0.5, 0.5, 0.584)

    :param initial: level at ``t = 0``.
    :param target: level at ``t = T``.
    :param target_epoch: ``T = pruning_steps - 1``, ``>= 1``.
    :return: ``(a, b, k)``.
    :raises InvalidArgumentError: when ``initial >= 5/7 * target`` (no such curve) or for bad values.
    """
    _check_level("initial", initial)
    _check_level("target", target)
    _check_count("target_epoch", target_epoch, 1)
    if not initial < 5.0 / 7.0 * target:
        raise InvalidArgumentError(
            f"the exponential_with_bias schedule needs pruning_init < 5/7 of the target ({5.0 / 7.0 * target:.4g}), "
            f"got initial {initial!r} and target {target!r}: no curve a*exp(-k*t)+b reaches 3/4 of the target "
            "after 1/8 of the steps from there"
        )
    c = (0.75 * target - initial) / (target - initial)
    lo, hi = 0.0, 1.0  # g(y) = y**(1/8) - c*y + c - 1: < 0 below the root, > 0 above it (and 0 at y = 1)
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid ** _BIAS_FACTOR - c * mid + c - 1 < 0:
            lo = mid
        else:
            hi = mid
    y = (lo + hi) / 2
    k = -math.log(y) / target_epoch
    a = (target - initial) / (y - 1.0)
    return a, initial - a, k


def exponential_with_bias_pruning_level(epoch: int, initial: float, target: float, num_init_steps: int,
                                        pruning_steps: int) -> float:
    """Level of NNCF's ``"exponential_with_bias"`` schedule: 0 before ``num_init_steps``, then
    ``min(a * exp(-k * (epoch - num_init_steps)) + b, target)`` (``target`` when ``pruning_steps == 1``).

    >>> [round(exponential_with_bias_pruning_level(e, 0.1, 0.7, 3, 5), 6) for e in range(3, 8)]
    [0.1, 0.648974, 0.695687, 0.699662, 0.7]

    :param epoch: the epoch (``-1`` before the first ``epoch_step()``).
    :param initial: ``pruning_init``.
    :param target: the target level.
    :param num_init_steps: warm-up epochs, ``>= 0``.
    :param pruning_steps: ``>= 1``.
    :return: the level.
    :raises InvalidArgumentError: see :func:`exponential_with_bias_coefficients`.
    """
    _check_count("num_init_steps", num_init_steps, 0)
    _check_count("pruning_steps", pruning_steps, 1)
    _check_level("target", target)
    t = epoch - num_init_steps
    if t < 0:
        return 0.0
    if pruning_steps == 1:
        return float(target)
    a, b, k = exponential_with_bias_coefficients(initial, target, pruning_steps - 1)
    return float(min(a * math.exp(-k * t) + b, target))


def baseline_pruning_level(epoch: int, target: float, num_init_steps: int) -> float:
    """Level of NNCF's ``"baseline"`` schedule: 0 before ``num_init_steps``, ``target`` from then on.

    >>> [baseline_pruning_level(e, 0.5, 1) for e in (-1, 0, 1, 5)]
    [0.0, 0.0, 0.5, 0.5]
    """
    _check_level("target", target)
    _check_count("num_init_steps", num_init_steps, 0)
    return 0.0 if epoch < num_init_steps else float(target)


def pruning_level(schedule: str, epoch: int, initial: float, target: float, num_init_steps: int,
                  pruning_steps: int) -> float:
    """The level of ``schedule`` (one of :data:`PRUNING_SCHEDULES`) at ``epoch``.

    :raises InvalidArgumentError: for an unknown schedule or bad values.
    """
    if schedule == "baseline":
        return baseline_pruning_level(epoch, target, num_init_steps)
    if schedule == "exponential":
        return exponential_pruning_level(epoch, initial, target, num_init_steps, pruning_steps)
    if schedule == "exponential_with_bias":
        return exponential_with_bias_pruning_level(epoch, initial, target, num_init_steps, pruning_steps)
    raise InvalidArgumentError(f"schedule must be one of {list(PRUNING_SCHEDULES)}, got {schedule!r}")


def pruning_freeze_epoch(schedule: str, num_init_steps: int, pruning_steps: int) -> int:
    """First epoch whose masks stay frozen: ``num_init_steps`` for ``"baseline"``, else
    ``num_init_steps + pruning_steps`` (NNCF sets that epoch's level, then freezes).

    >>> pruning_freeze_epoch("baseline", 2, 10), pruning_freeze_epoch("exponential", 2, 10)
    (2, 12)
    """
    if schedule not in PRUNING_SCHEDULES:
        raise InvalidArgumentError(f"schedule must be one of {list(PRUNING_SCHEDULES)}, got {schedule!r}")
    return num_init_steps if schedule == "baseline" else num_init_steps + pruning_steps


__all__ = [
    "DEFAULT_NUM_INIT_STEPS",
    "DEFAULT_PRUNING_INIT",
    "DEFAULT_PRUNING_SCHEDULE",
    "DEFAULT_PRUNING_STEPS",
    "DEFAULT_PRUNING_TARGET",
    "PRUNING_SCHEDULES",
    "baseline_pruning_level",
    "exponential_pruning_level",
    "exponential_with_bias_coefficients",
    "exponential_with_bias_pruning_level",
    "pruning_freeze_epoch",
    "pruning_level",
]
