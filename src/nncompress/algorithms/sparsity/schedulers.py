"""Sparsity schedulers: thin classes that keep counters and call the pure schedule functions.

The level for an epoch comes from :mod:`nncompress.functional.schedules`; a scheduler only
counts steps and epochs (as NNCF 2.x did), asks the controller to set the level, and freezes
the masks from ``sparsity_freeze_epoch`` on.
"""

from __future__ import annotations

from typing import Any, Protocol

from nncompress.functional import schedules as fs

from ..base import BaseCompressionScheduler


class SparsityLevelTarget(Protocol):
    """What a sparsity scheduler drives (the magnitude sparsity controller)."""

    @property
    def compression_rate(self) -> float:
        """The measured sparsity of the sparsified weights."""
        ...

    def set_sparsity_level(self, level: float) -> None:
        """Recompute the masks for ``level``."""
        ...

    def freeze(self) -> None:
        """Stop mask updates."""
        ...


class SparsityScheduler(BaseCompressionScheduler):
    """Base of the sparsity schedulers.

    :param target: the controller whose level is set.
    :param initial: ``sparsity_init``.
    :param final: ``sparsity_target``.
    :param freeze_epoch: ``sparsity_freeze_epoch``: masks are frozen from this epoch on.
    """

    def __init__(self, target: SparsityLevelTarget, initial: float, final: float, freeze_epoch: int) -> None:
        super().__init__()
        self._target = target
        self.initial_level = initial
        self.target_level = final
        self.freeze_epoch = freeze_epoch
        self.current_level = initial

    def level_for_current_position(self) -> float:
        """The level the schedule gives for the current epoch (and step)."""
        raise NotImplementedError

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Move to the next epoch, set its level, freeze if the freeze epoch is reached."""
        super().epoch_step(next_epoch)
        self._update(always=True)
        if self.current_epoch >= self.freeze_epoch:
            self._target.freeze()

    def _update(self, always: bool) -> None:
        level = self.level_for_current_position()
        if always or level != self.current_level:
            self._target.set_sparsity_level(level)
        self.current_level = level

    def get_state(self) -> dict[str, Any]:
        """Counters and the current level."""
        return {**super().get_state(), "current_level": self.current_level}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore counters and level; the masks come from the model's ``state_dict``."""
        super().load_state(state)
        self.current_level = float(state["current_level"])


class PolynomialSparsityScheduler(SparsityScheduler):
    """Polynomial schedule, per epoch or (``update_per_optimizer_step``) per optimizer step.

    When ``steps_per_epoch`` is not given, it is measured in the first epoch: per-step updates
    start in the second epoch.
    """

    def __init__(
        self,
        target: SparsityLevelTarget,
        initial: float,
        final: float,
        freeze_epoch: int,
        target_epoch: float,
        power: float,
        concave: bool,
        per_step: bool,
        steps_per_epoch: int | None,
    ) -> None:
        super().__init__(target, initial, final, freeze_epoch)
        self.target_epoch = target_epoch
        self.power = power
        self.concave = concave
        self.per_step = per_step
        self.steps_per_epoch = steps_per_epoch
        self.steps_in_epoch = 0

    def level_for_current_position(self) -> float:
        """Polynomial level at the current (fractional) epoch."""
        epoch: float = max(self.current_epoch, 0)
        if self.per_step and self.steps_per_epoch:
            in_epoch = min(max(self.steps_in_epoch - 1, 0), self.steps_per_epoch - 1)
            epoch = fs.fractional_epoch(int(epoch), in_epoch, self.steps_per_epoch)
        return fs.polynomial_level(
            epoch, self.initial_level, self.target_level, self.target_epoch, self.power, self.concave
        )

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """As the base, after measuring ``steps_per_epoch`` at the end of the first epoch."""
        if self.per_step and self.steps_per_epoch is None and self.current_epoch == 0 and self.steps_in_epoch:
            self.steps_per_epoch = self.steps_in_epoch
        self.steps_in_epoch = 0
        super().epoch_step(next_epoch)

    def step(self, next_step: int | None = None) -> None:
        """Count the step; with per-step updates, set the new level if it changed."""
        super().step(next_step)
        self.steps_in_epoch += 1
        if self.per_step and self.steps_per_epoch:
            self._update(always=False)

    def get_state(self) -> dict[str, Any]:
        """Adds the step counters."""
        return {**super().get_state(), "steps_in_epoch": self.steps_in_epoch, "steps_per_epoch": self.steps_per_epoch}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restores the step counters too."""
        super().load_state(state)
        self.steps_in_epoch = int(state["steps_in_epoch"])
        self.steps_per_epoch = state["steps_per_epoch"]


class ExponentialSparsityScheduler(SparsityScheduler):
    """Exponential schedule from ``sparsity_init`` to ``sparsity_target`` at ``sparsity_target_epoch``."""

    def __init__(
        self, target: SparsityLevelTarget, initial: float, final: float, freeze_epoch: int, target_epoch: float
    ) -> None:
        super().__init__(target, initial, final, freeze_epoch)
        self.target_epoch = target_epoch

    def level_for_current_position(self) -> float:
        """Exponential level at the current epoch."""
        return fs.exponential_level(max(self.current_epoch, 0), self.initial_level, self.target_level,
                                    self.target_epoch)


class MultiStepSparsityScheduler(SparsityScheduler):
    """Piecewise-constant levels: ``levels[i]`` from epoch ``steps[i-1]`` on."""

    def __init__(
        self, target: SparsityLevelTarget, freeze_epoch: int, steps: list[int], levels: list[float]
    ) -> None:
        super().__init__(target, levels[0], levels[-1], freeze_epoch)
        self.steps = steps
        self.levels = levels

    def level_for_current_position(self) -> float:
        """The level of the current epoch's step interval."""
        return fs.multistep_level(max(self.current_epoch, 0), self.steps, self.levels)


class AdaptiveSparsityScheduler(SparsityScheduler):
    """Raises the level by ``step`` once the measured sparsity has caught up for ``patience`` epochs."""

    def __init__(
        self,
        target: SparsityLevelTarget,
        initial: float,
        final: float,
        freeze_epoch: int,
        patience: int,
        step: float,
        eps: float,
    ) -> None:
        super().__init__(target, initial, final, freeze_epoch)
        self.patience = patience
        self.level_step = step
        self.eps = eps
        self.num_bad_epochs = 0

    def level_for_current_position(self) -> float:
        """The level after this epoch's adaptive update (updates the bad-epoch counter)."""
        if self.current_epoch <= 0:
            return self.current_level
        level, self.num_bad_epochs = fs.adaptive_level(
            self.current_level, self._target.compression_rate, self.num_bad_epochs, self.patience,
            self.level_step, self.target_level, self.eps,
        )
        return level

    def get_state(self) -> dict[str, Any]:
        """Adds the bad-epoch counter."""
        return {**super().get_state(), "num_bad_epochs": self.num_bad_epochs}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restores the bad-epoch counter too."""
        super().load_state(state)
        self.num_bad_epochs = int(state["num_bad_epochs"])
