"""The filter-pruning scheduler: counts epochs, asks the controller for the schedule's level.

As NNCF 2.x's ``PruningScheduler``: every ``epoch_step()`` sets the level of the new epoch
(:func:`nncompress.functional.pruning_schedules.pruning_level`), then freezes the masks once the
epoch reaches the freeze epoch (``num_init_steps`` for ``baseline``, ``num_init_steps +
pruning_steps`` otherwise), so the freeze epoch itself still gets its level. ``step()`` only
counts. During the ``num_init_steps`` warm-up epochs the level is 0: the masks set from
``pruning_init`` at creation are all ones again from the first ``epoch_step()``.
"""

from __future__ import annotations

from typing import Protocol

from nncompress.functional import pruning_schedules as fps

from ..base import BaseCompressionScheduler
from .params import FilterPruningParams


class PruningLevelTarget(Protocol):
    """What the scheduler drives (the filter-pruning controller)."""

    def set_pruning_level(self, level: float) -> None:
        """Recompute the masks for ``level`` (ignored while frozen)."""
        ...

    def freeze(self, freeze: bool = True) -> None:
        """Stop mask updates."""
        ...


class PruningScheduler(BaseCompressionScheduler):
    """Sets the level of NNCF's ``baseline`` / ``exponential`` / ``exponential_with_bias`` schedule per epoch.

    :param target: the controller.
    :param params: the section's typed params.
    """

    def __init__(self, target: PruningLevelTarget, params: FilterPruningParams) -> None:
        super().__init__()
        self._target = target
        self.schedule = params.schedule
        self.initial_level = params.pruning_init
        self.target_level = params.target_level
        self.num_warmup_epochs = params.num_init_steps
        self.num_pruning_epochs = params.pruning_steps
        self.freeze_epoch = params.freeze_epoch

    @property
    def current_pruning_level(self) -> float:
        """The schedule's level for the current epoch (0 before the first ``epoch_step()``, as NNCF)."""
        return fps.pruning_level(self.schedule, self.current_epoch, self.initial_level, self.target_level,
                                 self.num_warmup_epochs, self.num_pruning_epochs)

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Move to the next epoch, set its level, then freeze from the freeze epoch on."""
        super().epoch_step(next_epoch)
        self._target.set_pruning_level(self.current_pruning_level)
        if self.current_epoch >= self.freeze_epoch:
            self._target.freeze()
