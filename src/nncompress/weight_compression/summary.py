"""What ``compress_weights`` did: layers and weights per format, bits per weight, sizes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nncompress.weight_compression.params import SensitivityMetric
    from nncompress.weight_compression.plan import LayerEntry


def storage_bits(bits: int, group_size: int, asymmetric: bool) -> float:
    """Stored bits per weight: the code plus its share of the group's float32 scale (and uint8 zero point)."""
    per_group = 32 + (8 if asymmetric else 0)
    return bits + per_group / group_size


@dataclass
class WeightCompressionSummary:
    """Per-format counts of a ``compress_weights`` call (printed when progress is on).

    :param layers: layers per format (``int4_sym g64``, ``int8_asym``, ``float``).
    :param weights: weight elements per format.
    :param reasons: ``layer name -> why its format`` for every layer.
    :param metric: the sensitivity metric used for ``ratio``, if any.
    :param seconds: wall time of the call.
    """

    layers: Counter[str] = field(default_factory=Counter)
    weights: Counter[str] = field(default_factory=Counter)
    bits: float = 0.0
    reasons: dict[str, str] = field(default_factory=dict)
    metric: str | None = None
    seconds: float = 0.0

    @classmethod
    def from_entries(cls, entries: list[LayerEntry], metric: SensitivityMetric | None,
                     seconds: float) -> WeightCompressionSummary:
        """Count the plan's formats (tied layers once)."""
        out = cls(metric=metric.value if metric is not None else None, seconds=seconds)
        seen: set[int] = set()
        total_bits = 0.0
        for e in entries:
            out.reasons[e.name] = e.reason
            if id(e.module.weight) in seen:
                continue
            seen.add(id(e.module.weight))
            spec = e.spec
            key = "float" if spec is None else spec.mode + (f" g{spec.group_size}" if spec.group_size != -1 else "")
            out.layers[key] += 1
            out.weights[key] += e.numel
            if spec is None:
                total_bits += 32.0 * e.numel
            else:
                g = spec.group_size if spec.group_size != -1 else e.in_features
                total_bits += storage_bits(spec.bits, g, not spec.symmetric) * e.numel
        count = sum(out.weights.values())
        out.bits = total_bits / count if count else 0.0
        return out

    def share(self, key: str) -> float:
        """Fraction of all weights in format ``key``."""
        total = sum(self.weights.values())
        return self.weights[key] / total if total else 0.0

    def __str__(self) -> str:
        lines = [f"compress_weights: {sum(self.layers.values())} layers in {self.seconds:.1f} s, "
                 f"{self.bits:.2f} stored bits per weight"
                 + (f" (ratio by {self.metric})" if self.metric else "")]
        lines.append(f"  {'format':<18}{'layers':>8}{'weights':>14}{'share':>8}")
        for key in sorted(self.weights, key=lambda k: -self.weights[k]):
            lines.append(f"  {key:<18}{self.layers[key]:>8}{self.weights[key]:>14,}{self.share(key):>8.1%}")
        return "\n".join(lines)
