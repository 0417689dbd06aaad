"""Filter-pruning statistics: FLOPs, parameters and filters before and now, per group and per layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from nncompress.api.statistics import format_table


@dataclass(frozen=True)
class GroupPruning:
    """One pruned group: its producers and how many of its channels are pruned now."""

    index: int
    channels: int
    pruned: int
    layers: tuple[str, ...]

    @property
    def level(self) -> float:
        """Share of the group's channels pruned."""
        return self.pruned / self.channels if self.channels else 0.0


@dataclass
class FilterPruningStatistics:
    """Statistics of ``filter_pruning`` (NNCF 2.x's ``FilterPruningStatistics`` and model statistics).

    :param full_flops: FLOPs of the dense model (2 x multiply-accumulates of convs and linears at
        the captured shapes).
    :param current_flops: FLOPs with the pruned channels removed.
    :param full_params: weight (and bias) parameters of those layers, dense.
    :param current_params: the same, pruned.
    :param full_filters: output channels of the pruned groups.
    :param current_filters: those kept.
    :param current_level: the level the controller set last (a share of FLOPs when
        ``prune_flops``, else of filters).
    :param target_level: the schedule's target level.
    :param prune_flops: whether levels are shares of FLOPs (``pruning_flops_target``).
    :param groups: one row per pruned group.
    :param skipped: groups not pruned, ``(index, reason)``.
    """

    full_flops: int
    current_flops: int
    full_params: int
    current_params: int
    full_filters: int
    current_filters: int
    current_level: float
    target_level: float
    prune_flops: bool
    groups: list[GroupPruning] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def flops_pruning_level(self) -> float:
        """Share of the FLOPs removed."""
        return 1.0 - self.current_flops / self.full_flops if self.full_flops else 0.0

    @property
    def params_pruning_level(self) -> float:
        """Share of the layers' parameters removed."""
        return 1.0 - self.current_params / self.full_params if self.full_params else 0.0

    @property
    def filter_pruning_level(self) -> float:
        """Share of the pruned groups' filters removed."""
        return 1.0 - self.current_filters / self.full_filters if self.full_filters else 0.0

    def to_str(self) -> str:
        """Summary, per-group and skipped-group tables."""
        kind = "FLOPs" if self.prune_flops else "filters"
        summary = [
            ("FLOPs (dense / now)", f"{self.full_flops:,} / {self.current_flops:,}"),
            ("FLOPs removed", f"{self.flops_pruning_level:.4f}"),
            ("parameters (dense / now)", f"{self.full_params:,} / {self.current_params:,}"),
            ("parameters removed", f"{self.params_pruning_level:.4f}"),
            ("filters (dense / now)", f"{self.full_filters:,} / {self.current_filters:,}"),
            (f"pruning level set ({kind})", f"{self.current_level:.4f}"),
            (f"target pruning level ({kind})", f"{self.target_level:.4f}"),
        ]
        rows = [(g.index, ", ".join(g.layers), g.channels, g.pruned, f"{g.level:.3f}") for g in self.groups]
        parts = [format_table(("statistic", "value"), summary, "filter_pruning"),
                 format_table(("group", "layers", "channels", "pruned", "level"), rows)]
        if self.skipped:
            parts.append(format_table(("group", "not pruned because"), self.skipped))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, float]:
        """Flat metrics, including ``group/<index>`` levels."""
        out = {
            "full_flops": float(self.full_flops), "current_flops": float(self.current_flops),
            "flops_pruning_level": self.flops_pruning_level, "params_pruning_level": self.params_pruning_level,
            "filter_pruning_level": self.filter_pruning_level, "current_level": self.current_level,
            "target_level": self.target_level,
        }
        out.update({f"group/{g.index}": g.level for g in self.groups})
        return out

    def __str__(self) -> str:
        return self.to_str()
