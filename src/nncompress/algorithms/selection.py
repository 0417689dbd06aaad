"""Which weighted operations an algorithm compresses, and a report saying why for each.

Every op that reads a parameter is listed in the :class:`CaptureReport`, either compressed or
skipped with the reason (op type not supported, ignored scope, outside target scopes, weight
already handled where another op reads it, only 1-D parameters).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass, field

from nncompress.api.statistics import format_table
from nncompress.config import AlgorithmSection
from nncompress.errors import ScopeMatchError
from nncompress.graph.capture import CapturedGraph, OpNode
from nncompress.graph.scopes import scope_matches


@dataclass(frozen=True)
class ReportRow:
    """One weighted op: what the algorithm did with it and why."""

    op: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    compressed: bool
    reason: str
    algorithm: str = ""


@dataclass
class CaptureReport:
    """Per algorithm, every weighted op and whether it was compressed."""

    algorithm: str
    rows: list[ReportRow] = field(default_factory=list)
    subject: str = "weighted ops"

    @property
    def compressed(self) -> list[ReportRow]:
        """Rows of compressed ops."""
        return [r for r in self.rows if r.compressed]

    @property
    def skipped(self) -> list[ReportRow]:
        """Rows of skipped ops."""
        return [r for r in self.rows if not r.compressed]

    def to_str(self) -> str:
        """The report as a table (with an algorithm column when it merges several algorithms)."""
        several = len({r.algorithm for r in self.rows}) > 1
        rows = [
            ((r.algorithm,) if several else ())
            + (r.op, r.weight, "x".join(map(str, r.shape)), "compressed" if r.compressed else "skipped", r.reason)
            for r in self.rows
        ]
        header = (("algorithm",) if several else ()) + ("op", "weight", "shape", "status", "reason")
        title = f"{self.algorithm}: {len(self.compressed)} of {len(self.rows)} {self.subject} compressed"
        return format_table(header, rows, title)

    @classmethod
    def merge(cls, reports: list[CaptureReport]) -> CaptureReport:
        """One report holding the rows of several algorithms' reports."""
        return cls("+".join(r.algorithm for r in reports), [row for r in reports for row in r.rows])

    def __str__(self) -> str:
        return self.to_str()


def validate_scopes(graph: CapturedGraph, section: AlgorithmSection) -> None:
    """Every ``ignored_scopes`` / ``target_scopes`` entry must match an op of the graph.

    :raises ScopeMatchError: naming the entry, its JSON path and close op names.
    """
    if not section.validate_scopes:
        return
    names = list(graph.nodes)
    for key, patterns in (("ignored_scopes", section.ignored_scopes), ("target_scopes", section.target_scopes)):
        for i, pattern in enumerate(patterns or []):
            if not any(scope_matches(n, pattern) for n in names):
                close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
                hint = f"; close op names: {close}" if close else f"; op names look like {names[:2]}"
                raise ScopeMatchError(
                    f"{section.json_path}.{key}[{i}]: {pattern!r} matches no operation of the model{hint}. "
                    'Use "{re}<regex>" for a pattern, or set "validate_scopes": false to allow this.'
                )


def select_weighted_ops(
    graph: CapturedGraph, section: AlgorithmSection, allowed_ops: Collection[str]
) -> tuple[list[OpNode], CaptureReport]:
    """The ops whose main weight the algorithm compresses, in execution order, and the report.

    :param graph: the captured graph.
    :param section: the algorithm's config section (scopes).
    :param allowed_ops: op types the algorithm handles (``conv2d``, ``linear``...).
    :return: the selected ops and the report of every weighted op.
    """
    validate_scopes(graph, section)
    report = CaptureReport(section.algorithm)
    chosen: list[OpNode] = []
    handled: dict[str, str] = {}
    for node in graph.weighted_nodes():
        weight = node.weight
        if weight is None:
            w = node.weights[0]
            report.rows.append(ReportRow(node.name, node.op, w.qualified_name, w.shape, False,
                                         "only 1-D parameters (bias, norm)", section.algorithm))
            continue
        reason = _skip_reason(node, weight.qualified_name, section, allowed_ops, handled)
        report.rows.append(ReportRow(node.name, node.op, weight.qualified_name, weight.shape, reason is None,
                                     reason or f"{node.op} weight", section.algorithm))
        if reason is None:
            chosen.append(node)
            handled[weight.qualified_name] = node.name
    return chosen, report


def _skip_reason(
    node: OpNode, weight: str, section: AlgorithmSection, allowed_ops: Collection[str], handled: dict[str, str]
) -> str | None:
    if node.op not in allowed_ops:
        return f"op type {node.op!r} not handled (handled: {', '.join(sorted(allowed_ops))})"
    ignored = next((p for p in section.ignored_scopes if scope_matches(node.name, p)), None)
    if ignored is not None:
        return f"matches ignored_scopes entry {ignored!r}"
    targets = section.target_scopes
    if targets is not None and not any(scope_matches(node.name, p) for p in targets):
        return "outside target_scopes"
    if weight in handled:
        return f"weight shared with {handled[weight]}, compressed there"
    return None
