"""Typed view of a ``"quantization"`` config section, with NNCF 2.x defaults.

Defaults: 8 bits; ``preset`` ``performance`` (all symmetric) or ``mixed`` (asymmetric
activations); weights per-channel, signed, narrow range ([-127, 127] at 8 bits, so the grid is
symmetric and BatchNorm folding keeps it exact); activations per-tensor with signedness taken
from the statistics (unsigned after a ReLU) when symmetric, unsigned (uint8 with a zero point)
when asymmetric; inputs quantized, outputs not; range init
``mixed_min_max`` (weights ``min_max``, activations ``mean_min_max``) on 256 samples.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from nncompress.config import AlgorithmSection
from nncompress.errors import ConfigError, UnsupportedAlgorithmError
from nncompress.graph.scopes import REGEX_PREFIX, compile_scope_regex, scope_matches

MIN_BITS, MAX_BITS = 2, 8
DEFAULT_NUM_INIT_SAMPLES = 256
DEFAULT_RANGE_TYPE = "mixed_min_max"
DEFAULT_MIN_PERCENTILE = 0.1
DEFAULT_MAX_PERCENTILE = 99.9


@dataclass(frozen=True)
class QuantizerParams:
    """How one group of quantizers (weights or activations) quantizes.

    :param bits: 2..8.
    :param mode: ``symmetric`` or ``asymmetric``.
    :param signed: force a signed / unsigned range; ``None``: from the statistics.
    :param per_channel: one scale per channel.
    :param narrow_range: drop the most negative level (weights), keeping the grid symmetric.
    """

    bits: int = 8
    mode: str = "symmetric"
    signed: bool | None = None
    per_channel: bool = False
    narrow_range: bool = False

    @property
    def symmetric(self) -> bool:
        """Whether the zero point is fixed at 0."""
        return self.mode == "symmetric"

    def overridden(self, values: dict[str, Any]) -> QuantizerParams:
        """A copy with the quantizer keys of ``values`` (bits, mode, signed, per_channel) applied."""
        keys = {"bits", "mode", "signed", "per_channel"}
        return replace(self, **{k: v for k, v in values.items() if k in keys})


@dataclass(frozen=True)
class RangeInitParams:
    """One ``initializer.range`` setting (optionally limited by scopes or group)."""

    num_init_samples: int = DEFAULT_NUM_INIT_SAMPLES
    type: str = DEFAULT_RANGE_TYPE
    min_percentile: float = DEFAULT_MIN_PERCENTILE
    max_percentile: float = DEFAULT_MAX_PERCENTILE
    target_scopes: list[str] | None = None
    ignored_scopes: list[str] = field(default_factory=list)
    target_quantizer_group: str | None = None

    def applies_to(self, name: str, group: str) -> bool:
        """Whether this setting covers the quantizer at ``name`` of ``group`` (weights/activations)."""
        if self.target_quantizer_group not in (None, group):
            return False
        if any(scope_matches(name, p) for p in self.ignored_scopes):
            return False
        return self.target_scopes is None or any(scope_matches(name, p) for p in self.target_scopes)

    def type_for(self, group: str) -> str:
        """The statistic for a group: ``mixed_min_max`` means min_max for weights, mean_min_max else."""
        if self.type == "mixed_min_max":
            return "min_max" if group == "weights" else "mean_min_max"
        return self.type


DEFAULT_BITS = (2, 4, 8)
DEFAULT_NUM_DATA_POINTS = 100
DEFAULT_ITER_NUMBER = 200
DEFAULT_TOLERANCE = 1e-4
DEFAULT_COMPRESSION_RATIO = 1.5


@dataclass(frozen=True)
class PrecisionParams:
    """``initializer.precision``, typed, with NNCF 2.x's defaults.

    :param type: ``manual`` or ``hawq`` (``autoq`` is refused when parsing).
    :param json_path: where the section is, for messages.
    :param bits: HAWQ's bit widths to choose from.
    :param bitwidth_per_scope: ``(bits, scope)`` pairs (manual).
    :param num_data_points: HAWQ: samples of ``init_data`` the Hessian traces are estimated on.
    :param iter_number: HAWQ: most Hutchinson draws.
    :param tolerance: HAWQ: relative change of the total trace that stops the draws.
    :param compression_ratio: HAWQ: bit complexity of INT8 over the mixed model, at least.
    :param assignment_mode: ``liberal`` or ``strict`` (activation bits, see :func:`~.precision.tie_activation_bits`).
    :param dump: ``dump_init_precision_data``: log HAWQ's traces and candidates.
    """

    type: str
    json_path: str
    bits: tuple[int, ...] = DEFAULT_BITS
    bitwidth_per_scope: tuple[tuple[int, str], ...] = ()
    num_data_points: int = DEFAULT_NUM_DATA_POINTS
    iter_number: int = DEFAULT_ITER_NUMBER
    tolerance: float = DEFAULT_TOLERANCE
    compression_ratio: float = DEFAULT_COMPRESSION_RATIO
    assignment_mode: str = "liberal"
    dump: bool = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any], json_path: str, min_bits: int, max_bits: int) -> PrecisionParams:
        """Read a schema-validated ``initializer.precision`` object and check what the schema cannot.

        :raises UnsupportedAlgorithmError: for ``"type": "autoq"``.
        :raises ConfigError: for bits outside ``min_bits..max_bits``, non-positive counts or ratio,
            ``traces_per_layer_path``, or ``bitwidth_per_scope`` with ``"type": "hawq"``.
        """
        kind = cfg.get("type", "manual")
        if kind == "autoq":
            raise UnsupportedAlgorithmError(
                f"{json_path}.type",
                "'autoq' mixed-precision initialization is not supported by nncompress (it is not planned: "
                "AutoQ trains a reinforcement-learning agent (DDPG) that evaluates hundreds of candidate models "
                "with a user callback). Use \"type\": \"hawq\" with \"bits\" and a \"compression_ratio\" (HAWQ's "
                "ratio is INT8 bit complexity over the mixed model's, not AutoQ's size relative to FP32), or "
                "\"manual\" with \"bitwidth_per_scope\"",
                kind,
            )
        bits = tuple(cfg.get("bits", DEFAULT_BITS))
        for i, b in enumerate(bits):
            _check(f"{json_path}.bits[{i}]", b, min_bits <= b <= max_bits, f"{min_bits}..{max_bits}")
        _check(f"{json_path}.bits", list(bits), bool(bits), "a non-empty list of bit widths")
        pairs = tuple((int(b), str(s)) for b, s in cfg.get("bitwidth_per_scope", []))
        for i, (b, scope) in enumerate(pairs):
            _check(f"{json_path}.bitwidth_per_scope[{i}][0]", b, min_bits <= b <= max_bits, f"{min_bits}..{max_bits}")
            _check_regex(f"{json_path}.bitwidth_per_scope[{i}][1]", scope)
        if "traces_per_layer_path" in cfg:
            raise ConfigError(f"{json_path}.traces_per_layer_path", "loading Hessian traces from a file is not "
                              "supported (nothing is unpickled); remove the key: traces are estimated on init_data",
                              cfg["traces_per_layer_path"])
        if kind == "hawq" and pairs:
            raise ConfigError(f"{json_path}.bitwidth_per_scope", "is for \"type\": \"manual\"; HAWQ chooses the "
                              "bits itself. Remove it or set \"type\": \"manual\"", [list(p) for p in pairs])
        params = cls(
            type=kind, json_path=json_path, bits=tuple(sorted(set(bits))), bitwidth_per_scope=pairs,
            num_data_points=int(cfg.get("num_data_points", DEFAULT_NUM_DATA_POINTS)),
            iter_number=int(cfg.get("iter_number", DEFAULT_ITER_NUMBER)),
            tolerance=float(cfg.get("tolerance", DEFAULT_TOLERANCE)),
            compression_ratio=float(cfg.get("compression_ratio", DEFAULT_COMPRESSION_RATIO)),
            assignment_mode=cfg.get("bitwidth_assignment_mode", "liberal"),
            dump=bool(cfg.get("dump_init_precision_data", False)),
        )
        _check(f"{json_path}.num_data_points", params.num_data_points, params.num_data_points >= 1, "an integer >= 1")
        _check(f"{json_path}.iter_number", params.iter_number, params.iter_number >= 1, "an integer >= 1")
        _check(f"{json_path}.tolerance", params.tolerance, params.tolerance >= 0, "a number >= 0")
        _check(f"{json_path}.compression_ratio", params.compression_ratio, params.compression_ratio > 0, "a number > 0")
        return params


def _check_regex(path: str, scope: str) -> None:
    """:raises ConfigError: for a ``{re}`` scope that is not a regular expression."""
    if not scope.startswith(REGEX_PREFIX):
        return
    try:  # compiled as the matcher compiles it: NNCF 2.x's names in it translated first
        compile_scope_regex(scope[len(REGEX_PREFIX):])
    except re.error as err:
        raise ConfigError(path, f"{scope!r} is not a regular expression ({err}); allowed: '{{re}}' followed by a "
                          "Python regular expression, or a quantizer id", scope) from err


def _check(path: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(path, f"{value!r} is not allowed; allowed: {allowed}", value)


def _scopes(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class QuantizationParams:
    """The whole section, typed."""

    weights: QuantizerParams
    activations: QuantizerParams
    weights_scopes: tuple[list[str] | None, list[str]]
    activations_scopes: tuple[list[str] | None, list[str]]
    quantize_inputs: bool
    quantize_outputs: bool
    preset: str
    weight_overrides: dict[str, dict[str, Any]]
    activation_overrides: dict[str, dict[str, Any]]
    range_inits: list[RangeInitParams]
    activations_quant_start_epoch: int | None
    weights_quant_start_epoch: int | None
    lr_multiplier: float = 1.0
    precision: PrecisionParams | None = None

    @classmethod
    def from_section(cls, section: AlgorithmSection) -> QuantizationParams:
        """Read a schema-validated section and check what the schema cannot (bits in 2..8, the
        ``initializer.precision`` values: see :meth:`PrecisionParams.from_config`)."""
        s = section.section
        preset = s.get("preset", "performance")
        w_cfg, a_cfg = s.get("weights", {}), s.get("activations", {})
        weights = QuantizerParams(mode="symmetric", signed=True, per_channel=True, narrow_range=True).overridden(w_cfg)
        act_mode = "asymmetric" if preset == "mixed" else "symmetric"
        activations = QuantizerParams(mode=act_mode).overridden(a_cfg)
        overrides = s.get("scope_overrides", {})
        for group, cfg in (("weights", w_cfg), ("activations", a_cfg)):
            _check_bits(f"{section.json_path}.{group}.bits", cfg.get("bits"))
            for scope, o in overrides.get(group, {}).items():
                _check_bits(f"{section.json_path}.scope_overrides.{group}[{scope!r}].bits", o.get("bits"))
        if activations.per_channel:
            raise ConfigError(
                f"{section.json_path}.activations.per_channel",
                "per-channel activation quantizers are not supported (integer kernels take per-tensor "
                "activations); allowed: false",
                True,
            )
        init = s.get("initializer", {})
        precision = None
        if "precision" in init:
            precision = PrecisionParams.from_config(init["precision"], f"{section.json_path}.initializer.precision",
                                                    MIN_BITS, MAX_BITS)
        ranges = init.get("range", {})
        range_list = ranges if isinstance(ranges, list) else [ranges]
        range_inits = [
            RangeInitParams(
                num_init_samples=int(r.get("num_init_samples", DEFAULT_NUM_INIT_SAMPLES)),
                type=r.get("type", DEFAULT_RANGE_TYPE),
                min_percentile=float(r.get("params", {}).get("min_percentile", DEFAULT_MIN_PERCENTILE)),
                max_percentile=float(r.get("params", {}).get("max_percentile", DEFAULT_MAX_PERCENTILE)),
                target_scopes=_scopes(r.get("target_scopes")),
                ignored_scopes=_scopes(r.get("ignored_scopes")) or [],
                target_quantizer_group=r.get("target_quantizer_group"),
            )
            for r in range_list
        ]
        staged = s.get("params", {})
        return cls(
            weights=weights,
            activations=activations,
            weights_scopes=(_scopes(w_cfg.get("target_scopes")), _scopes(w_cfg.get("ignored_scopes")) or []),
            activations_scopes=(_scopes(a_cfg.get("target_scopes")), _scopes(a_cfg.get("ignored_scopes")) or []),
            quantize_inputs=bool(s.get("quantize_inputs", True)),
            quantize_outputs=bool(s.get("quantize_outputs", False)),
            preset=preset,
            weight_overrides=dict(overrides.get("weights", {})),
            activation_overrides=dict(overrides.get("activations", {})),
            range_inits=range_inits,
            activations_quant_start_epoch=staged.get("activations_quant_start_epoch"),
            weights_quant_start_epoch=staged.get("weights_quant_start_epoch"),
            lr_multiplier=_lr_multiplier(section),
            precision=precision,
        )

    def for_point(self, name: str, group: str) -> QuantizerParams:
        """The quantizer settings at an op, with ``scope_overrides`` applied (last match wins)."""
        base = self.weights if group == "weights" else self.activations
        overrides = self.weight_overrides if group == "weights" else self.activation_overrides
        for scope, values in overrides.items():
            if scope_matches(name, scope):
                base = base.overridden(values)
        if base.narrow_range and base.bits != 8:
            # NNCF 2.x narrows only 8-bit weights ([-127, 127]); below 8 bits the full range
            # (4 bits: 16 levels, [-8, 7]) is worth more than a symmetric grid
            base = replace(base, narrow_range=False)
        if not base.symmetric and base.signed is None:
            # a zero point covers any range with either signedness (same grid); onnxruntime's
            # integer MatMul wants uint8 activations and converts int8 ones only where the
            # QuantizeLinear feeds a single DequantizeLinear
            base = replace(base, signed=False)
        return base

    @staticmethod
    def with_bits(qp: QuantizerParams, group: str, bits: int) -> QuantizerParams:
        """``qp`` at another bit width (mixed precision): weights use the narrow range at 8 bits only."""
        return replace(qp, bits=bits, narrow_range=group == "weights" and bits == 8)

    def in_group_scope(self, name: str, group: str) -> str | None:
        """``None`` if the group's own scopes allow the op, else the reason it is skipped."""
        targets, ignored = self.weights_scopes if group == "weights" else self.activations_scopes
        hit = next((p for p in ignored if scope_matches(name, p)), None)
        if hit is not None:
            return f"matches {group}.ignored_scopes entry {hit!r}"
        if targets is not None and not any(scope_matches(name, p) for p in targets):
            return f"outside {group}.target_scopes"
        return None

    def range_init_for(self, name: str, group: str) -> RangeInitParams | None:
        """The first ``initializer.range`` setting that covers the quantizer."""
        return next((r for r in self.range_inits if r.applies_to(name, group)), None)


def _lr_multiplier(section: AlgorithmSection) -> float:
    """``compression_lr_multiplier`` of the section (the config's top-level one is copied into
    sections without their own by ``create_compressed_model``): a finite number ``>= 0``."""
    value = section.section.get("compression_lr_multiplier", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < math.inf:
        raise ConfigError(f"{section.json_path}.compression_lr_multiplier",
                          f"{value!r} is not allowed; allowed: a finite number >= 0 (0 freezes the steps)", value)
    return float(value)


def _check_bits(path: str, bits: Any) -> None:
    if bits is not None and not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ConfigError(path, f"{bits} bits is not supported; allowed: {MIN_BITS}..{MAX_BITS}", bits)
