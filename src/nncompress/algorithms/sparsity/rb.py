"""Regularization-based (RB) sparsity: masks learned with a loss that pulls their density to a level.

Config (NNCF 2.x ``"algorithm": "rb_sparsity"``)::

    {"algorithm": "rb_sparsity",
     "sparsity_init": 0.02,
     "params": {"schedule": "multistep", "multistep_steps": [2, 4], "multistep_sparsity_levels": [0.1, 0.3, 0.5],
                "sparsity_freeze_epoch": 8},
     "compression_lr_multiplier": 1.0}

As NNCF 2.x: every sparsified weight gets mask logits initialised to ``logit(0.99)``, trained by
the task loss through a noisy straight-through mask (:class:`~.rb_loss.RBMask`) and by
:class:`~.rb_loss.RBSparsityLoss`, ``((density - (1 - level)) / 0.05) ** 2``, whose level the
schedule (default ``exponential``) sets. From ``sparsity_freeze_epoch`` on the loss is 0 and the
masks draw no noise. The logits are model parameters: an optimizer made from
``model.parameters()`` after ``create_compressed_model`` trains them
(``nncompress.add_compression_parameters`` adds them to one made before).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nncompress.api.compression import CompressionStage
from nncompress.api.statistics import CompressionStatistics, format_table
from nncompress.config import AlgorithmSection
from nncompress.errors import ConfigError, InvalidArgumentError
from nncompress.functional import schedules as fs
from nncompress.graph.layout import Priority, TransformationLayout

from ..base import BaseBuilder
from ..selection import select_weighted_ops
from ..state_fields import state_bool, state_level
from .base import SPARSIFIABLE_OPS, BaseSparsityController, SparsifiedWeight, SparsityStatistics, mask_layout
from .rb_loss import RBMask, RBSparsityLoss
from .schedule_params import SparsityScheduleParams, make_sparsity_scheduler


@dataclass(frozen=True)
class RBSparsityParams(SparsityScheduleParams):
    """The typed keys of an ``rb_sparsity`` section, with NNCF 2.x defaults (schedule: exponential)."""

    schedule: str = fs.DEFAULT_RB_SCHEDULE
    lr_multiplier: float = 1.0

    @classmethod
    def from_section(cls, section: AlgorithmSection) -> RBSparsityParams:
        """Read the section (already schema-validated); check what the schema cannot.

        :raises ConfigError: naming the JSON path, e.g. for levels outside ``[0, 1)`` or the
            ``local`` mode.
        """
        p = cls(**cls.section_values(section), lr_multiplier=_lr_multiplier(section))
        if p.sparsity_level_setting_mode == "local":
            raise ConfigError(
                f"{section.json_path}.params.sparsity_level_setting_mode",
                "'local' is not supported for rb_sparsity: NNCF 2.x's per-layer RB loss failed on its first "
                "call (it reads a 'sparsify' flag its RB masks do not have); allowed: 'global'",
                "local",
            )
        p.check(section.json_path, "1.0 would ask the loss to drop every weight")
        return p


def _lr_multiplier(section: AlgorithmSection) -> float:
    value = section.section.get("compression_lr_multiplier", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < math.inf:
        raise ConfigError(f"{section.json_path}.compression_lr_multiplier",
                          f"{value!r} is not allowed; allowed: a finite number >= 0 (0 freezes the masks' logits "
                          "against both losses)", value)
    return float(value)


class RBSparsityBuilder(BaseBuilder):
    """Puts a learned mask on the weight of every conv / linear / matmul / embedding op in scope."""

    algorithm = "rb_sparsity"
    priority = Priority.SPARSIFICATION

    def __init__(self, section: AlgorithmSection, context: Any) -> None:
        super().__init__(section, context)
        self.params = RBSparsityParams.from_section(section)
        self._weights: list[SparsifiedWeight] = []

    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        graph = self._context.graph_for(model)
        nodes, self.report = select_weighted_ops(graph, self._section, SPARSIFIABLE_OPS)
        lr = self.params.lr_multiplier
        layout, self._weights = mask_layout(nodes, graph, model, self.algorithm, lambda w: RBMask(w, lr))
        return layout

    def build_controller(self, model: nn.Module) -> RBSparsityController:
        """:return: the controller, its loss aiming at the initial level."""
        return RBSparsityController(model, self, self._weights, self.params)


@dataclass
class RBSparsityStatistics(SparsityStatistics):
    """:class:`SparsityStatistics` plus NNCF 2.x's mean sparse probability, ``1 - mean(sigmoid(logits))``."""

    mean_sparse_prob: float = 0.0

    def to_str(self) -> str:
        """Summary and per-layer tables, then the mean sparse probability."""
        extra = format_table(("statistic", "value"), [("mean sparse probability", self.mean_sparse_prob)])
        return "\n".join([super().to_str(), extra])

    def to_dict(self) -> dict[str, float]:
        """Flat metrics, including ``mean_sparse_prob``."""
        return {**super().to_dict(), "mean_sparse_prob": self.mean_sparse_prob}


