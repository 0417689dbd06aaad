"""Magnitude sparsity: zero the weights of smallest magnitude, level raised by a schedule.

Config (NNCF 2.x ``"algorithm": "magnitude_sparsity"``)::

    {"algorithm": "magnitude_sparsity",
     "sparsity_init": 0.05,
     "params": {"schedule": "polynomial", "sparsity_target": 0.7, "sparsity_target_epoch": 3,
                "sparsity_freeze_epoch": 5, "power": 3, "concave": true,
                "weight_importance": "normed_abs", "sparsity_level_setting_mode": "global"}}

Masks are recomputed when the level changes (``torch.kthvalue`` once over all importances for
``global`` mode, once per layer for ``local``), never on a step where the level is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.api.compression import CompressionStage
from nncompress.config import AlgorithmSection
from nncompress.errors import CompressionStateError, InvalidArgumentError
from nncompress.functional import sparsity as fsp
from nncompress.graph.layout import Priority, TransformationLayout

from ..base import BaseBuilder
from ..selection import select_weighted_ops
from ..state_fields import state_bool, state_level, state_list
from .base import SPARSIFIABLE_OPS, BaseSparsityController, SparsifiedWeight, mask_layout
from .schedule_params import SparsityScheduleParams, make_sparsity_scheduler


@dataclass(frozen=True)
class MagnitudeSparsityParams(SparsityScheduleParams):
    """The typed ``params`` of a magnitude sparsity section, with NNCF 2.x defaults."""

    weight_importance: str = fsp.DEFAULT_WEIGHT_IMPORTANCE

    @classmethod
    def from_section(cls, section: AlgorithmSection) -> MagnitudeSparsityParams:
        """Read the section (already schema-validated); check what the schema cannot.

        :raises ConfigError: e.g. multistep levels that do not fit the steps.
        """
        result = cls(**cls.section_values(section))
        result.check(section.json_path, "1.0 would zero every weight")
        return result


class MagnitudeSparsityBuilder(BaseBuilder):
    """Puts a mask on the weight of every conv / linear / matmul op in scope."""

    algorithm = "magnitude_sparsity"
    priority = Priority.SPARSIFICATION

    def __init__(self, section: AlgorithmSection, context: Any) -> None:
        super().__init__(section, context)
        self.params = MagnitudeSparsityParams.from_section(section)
        self._weights: list[SparsifiedWeight] = []

    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        graph = self._context.graph_for(model)
        nodes, self.report = select_weighted_ops(graph, self._section, SPARSIFIABLE_OPS)
        layout, self._weights = mask_layout(nodes, graph, model, self.algorithm)
        return layout

    def build_controller(self, model: nn.Module) -> MagnitudeSparsityController:
        """:return: the controller, with masks set to ``sparsity_init``."""
        return MagnitudeSparsityController(model, self, self._weights, self.params)


class MagnitudeSparsityController(BaseSparsityController):
    """Sets magnitude masks for a level, globally or per layer, driven by a scheduler.

    :param model: the compressed model.
    :param builder: its builder.
    :param weights: the sparsified weights.
    :param params: the typed config params.
    """

    def __init__(
        self, model: nn.Module, builder: BaseBuilder, weights: list[SparsifiedWeight], params: MagnitudeSparsityParams
    ) -> None:
        super().__init__(model, builder, weights)
        self.params = params
        self.current_level = 0.0
        self.frozen = False
        if params.sparsity_level_setting_mode == "global":
            self._scheduler = make_sparsity_scheduler(self, params)
        self.set_sparsity_level(params.sparsity_init if params.schedule != "multistep"
                                else params.multistep_sparsity_levels[0])

    def set_sparsity_level(self, level: float, layer: str | None = None) -> None:
        """Recompute masks so that ``level`` of the weights are zero.

        In ``global`` mode (default) one threshold is shared by all sparsified weights; in
        ``local`` mode, or when ``layer`` names one weight, each gets its own. Does nothing once
        the masks are frozen.

        :param level: sparsity level in ``[0, 1)``, as NNCF 2.x (1.0 would zero every weight).
        :param layer: the qualified weight name (``features.0.weight``) to set alone.
        :raises InvalidArgumentError: for a level outside ``[0, 1)`` (NaN included) or an unknown layer.
        """
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) < 1.0:
            raise InvalidArgumentError(f"sparsity level must be a number in [0, 1), got {level!r}")
        if self.frozen:
            return
        records = self.sparsified_weights
        if layer is not None:
            records = [r for r in records if r.weight == layer]
            if not records:
                names = [r.weight for r in self.sparsified_weights]
                raise InvalidArgumentError(f"layer {layer!r} is not sparsified; sparsified weights: {names}")
        mode = self.params.weight_importance
        with torch.no_grad():
            importances = [fsp.weight_importance(self.model.get_parameter(r.weight), mode) for r in records]
            if layer is None and self.params.sparsity_level_setting_mode == "global":
                shared = fsp.global_threshold(importances, level)
                thresholds = [shared] * len(records)
            else:
                thresholds = [fsp.local_threshold(imp, level) for imp in importances]
            for rec, imp, thr in zip(records, importances, thresholds):
                rec.mask.mask.copy_(fsp.binary_mask(imp, thr))
                rec.threshold = thr
        if layer is None:
            self.current_level = float(level)

    def freeze(self, freeze: bool = True) -> None:
        """Stop (or, with ``False``, resume) mask updates; the scheduler freezes at ``sparsity_freeze_epoch``."""
        self.frozen = bool(freeze)

    def _set_compression_rate(self, level: float) -> None:
        """As NNCF 2.x's setter (used by accuracy-aware training): unfreeze, set ``level``, freeze.

        :raises InvalidArgumentError: from :meth:`set_sparsity_level`; masks and frozen flag are kept then.
        """
        frozen = self.frozen
        self.freeze(False)
        try:
            self.set_sparsity_level(level)
        except InvalidArgumentError:
            self.freeze(frozen)
            raise
        self.freeze(True)

    def compression_stage(self) -> CompressionStage:
        """As NNCF 2.x: in ``local`` mode always FULLY_COMPRESSED (no schedule drives the level);
        in ``global`` mode FULLY_COMPRESSED from the target level on, UNCOMPRESSED at level 0,
        PARTIALLY_COMPRESSED in between."""
        if self.params.sparsity_level_setting_mode == "local":
            return CompressionStage.FULLY_COMPRESSED
        if self.current_level >= self.params.final_level:
            return CompressionStage.FULLY_COMPRESSED
        if self.current_level == 0:
            return CompressionStage.UNCOMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    def _target_and_current(self) -> tuple[float | None, float | None]:
        return self.params.final_level, self.current_level

    def _extra_state(self) -> dict[str, Any]:
        # -inf (level 0: nothing masked) is stored as None to keep the state strict JSON
        thresholds = [None if r.threshold is None or math.isinf(r.threshold) else r.threshold
                      for r in self.sparsified_weights]
        return {"current_level": self.current_level, "frozen": self.frozen, "thresholds": thresholds}

    def _check_extra_state(self, state: Mapping[str, Any], where: str) -> None:
        state_level(state, "current_level", where)
        state_bool(state, "frozen", where)
        thresholds = state_list(state, "thresholds", where, length=len(self.sparsified_weights))
        for i, thr in enumerate(thresholds):
            if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float))
                                    or not math.isfinite(thr)):
                raise CompressionStateError(f"{where}.thresholds[{i}]: expected a finite number or null, got {thr!r}")

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.current_level = float(state["current_level"])
        self.frozen = bool(state["frozen"])
        for rec, thr in zip(self.sparsified_weights, state["thresholds"]):
            rec.threshold = -math.inf if thr is None else float(thr)
