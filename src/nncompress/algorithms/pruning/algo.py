"""Filter pruning (NNCF 2.x ``"algorithm": "filter_pruning"``): remove whole output channels.

Config::

    {"algorithm": "filter_pruning", "pruning_init": 0.1,
     "params": {"schedule": "exponential", "pruning_target": 0.4, "pruning_steps": 15,
                "filter_importance": "L2", "prune_first_conv": false, "prune_downsample_convs": false}}

The builder finds the channel groups of the captured graph
(:func:`~nncompress.graph.channel_groups.channel_groups`), puts a mask on every parameter of the
groups it prunes (:mod:`.masks`), and the controller sets the masks for a level: per group, the
least important channels by the summed importance of the group's producers (NNCF's "cumulative
importance"); with ``all_weights``, all filters ranked together on weights normalised per layer.
With ``pruning_flops_target`` the level is a share of FLOPs (:mod:`.levels`). ``strip`` bakes the
masks and physically removes the pruned channels
(:func:`~nncompress.torch.channel_surgery.remove_channels`): a smaller model of the same class.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nncompress.api.compression import CompressionStage, StripFormat
from nncompress.api.statistics import CompressionStatistics
from nncompress.config import AlgorithmSection
from nncompress.errors import ConfigError, InvalidArgumentError
from nncompress.functional import importance as fi
from nncompress.graph.channel_groups import ChannelGroup, channel_groups
from nncompress.graph.flops import LayerCost, layer_costs, total_flops, total_params
from nncompress.graph.layout import Priority, TransformationLayout
from nncompress.torch.channel_surgery import remove_channels
from nncompress.torch.insertion import strip_runtime

from ..base import BaseBuilder, BaseController
from ..selection import validate_scopes
from ..state_fields import state_bool, state_level
from . import levels
from .masks import PrunedGroup, mask_layout
from .params import FilterPruningParams
from .scheduler import PruningScheduler
from .selection import select_groups
from .statistics import FilterPruningStatistics, GroupPruning


class FilterPruningBuilder(BaseBuilder):
    """Masks the output channels of every prunable channel group in scope."""

    algorithm = "filter_pruning"
    priority = Priority.PRUNING

    def __init__(self, section: AlgorithmSection, context: Any) -> None:
        super().__init__(section, context)
        self.params = FilterPruningParams.from_section(section)
        self._groups: list[ChannelGroup] = []
        self._pruned: list[PrunedGroup] = []
        self._costs: list[LayerCost] = []
        self._skipped: list[tuple[int, str]] = []

    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        graph = self._context.graph_for(model)
        validate_scopes(graph, self._section)
        self._groups = channel_groups(graph, model)
        chosen, self._skipped, self.report = select_groups(self._groups, graph, model, self._section, self.params)
        layout, self._pruned = mask_layout(chosen, graph, model, self.algorithm, self.params.prune_batch_norms,
                                           self.params.zero_grad)
        self._costs = layer_costs(graph, self._groups)
        if not chosen:
            warnings.warn(f"{self._section.json_path}: filter_pruning found no channel group to prune; "
                          "see ctrl.capture_report for the reasons", stacklevel=3)
        if self.params.prune_flops:  # the schedule's levels lie between pruning_init and the target
            most = maximal_flops_level(self._costs, self._pruned, self.params.all_weights,
                                       self.params.channel_multiple)
            for key, level in (("params.pruning_flops_target", self.params.target_level),
                               ("pruning_init", self.params.pruning_init)):
                if level > most + 1e-9:
                    raise ConfigError(f"{self._section.json_path}.{key}",
                                      f"this model can lose at most {most:.4f} of its FLOPs by pruning the groups "
                                      f"in scope (each keeping {self.params.channel_multiple} channel(s) at least: "
                                      "channel_multiple)", level)
        return layout

    def build_controller(self, model: nn.Module) -> FilterPruningController:
        """:return: the controller, with masks set to ``pruning_init``."""
        return FilterPruningController(model, self, self._groups, self._pruned, self._costs, self._skipped,
                                       self.params)


def maximal_flops_level(costs: list[LayerCost], pruned: list[PrunedGroup], all_weights: bool = False,
                        multiple: int = 1) -> float:
    """Share of the FLOPs removed when every pruned group keeps the fewest channels it can: one
    ``multiple`` (with ``all_weights``: it loses NNCF's quota of 90% of its channels, rounded down,
    then the kept channels are rounded up to a multiple)."""
    full = total_flops(costs)
    kept = {g.index: g.channels - levels.rounded_pruned(g.channels, levels.quota(g.channels), multiple) if all_weights
            else levels.min_kept(g.channels, multiple) for g in pruned}
    return 1.0 - total_flops(costs, kept) / full if full else 0.0


class FilterPruningController(BaseController):
    """Sets the groups' masks for a level (of filters, or of FLOPs), driven by the pruning scheduler.

    :param model: the compressed model.
    :param builder: its builder.
    :param groups: every channel group of the model.
    :param pruned: the groups this algorithm prunes, with their masks.
    :param costs: the captured layers' FLOPs and parameters.
    :param skipped: the groups left alone, with the reason.
    :param params: the typed config.
    """

    def __init__(self, model: nn.Module, builder: BaseBuilder, groups: list[ChannelGroup], pruned: list[PrunedGroup],
                 costs: list[LayerCost], skipped: list[tuple[int, str]], params: FilterPruningParams) -> None:
        super().__init__(model, builder)
        self.params = params
        self.channel_groups = groups
        self.pruned_groups = pruned
        self.skipped_groups = skipped
        self._costs = costs
        self.full_flops = total_flops(costs)
        self.full_params = total_params(costs)
        self.prune_flops = params.prune_flops
        self.frozen = False
        self._stripped = False  # strip(do_copy=False) cut the channels out of self.model
        self._level = 0.0
        self._scheduler = PruningScheduler(self, params)
        self.set_pruning_level(params.pruning_init)

    # -- levels and masks ------------------------------------------------------------------------

    @property
    def pruning_level(self) -> float:
        """The level set last (share of FLOPs with ``pruning_flops_target``, else of filters)."""
        return self._level

    def kept_channels(self) -> dict[int, int]:
        """Channels each pruned group keeps now."""
        return {g.index: int(g.keep().sum()) for g in self.pruned_groups}

    def _removed(self, counts: Mapping[int, int]) -> float:
        kept = {g.index: g.channels - counts[g.index] for g in self.pruned_groups}
        return 1.0 - total_flops(self._costs, kept) / self.full_flops if self.full_flops else 0.0

    def _importance(self, group: PrunedGroup, normalize: bool) -> torch.Tensor:
        total = torch.zeros(group.channels, dtype=torch.float64)
        for name, dim, start in group.importance:
            imp = fi.filter_importance(self.model.get_parameter(name), self.params.filter_importance, dim, normalize)
            total += imp[start:start + group.channels].double().cpu()
        return total

    def set_pruning_level(self, level: float) -> None:
        """Recompute every group's mask for ``level`` (ignored while frozen).

        Without ``all_weights`` every group loses ``level`` of its channels (the least important
        by the sum of its producers' filter importances); with it, ``level`` of all filters go,
        ranked together on weights normalised per layer. With ``pruning_flops_target`` the level
        is the share of FLOPs to remove (:mod:`.levels`).

        :param level: in ``[0, 1]``.
        :raises InvalidArgumentError: for a level outside ``[0, 1]`` or a FLOPs level beyond
            :attr:`maximal_compression_rate`; the masks are unchanged then.
        """
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) <= 1.0:
            raise InvalidArgumentError(f"pruning level must be a number in [0, 1], got {level!r}")
        self._check_not_stripped()
        if self.frozen:
            return
        keeps = self._keeps_for(float(level))
        for group, keep in zip(self.pruned_groups, keeps):
            group.set_keep(keep)
        self._level = float(level)

    def _check_not_stripped(self) -> None:
        if self._stripped:
            raise InvalidArgumentError(
                "the model was stripped in place (strip(do_copy=False)): its pruned channels are gone, so "
                "filter_pruning can no longer set levels or strip it; use strip(do_copy=True) to keep training"
            )

    def _keeps_for(self, level: float) -> list[torch.Tensor]:
        groups = self.pruned_groups
        channels = {g.index: g.channels for g in groups}
        multiple = self.params.channel_multiple
        if self.params.all_weights:
            imps = [self._importance(g, normalize=True) for g in groups]
            if not self.prune_flops:
                return levels.round_keeps(fi.global_keep_masks(imps, level), imps, multiple)
            # the ranking gives positions in `groups`; counts and FLOPs go by group index
            order = [(groups[i].index, c) for i, c in fi.global_order(imps)]
            _, gone = levels.global_counts_for_flops(channels, order, self._removed, level, multiple)
            position = {g.index: i for i, g in enumerate(groups)}
            keeps = [torch.ones(g.channels, dtype=torch.bool) for g in groups]
            for index, c in gone:
                keeps[position[index]][c] = False
            return keeps
        if self.prune_flops:
            counts = levels.uniform_counts_for_flops(channels, self._removed, level, multiple)
        else:
            counts = levels.uniform_counts(channels, level, multiple)
        return [fi.keep_lowest_pruned(self._importance(g, normalize=False), counts[g.index]) for g in groups]

    def freeze(self, freeze: bool = True) -> None:
        """Stop (or, with ``False``, resume) mask updates; the scheduler freezes at its freeze epoch."""
        self.frozen = bool(freeze)

    # -- rates, stage, statistics ------------------------------------------------------------------

    @property
    def compression_rate(self) -> float:
        """As NNCF 2.x: the FLOPs share removed with ``pruning_flops_target``, else the level set.

        Setting it sets the pruning level (NNCF's setter: unfreeze, set, restore the frozen flag).
        """
        if self.prune_flops:
            full = self.full_flops
            return 1.0 - total_flops(self._costs, self.kept_channels()) / full if full else 0.0
        return self._level

    @compression_rate.setter
    def compression_rate(self, level: float) -> None:
        frozen = self.frozen
        self.freeze(False)
        try:
            self.set_pruning_level(level)
        finally:
            self.freeze(frozen)

    @property
    def maximal_compression_rate(self) -> float:
        """With ``pruning_flops_target``: the FLOPs share removed with every group pruned as far as allowed; else 1."""
        return (maximal_flops_level(self._costs, self.pruned_groups, self.params.all_weights,
                                    self.params.channel_multiple) if self.prune_flops
                else 1.0)

    def compression_stage(self) -> CompressionStage:
        """UNCOMPRESSED at level 0, FULLY_COMPRESSED once the level set reaches the target, else PARTIALLY.

        NNCF compares the measured FLOPs share in FLOPs mode; the level set is used here, since the
        closest reachable FLOPs share may lie a fraction of a channel below the target.
        """
        if self._level == 0:
            return CompressionStage.UNCOMPRESSED
        if self._level >= self.params.target_level - 1e-5:
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """FLOPs, parameters and filters dense and now, per-group pruned channels, levels."""
        kept = self.kept_channels()
        rows = [GroupPruning(g.index, g.channels, g.channels - kept[g.index], tuple(g.layers))
                for g in self.pruned_groups]
        stats = FilterPruningStatistics(
            self.full_flops, total_flops(self._costs, kept), self.full_params, total_params(self._costs, kept),
            sum(g.channels for g in self.pruned_groups), sum(kept.values()), self._level,
            self.params.target_level, self.prune_flops, rows, list(self.skipped_groups),
        )
        result = CompressionStatistics()
        result.register(self.name, stats)
        return result

    # -- state ---------------------------------------------------------------------------------------

    def _extra_state(self) -> dict[str, Any]:
        return {"pruning_level": self._level, "frozen": self.frozen}

    def _check_extra_state(self, state: Mapping[str, Any], where: str) -> None:
        state_level(state, "pruning_level", where)
        state_bool(state, "frozen", where)

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._level = float(state["pruning_level"])
        self.frozen = bool(state["frozen"])

    # -- strip -----------------------------------------------------------------------------------------

    def strip_model(
        self, model: nn.Module, do_copy: bool = False, strip_format: StripFormat = StripFormat.NATIVE
    ) -> nn.Module:
        """Bake the masks, then physically remove the pruned channels: a smaller model of the same class.

        Modules other algorithms inserted at the cut parameters (sparsity masks, per-channel
        quantizer scales) are cut with them.

        :param model: the compressed model (or a copy of it).
        :param do_copy: work on a deep copy; the model itself is left as it is.
        :param strip_format: passed to the other inserted modules' strip (masks are baked in any format).
        :return: the stripped model.
        """
        self._check_not_stripped()
        keep = {g.index: g.keep().detach().cpu().clone() for g in self.pruned_groups}
        if do_copy:
            model = copy.deepcopy(model)
        self._stripped = model is self.model
        model = strip_runtime(model, strip_format, groups={self.name})
        cut = [g.group for g in self.pruned_groups if not bool(keep[g.index].all())]
        if cut:
            remove_channels(model, cut, {g.index: keep[g.index] for g in cut})
        return model
