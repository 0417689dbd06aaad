"""Compression statistics: one dataclass per algorithm, collected in one container.

Each algorithm's statistics object provides ``to_str()`` (readable tables) and ``to_dict()``
(flat ``{metric_name: number}`` for loggers such as TensorBoard). :class:`CompressionStatistics`
holds them by algorithm name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class AlgorithmStatistics(Protocol):
    """What every per-algorithm statistics dataclass provides."""

    def to_str(self) -> str:
        """Readable tables."""
        ...

    def to_dict(self) -> dict[str, float]:
        """Flat metrics: name to number."""
        ...


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Render rows as a plain-text table with aligned columns.

    Floats are printed with 4 decimals, everything else with ``str``.

    :param header: column titles.
    :param rows: one sequence of cells per row, as long as ``header``.
    :param title: an optional line above the table.
    :return: the table as text.
    """
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(parts: Sequence[str]) -> str:
        return "| " + " | ".join(p.ljust(w) for p, w in zip(parts, widths)) + " |"

    rule = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    out = [title] if title else []
    out += [rule, line(header), rule, *(line(r) for r in cells), rule]
    return "\n".join(out)


class CompressionStatistics:
    """The statistics of every algorithm of a compressed model, by algorithm name.

    Example::

        stats = ctrl.statistics()
        print(stats.to_str())
        for name, value in stats.to_dict().items():
            writer.add_scalar(name, value, epoch)
    """

    def __init__(self) -> None:
        self._by_algorithm: dict[str, AlgorithmStatistics] = {}

    def register(self, algorithm_name: str, stats: AlgorithmStatistics) -> None:
        """Add the statistics of one algorithm.

        :param algorithm_name: e.g. ``"magnitude_sparsity"``.
        :param stats: that algorithm's statistics dataclass.
        """
        self._by_algorithm[algorithm_name] = stats

    def __getattr__(self, name: str) -> AlgorithmStatistics:
        # ``stats.magnitude_sparsity`` as in NNCF's NNCFStatistics.
        by_algorithm = self.__dict__.get("_by_algorithm", {})
        if name in by_algorithm:
            return by_algorithm[name]
        raise AttributeError(name)

    def __iter__(self) -> Iterator[tuple[str, AlgorithmStatistics]]:
        return iter(self._by_algorithm.items())

    def __len__(self) -> int:
        return len(self._by_algorithm)

    def to_str(self) -> str:
        """All algorithms' statistics as readable text."""
        parts = [f"Statistics of {name}\n{stats.to_str()}" for name, stats in self._by_algorithm.items()]
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, float]:
        """All metrics, flat, with keys ``"<algorithm>/<metric>"``."""
        return {
            f"{name}/{key}": value
            for name, stats in self._by_algorithm.items()
            for key, value in stats.to_dict().items()
        }


NNCFStatistics = CompressionStatistics
"""The name NNCF 2.x used for :class:`CompressionStatistics`."""
