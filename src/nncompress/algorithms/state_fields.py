"""Typed reads of a loaded ``compression_state``: every bad field is a :class:`CompressionStateError`.

A compression state is plain JSON data that users store, copy between versions and sometimes
edit by hand. Every value read back from it goes through one of these functions, which check the
type and range and name the field (its path in the state), the bad value and what is allowed.
Nothing here changes a model: controllers and schedulers read and check *all* their fields
before assigning any, so a refused state leaves them as they were.

>>> state_int({"current_epoch": 3}, "current_epoch", "ctrl_state.x.scheduler_state", minimum=-1)
3
>>> state_int({"current_epoch": 1.5}, "current_epoch", "scheduler_state", minimum=-1)
Traceback (most recent call last):
...
nncompress.errors.CompressionStateError: scheduler_state.current_epoch: expected an integer >= -1, got 1.5 (float)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nncompress.api.compression import CompressionScheduler
from nncompress.errors import CompressionStateError

STATE_FORMAT_VERSION: int = 1
"""Version of the ``compression_state`` layout written by ``get_compression_state()`` (key
``"format_version"``). Loading refuses any other version; a state without the key (written before
versioning) is read as version 1. Fields added to version 1 since are optional, with the value
that gives the older code's behaviour: the polynomial schedule's ``skipping_epoch`` is ``false``
(the older code never skipped an epoch)."""


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _fail(where: str, key: str, expected: str, value: Any) -> CompressionStateError:
    path = f"{where}.{key}" if where else key
    return CompressionStateError(f"{path}: expected {expected}, got {_describe(value)}")


def state_mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` itself, checked to be a mapping (a JSON object).

    :param value: the value read from the state.
    :param where: its path in the state, for the message.
    :return: ``value``.
    :raises CompressionStateError: if it is not a mapping.
    """
    if not isinstance(value, Mapping):
        raise CompressionStateError(f"{where}: expected a JSON object (dict), got {_describe(value)}")
    return value


def _field(state: Any, key: str, where: str) -> Any:
    state = state_mapping(state, where)
    if key not in state:
        raise CompressionStateError(
            f"{where}: missing key {key!r} (it has {sorted(map(str, state))}); the state was not written by "
            "this version's get_compression_state() or was edited"
        )
    return state[key]


def state_field(state: Any, key: str, where: str) -> Any:
    """``state[key]`` of any type.

    :raises CompressionStateError: if ``state`` is not a mapping or lacks ``key``.
    """
    return _field(state, key, where)


def state_int(state: Any, key: str, where: str, *, minimum: int | None = None, optional: bool = False) -> Any:
    """``state[key]`` as an integer (a JSON integer: not a float, not a bool).

    :param state: the mapping to read from.
    :param key: the key.
    :param where: the mapping's path in the state, for the message.
    :param minimum: the smallest allowed value.
    :param optional: allow ``None`` (returned as is).
    :return: the integer (or ``None`` when ``optional``).
    :raises CompressionStateError: for a missing key, another type or a value below ``minimum``.
    """
    value = _field(state, key, where)
    if optional and value is None:
        return None
    expected = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise _fail(where, key, expected, value)
    return int(value)


def state_float(
    state: Any, key: str, where: str, *, low: float | None = None, high: float | None = None, optional: bool = False
) -> Any:
    """``state[key]`` as a finite float within ``[low, high]`` (integers are accepted).

    :param state: the mapping to read from.
    :param key: the key.
    :param where: the mapping's path in the state, for the message.
    :param low: the smallest allowed value.
    :param high: the largest allowed value.
    :param optional: allow ``None`` (returned as is).
    :return: the value as a float (or ``None`` when ``optional``).
    :raises CompressionStateError: for a missing key, a non-number, NaN, infinity or a value out of range.
    """
    value = _field(state, key, where)
    if optional and value is None:
        return None
    bounds = f" in [{low}, {high}]" if low is not None and high is not None else ""
    expected = f"a finite number{bounds}" + (" or null" if optional else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, key, expected, value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(where, key, expected, value)
    return float(value)


def state_level(state: Any, key: str, where: str) -> float:
    """``state[key]`` as a sparsity level: a finite number in ``[0, 1]``."""
    return float(state_float(state, key, where, low=0.0, high=1.0))


def state_bool(state: Any, key: str, where: str, *, default: bool | None = None) -> bool:
    """``state[key]`` as a JSON boolean.

    :param state: the mapping to read from.
    :param key: the key.
    :param where: the mapping's path in the state, for the message.
    :param default: the value of a missing key (a field added after states were first written);
        without it a missing key is refused.
    :return: the boolean.
    :raises CompressionStateError: for a missing key (without ``default``) or another type
        (``0``/``1`` included).
    """
    if default is not None and key not in state_mapping(state, where):
        return default
    value = _field(state, key, where)
    if not isinstance(value, bool):
        raise _fail(where, key, "true or false", value)
    return value


def state_list(state: Any, key: str, where: str, *, length: int | None = None) -> list[Any]:
    """``state[key]`` as a list (a JSON array), optionally of a given length.

    :raises CompressionStateError: for a missing key, another type or another length.
    """
    value = _field(state, key, where)
    if not isinstance(value, list):
        raise _fail(where, key, "a list", value)
    if length is not None and len(value) != length:
        raise _fail(where, key, f"a list of {length} entries", value)
    return value


def state_counters(state: Any, where: str) -> tuple[int, int]:
    """``current_step`` and ``current_epoch`` of a scheduler state: integers ``>= -1`` (-1 before the first call).

    :raises CompressionStateError: for a missing key or a bad value.
    """
    return (state_int(state, "current_step", where, minimum=-1),
            state_int(state, "current_epoch", where, minimum=-1))


def check_loadable(component: Any, state: Mapping[str, Any]) -> None:
    """Check ``state`` for ``component.load_state`` without loading it, so that a state can be
    checked whole before any part of it is assigned.

    A component with a ``check_state(state)`` method (the sparsity schedulers, the composite
    scheduler and loss) is checked by it. A scheduler without one keeps the two counters only (the
    quantization scheduler, the stub scheduler) and is checked for them; a loss without one (the
    zero loss) keeps nothing and takes any mapping.

    :param component: a scheduler or loss.
    :param state: its saved state.
    :raises CompressionStateError: naming the first missing or bad field.
    """
    check = getattr(component, "check_state", None)
    if callable(check):
        check(state)
    elif isinstance(component, CompressionScheduler):
        state_counters(state, "scheduler_state")


def check_format_version(state: Mapping[str, Any]) -> None:
    """Refuse a ``compression_state`` of another layout version.

    :param state: the whole compression state.
    :raises CompressionStateError: if ``format_version`` is present and is not :data:`STATE_FORMAT_VERSION`.
    """
    version = state.get("format_version", STATE_FORMAT_VERSION)
    if isinstance(version, bool) or version != STATE_FORMAT_VERSION or not isinstance(version, int):
        raise CompressionStateError(
            f"compression_state.format_version is {_describe(version)}, but this nncompress reads format "
            f"version {STATE_FORMAT_VERSION} only; save the checkpoint again with the nncompress version that "
            "reads it, or resume with a matching nncompress version"
        )


__all__ = [
    "STATE_FORMAT_VERSION",
    "check_format_version",
    "check_loadable",
    "state_bool",
    "state_counters",
    "state_field",
    "state_float",
    "state_int",
    "state_level",
    "state_list",
    "state_mapping",
]
