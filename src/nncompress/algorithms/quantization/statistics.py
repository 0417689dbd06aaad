"""Quantization statistics: quantizer counts and shares, placed vs potential, bit widths."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from nncompress.api.statistics import format_table

from .quantizers import FakeQuantizer


@dataclass(frozen=True)
class GroupCounts:
    """Counts of one group of quantizers."""

    total: int
    symmetric: int
    asymmetric: int
    signed: int
    per_channel: int
    enabled: int

    @classmethod
    def of(cls, quantizers: Sequence[FakeQuantizer]) -> GroupCounts:
        """Count the quantizers."""
        return cls(
            total=len(quantizers),
            symmetric=sum(q.symmetric for q in quantizers),
            asymmetric=sum(not q.symmetric for q in quantizers),
            signed=sum(bool(q.signed) for q in quantizers),
            per_channel=sum(q.axis is not None for q in quantizers),
            enabled=sum(q.enabled for q in quantizers),
        )


@dataclass
class QuantizationStatistics:
    """Quantizers of the model.

    :param weights: counts of weight quantizers.
    :param activations: counts of activation quantizers.
    :param placed: potential places that got a quantizer (shared ones counted per consumer).
    :param potential: places a quantizer could go (weights of supported ops, their inputs).
    :param bits: bit width -> (weight quantizers, activation quantizers).
    :param per_quantizer: with mixed precision, ``(NNCF quantizer id, group, bits)`` of every quantizer.
    :param compression_ratio: with mixed precision, the bit complexity of INT8 over this model's
        (NNCF 2.x's HAWQ ratio: MACs times bits of the quantized weighted ops).
    """

    weights: GroupCounts
    activations: GroupCounts
    placed: int
    potential: int
    bits: dict[int, tuple[int, int]] = field(default_factory=dict)
    per_quantizer: list[tuple[str, str, int]] = field(default_factory=list)
    compression_ratio: float | None = None

    @classmethod
    def of(cls, quantizers: Sequence[FakeQuantizer], placed: int, potential: int,
           ids: Sequence[str] | None = None, ratio: float | None = None) -> QuantizationStatistics:
        """Statistics of a list of quantizers (``ids``, ``ratio``: with mixed precision)."""
        w = [q for q in quantizers if q.group == "weights"]
        a = [q for q in quantizers if q.group == "activations"]
        wb, ab = Counter(q.bits for q in w), Counter(q.bits for q in a)
        bits = {b: (wb[b], ab[b]) for b in sorted(set(wb) | set(ab))}
        per = [(i, q.group, q.bits) for i, q in zip(ids, quantizers)] if ids is not None else []
        return cls(GroupCounts.of(w), GroupCounts.of(a), placed, potential, bits, per, ratio)

    def _share(self, n: int, total: int) -> float:
        return n / total if total else 0.0

    def to_str(self) -> str:
        """Tables: shares per group, placement, bit widths."""
        rows = []
        for name, g in (("weights", self.weights), ("activations", self.activations)):
            rows.append((name, g.total, self._share(g.symmetric, g.total), self._share(g.asymmetric, g.total),
                         self._share(g.signed, g.total), self._share(g.per_channel, g.total), g.enabled))
        shares = format_table(
            ("quantizers", "count", "symmetric", "asymmetric", "signed", "per-channel", "enabled"), rows
        )
        placement = format_table(
            ("placed / potential places", "share"),
            [(f"{self.placed} / {self.potential}", self._share(self.placed, self.potential))],
        )
        bits = format_table(("bits", "weight quantizers", "activation quantizers"),
                            [(b, w, a) for b, (w, a) in self.bits.items()])
        tables = [shares, placement, bits]
        if self.per_quantizer:
            title = f"mixed precision: compression ratio {self.compression_ratio:.3f} (INT8 bit complexity / this model's)"
            tables.append(format_table(("quantizer", "group", "bits"), self.per_quantizer, title))
        return "\n".join(tables)

    def to_dict(self) -> dict[str, float]:
        """Flat metrics."""
        out: dict[str, float] = {"placed": self.placed, "potential": self.potential,
                                 "placed_share": self._share(self.placed, self.potential)}
        for name, g in (("weights", self.weights), ("activations", self.activations)):
            out[f"{name}/count"] = g.total
            out[f"{name}/enabled"] = g.enabled
            for key in ("symmetric", "asymmetric", "signed", "per_channel"):
                out[f"{name}/{key}_share"] = self._share(getattr(g, key), g.total)
        for b, (w, a) in self.bits.items():
            out[f"bits/{b}/weights"] = w
            out[f"bits/{b}/activations"] = a
        if self.compression_ratio is not None:
            out["mixed_precision/compression_ratio"] = self.compression_ratio
        for qid, _, b in self.per_quantizer:
            out[f"mixed_precision/{qid}"] = b
        return out

    def __str__(self) -> str:
        return self.to_str()
