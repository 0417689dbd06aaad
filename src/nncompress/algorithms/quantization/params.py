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
from dataclasses import dataclass, field, replace
from typing import Any

from nncompress.config import AlgorithmSection
from nncompress.errors import ConfigError, UnsupportedAlgorithmError
from nncompress.graph.scopes import scope_matches

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

    @classmethod
    def from_section(cls, section: AlgorithmSection) -> QuantizationParams:
        """Read a schema-validated section and check what the schema cannot (bits in 2..8)."""
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
        if "precision" in init:
            kind = init["precision"].get("type", "manual")
            raise UnsupportedAlgorithmError(
                f"{section.json_path}.initializer.precision",
                f"{kind!r} mixed-precision initialization is not supported by nncompress; remove "
                "initializer.precision and set per-layer bits with scope_overrides",
                kind,
            )
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
