"""Which channel groups ``filter_pruning`` prunes, with a report row for every producer op.

As NNCF 2.x's ``PruningNodeSelector``: a group is pruned only if every producer (and depthwise
convolution) in it may be: the group is prunable (its channels can be cut without changing the
model's function), it does not start at a model input unless ``prune_first_conv``, is not made
by a strided convolution unless ``prune_downsample_convs``, none of its convolutions is in
``ignored_scopes`` and all are in ``target_scopes`` (when given).
"""

from __future__ import annotations

from torch import nn

from nncompress.config import AlgorithmSection
from nncompress.graph.capture import CapturedGraph
from nncompress.graph.channel_groups import ChannelGroup
from nncompress.graph.scopes import scope_matches

from ..selection import CaptureReport, ReportRow
from .masks import misfit_reason
from .params import FilterPruningParams


def _scope_reason(group: ChannelGroup, graph: CapturedGraph, section: AlgorithmSection) -> str:
    convs = group.producers + [s for s in group.channelwise if graph.nodes[s.op].op.startswith("conv")]
    for slot in convs:
        ignored = next((p for p in section.ignored_scopes if scope_matches(slot.op, p)), None)
        if ignored is not None:
            return f"{slot.op} matches ignored_scopes entry {ignored!r}"
        targets = section.target_scopes
        if targets is not None and not any(scope_matches(slot.op, p) for p in targets):
            return f"{slot.op} is outside target_scopes"
    return ""


def skip_reason(group: ChannelGroup, graph: CapturedGraph, model: nn.Module, section: AlgorithmSection,
                params: FilterPruningParams) -> str:
    """Why the algorithm leaves the group alone ("" if it prunes it)."""
    if not group.prunable:
        return group.reason or "not prunable"
    if not group.producers:
        return "no producer op"
    if group.first_conv and not params.prune_first_conv:
        return "a convolution or linear of the group reads a model input (prune_first_conv is false)"
    if group.downsample and not params.prune_downsample_convs:
        return "a convolution of the group has stride > 1 (prune_downsample_convs is false)"
    if group.channels < 2:
        return "a single channel (at least one is always kept)"
    if group.channels <= params.channel_multiple:
        return (f"{group.channels} channels: kept channels are a multiple of channel_multiple "
                f"({params.channel_multiple}), which leaves none to remove")
    return _scope_reason(group, graph, section) or misfit_reason(group, model, graph)


def select_groups(groups: list[ChannelGroup], graph: CapturedGraph, model: nn.Module, section: AlgorithmSection,
                  params: FilterPruningParams) -> tuple[list[ChannelGroup], list[tuple[int, str]], CaptureReport]:
    """The groups to prune, the others with their reason, and the report (a row per producer op).

    :return: ``(pruned groups, [(index, reason)] of the others, report)``.
    """
    chosen: list[ChannelGroup] = []
    skipped: list[tuple[int, str]] = []
    report = CaptureReport(section.algorithm, subject="convolution and linear outputs")
    for group in groups:
        reason = skip_reason(group, graph, model, section, params)
        if reason:
            skipped.append((group.index, reason))
        else:
            chosen.append(group)
        for slot in group.producers:
            node = graph.nodes[slot.op]
            w = node.weight
            weight, shape = (w.qualified_name, w.shape) if w is not None else (slot.module, ())
            text = reason or f"group {group.index} ({group.channels} channels)"
            report.rows.append(ReportRow(slot.op, node.op, weight, shape, not reason, text, section.algorithm))
    return chosen, skipped, report
