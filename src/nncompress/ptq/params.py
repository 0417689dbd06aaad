"""Typed options of ``quantize()``: presets, model types, devices, ignored scope, advanced parameters."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from nncompress.errors import InvalidArgumentError, ScopeMatchError
from nncompress.graph.capture import CapturedGraph, OpNode
from nncompress.graph.scopes import compile_scope_regex, scope_name_matches

ACTIVATION_ESTIMATORS = ("min_max", "mean_min_max", "percentile", "mean_percentile")
DEFAULT_SMOOTH_QUANT_ALPHA = 0.8


_C = TypeVar("_C", bound="_Choice")


class _Choice(str, Enum):
    @classmethod
    def parse(cls: type[_C], value: object, what: str) -> _C:
        """The member named by ``value`` (a member or its value, any case)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value.lower() in (member.value, member.name.lower()):
                    return member
        allowed = [m.value for m in cls]
        raise InvalidArgumentError(
            f"{what} must be one of {allowed} (or the {cls.__name__} enum), got {value!r}"
        )


class QuantizationPreset(_Choice):
    """``performance``: symmetric activations and weights. ``mixed``: activations with a zero point."""

    PERFORMANCE = "performance"
    MIXED = "mixed"


class ModelType(_Choice):
    """``TRANSFORMER`` switches on transformer placement and SmoothQuant."""

    TRANSFORMER = "transformer"


class TargetDevice(_Choice):
    """Accepted for NNCF compatibility; every choice produces the same standard ONNX QDQ model."""

    ANY = "any"
    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"
    CPU_SPR = "cpu_spr"


@dataclass(frozen=True)
class IgnoredScope:
    """Operations to leave in float: their weights and inputs get no quantizer.

    Each rule must match at least one operation unless ``validate=False``.

    :param names: exact op names (``DigitsCNN/Conv2d[conv1]/conv2d_0``, as in the report) or
        module names (``classifier``, ``encoder.layer.0.output.dense``).
    :param patterns: regular expressions, fully matching an op name or a module name.
    :param types: op types (``linear``, ``conv2d``, ``matmul``, ``add``) or module class names
        (``Linear``, ``Conv2d``).
    :param validate: raise :class:`~nncompress.errors.ScopeMatchError` for a rule that matches nothing.
    """

    names: Sequence[str] = field(default_factory=list)
    patterns: Sequence[str] = field(default_factory=list)
    types: Sequence[str] = field(default_factory=list)
    validate: bool = True

    def __post_init__(self) -> None:
        for key in ("names", "patterns", "types"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise InvalidArgumentError(f"IgnoredScope.{key} must be a list of strings, got {value!r}")
        for p in self.patterns:
            try:
                compile_scope_regex(p)
            except re.error as exc:
                raise InvalidArgumentError(
                    f"IgnoredScope.patterns: {p!r} is not a regular expression ({exc})"
                ) from exc

    def reason(self, node: OpNode) -> str | None:
        """Why ``node`` is ignored, or ``None``."""
        if any(scope_name_matches(node.name, n) or (node.module and node.module == n) for n in self.names):
            return "in ignored_scope.names"
        for p in self.patterns:
            rx = compile_scope_regex(p)
            if rx.fullmatch(node.name) or (node.module and rx.fullmatch(node.module)):
                return f"matches ignored_scope pattern {p!r}"
        if node.op in self.types or node.module_type in self.types:
            return f"of ignored type {node.op if node.op in self.types else node.module_type!r}"
        return None

    def check(self, graph: CapturedGraph) -> None:
        """With ``validate``: every rule matches some op.

        :raises ScopeMatchError: naming the rule and close op or module names.
        """
        if not self.validate:
            return
        nodes = list(graph)
        keys = sorted({n.name for n in nodes} | {n.module for n in nodes if n.module})
        for name in self.names:
            if not any(scope_name_matches(k, name) for k in keys):
                self._fail("names", name, difflib.get_close_matches(name, keys, n=3, cutoff=0.4))
        for p in self.patterns:
            rx = compile_scope_regex(p)
            if not any(rx.fullmatch(k) for k in keys):
                self._fail("patterns", p, difflib.get_close_matches(p, keys, n=3, cutoff=0.3))
        kinds = sorted({n.op for n in nodes} | {n.module_type for n in nodes})
        for t in self.types:
            if t not in kinds:
                self._fail("types", t, difflib.get_close_matches(t, kinds, n=3, cutoff=0.5))

    @staticmethod
    def _fail(key: str, rule: str, close: list[str]) -> None:
        hint = f"; close: {close}" if close else ""
        raise ScopeMatchError(
            f"ignored_scope.{key}: {rule!r} matches no operation of the model{hint}. "
            "Pass IgnoredScope(..., validate=False) to allow this."
        )


@dataclass(frozen=True)
class AdvancedQuantizationParameters:
    """Less common knobs of ``quantize()``.

    :param inplace: quantize the given model itself instead of a copy.
    :param activations_range_estimator: ``min_max`` (default), ``mean_min_max`` (mean over
        calibration items of each item's extremes), ``percentile`` or ``mean_percentile``.
    :param min_percentile: for the percentile estimators, in ``[0, 100]``.
    :param max_percentile: for the percentile estimators.
    :param smooth_quant_alpha: SmoothQuant migration strength in ``[0, 1]`` for transformers;
        ``None`` switches SmoothQuant off.
    :param quantize_attention_matmuls: quantize ``matmul``/``bmm`` of two activations in
        transformers (attention scores and context); CNNs always quantize them.
    :param quantize_residual_adds: quantize the inputs of ``add`` of two activations; default:
        yes for CNNs (integer adds), no for transformers (the residual stream stays float).
    :param progress: show a progress bar and print a short report.
    """

    inplace: bool = False
    activations_range_estimator: str = "min_max"
    min_percentile: float = 0.01
    max_percentile: float = 99.99
    smooth_quant_alpha: float | None = DEFAULT_SMOOTH_QUANT_ALPHA
    quantize_attention_matmuls: bool = False
    quantize_residual_adds: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.activations_range_estimator not in ACTIVATION_ESTIMATORS:
            raise InvalidArgumentError(
                f"activations_range_estimator must be one of {list(ACTIVATION_ESTIMATORS)}, "
                f"got {self.activations_range_estimator!r}"
            )
        if not 0.0 <= self.min_percentile <= self.max_percentile <= 100.0:
            raise InvalidArgumentError(
                f"percentiles must satisfy 0 <= min_percentile <= max_percentile <= 100, got "
                f"{self.min_percentile!r}, {self.max_percentile!r}"
            )
        alpha = self.smooth_quant_alpha
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise InvalidArgumentError(f"smooth_quant_alpha must be in [0, 1] or None, got {alpha!r}")