class RBSparsityController(BaseSparsityController):
    """Sets the level the RB loss pulls the masks' density to, driven by a scheduler.

    :param model: the compressed model.
    :param builder: its builder.
    :param weights: the sparsified weights (their masks are :class:`RBMask`).
    :param params: the typed config.
    """

    def __init__(
        self, model: nn.Module, builder: BaseBuilder, weights: list[SparsifiedWeight], params: RBSparsityParams
    ) -> None:
        super().__init__(model, builder, weights)
        self.params = params
        self.masks = [r.mask for r in weights if isinstance(r.mask, RBMask)]
        self.rb_loss = RBSparsityLoss(self.masks, params.lr_multiplier)
        self._loss = self.rb_loss
        self.current_level = 0.0
        self._scheduler = make_sparsity_scheduler(self, params)
        self.set_sparsity_level(params.initial_level)

    @property
    def frozen(self) -> bool:
        """Whether the masks are frozen (no noise, zero loss)."""
        return self.rb_loss.disabled

    def set_sparsity_level(self, level: float) -> None:
        """Aim the loss at sparsity ``level`` (the masks follow through training).

        As NNCF 2.x this also applies once frozen (the loss is 0 then, so it changes nothing).

        :param level: in ``[0, 1)``.
        :raises InvalidArgumentError: for a level outside ``[0, 1)``, NaN included.
        """
        self.rb_loss.set_target_level(level)
        self.current_level = float(level)

    def freeze(self, freeze: bool = True) -> None:
        """Disable (or, with ``False``, enable) the loss and the masks' noise; the scheduler freezes
        at ``sparsity_freeze_epoch``."""
        self.rb_loss.disable(freeze)

    def _set_compression_rate(self, level: float) -> None:
        """As NNCF 2.x's setter: aim the loss at ``level``."""
        self.set_sparsity_level(level)

    def _zeros(self, rec: SparsifiedWeight) -> int:
        if isinstance(rec.mask, RBMask):
            rec.mask.refresh_()
        return super()._zeros(rec)

    def compression_stage(self) -> CompressionStage:
        """As NNCF 2.x: UNCOMPRESSED at level 0, FULLY_COMPRESSED from the final level on,
        PARTIALLY_COMPRESSED in between."""
        if self.current_level == 0:
            return CompressionStage.UNCOMPRESSED
        if self.current_level >= self.params.final_level:
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    def _target_and_current(self) -> tuple[float | None, float | None]:
        return self.params.final_level, self.current_level

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """As magnitude sparsity's (levels of the eval-time masks), plus the mean sparse probability."""
        base = super().statistics(quickly_collected_only)
        stats = getattr(base, self.name)
        assert isinstance(stats, SparsityStatistics)  # registered by the base class just now
        rb = RBSparsityStatistics(**vars(stats), mean_sparse_prob=1.0 - self.rb_loss.mean_keep_probability())
        result = CompressionStatistics()
        result.register(self.name, rb)
        return result

    def distributed(self) -> None:
        """As NNCF 2.x: broadcast rank 0's random generator state so every rank draws the same noise.

        :raises InvalidArgumentError: if ``torch.distributed`` is not initialised.
        """
        if not (dist.is_available() and dist.is_initialized()):
            raise InvalidArgumentError("distributed() needs an initialised torch.distributed process group")
        torch.set_rng_state(_broadcast_from_rank0(torch.get_rng_state()))
        if torch.cuda.is_available() and any(m.logits.is_cuda for m in self.masks):
            torch.cuda.set_rng_state(_broadcast_from_rank0(torch.cuda.get_rng_state()))

    def _extra_state(self) -> dict[str, Any]:
        return {"current_level": self.current_level, "frozen": self.frozen}

    def _check_extra_state(self, state: Mapping[str, Any], where: str) -> None:
        state_level(state, "current_level", where)
        state_bool(state, "frozen", where)

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.current_level = float(state["current_level"])
        self.freeze(bool(state["frozen"]))


def _broadcast_from_rank0(state: torch.Tensor) -> torch.Tensor:
    """Rank 0's copy of a (CPU) generator state; NCCL broadcasts CUDA tensors only, so it travels on the GPU."""
    if dist.get_backend() == "nccl":
        moved = state.cuda()
        dist.broadcast(moved, src=0)
        return moved.cpu()
    dist.broadcast(state, src=0)
    return state
