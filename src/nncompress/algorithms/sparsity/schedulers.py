"""Sparsity schedulers: thin classes that keep counters and call the pure schedule functions.

The level for an epoch comes from :mod:`nncompress.functional.schedules`; a scheduler only
counts steps and epochs as NNCF 2.x's ``nncf/common/sparsity/schedulers.py`` did, asks the
controller to set the level, and freezes the masks from ``sparsity_freeze_epoch`` on. The calls
to the controller come in NNCF's order, so the levels set are NNCF's, call for call:

- on every update the masks are frozen first once ``current_epoch >= sparsity_freeze_epoch``,
  then the level is set (a frozen controller ignores it: the freeze epoch keeps the level of the
  epoch before);
- per-epoch schedules update on ``epoch_step()``; the polynomial schedule with
  ``update_per_optimizer_step`` updates on ``step()`` only;
- without ``steps_per_epoch`` that schedule counts the ``step()`` calls up to the first
  ``epoch_step()`` that follows some steps; until then ``epoch_step()`` does not advance the
  epoch (NNCF "skips" the measuring epoch) and the level stays ``sparsity_init``;
- the adaptive schedule updates on every ``epoch_step()``, the first one included.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Protocol

from nncompress.functional import schedules as fs

from ..base import BaseCompressionScheduler
from ..state_fields import state_bool, state_counters, state_int, state_level


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

    @property
    def current_sparsity_level(self) -> float:
        """The level the schedule gave last (NNCF's name for :attr:`current_level`)."""
        return self.current_level

    def level_for_current_position(self) -> float:
        """The level the schedule gives for the current epoch (and step)."""
        raise NotImplementedError

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Move to the next epoch, freeze if the freeze epoch is reached, set the epoch's level."""
        super().epoch_step(next_epoch)
        self._update(always=True)

    def _update(self, always: bool) -> None:
        # NNCF's order: freeze first, then set (ignored once frozen)
        if self.current_epoch >= self.freeze_epoch:
            self._target.freeze()
        level = self.level_for_current_position()
        if always or level != self.current_level:
            self._target.set_sparsity_level(level)
        self.current_level = level

    def get_state(self) -> dict[str, Any]:
        """Counters and the current level."""
        return {**super().get_state(), "current_level": self.current_level}

    def _read_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """This class's fields of ``state``, checked (subclasses add theirs)."""
        return {"current_level": state_level(state, "current_level", "scheduler_state")}

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Check every field :meth:`load_state` reads, changing nothing.

        :raises CompressionStateError: for a missing or bad field.
        """
        state_counters(state, "scheduler_state")
        self._read_state(state)

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore counters and level; the masks come from the model's ``state_dict``.

        :raises CompressionStateError: for a missing or bad field; nothing is changed then.
        """
        fields = self._read_state(state)  # the counters are checked by the base before any assignment
        super().load_state(state)
        for name, value in fields.items():
            setattr(self, name, value)


class PolynomialSparsityScheduler(SparsityScheduler):
    """Polynomial schedule, per epoch or (``update_per_optimizer_step``) per optimizer step.

    Per step, the level of step ``i`` (zero-based) of epoch ``e`` is the polynomial at
    ``e + i / steps_per_epoch``. When ``steps_per_epoch`` is not given, it is the number of
    ``step()`` calls made before the first ``epoch_step()`` that follows steps; that first epoch is
    not counted (``current_epoch`` and ``current_step`` stay put, the level stays
    ``sparsity_init``), exactly as NNCF 2.x. An epoch with another number of steps than
    ``steps_per_epoch`` raises a warning (NNCF raised an exception); the extra steps keep the
    level of the epoch's last planned step.
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
        self.skipping_epoch = False

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
        """Move to the next epoch; per step, learn ``steps_per_epoch`` first (or skip the epoch)."""
        if self.per_step:
            self._learn_steps_per_epoch()
            self.skipping_epoch = self.steps_per_epoch is None
            if self.skipping_epoch:
                warnings.warn(
                    "update_per_optimizer_step is set without params.steps_per_epoch: this epoch counts the "
                    "optimizer steps and the sparsity level starts changing after the next epoch_step()",
                    stacklevel=2,
                )
                return
        self.steps_in_epoch = 0
        if self.per_step:  # the level changes on step() only
            BaseCompressionScheduler.epoch_step(self, next_epoch)
        else:
            super().epoch_step(next_epoch)

    def _learn_steps_per_epoch(self) -> None:
        counted = self.steps_in_epoch
        if self.steps_per_epoch is None and counted > 0:
            self.steps_per_epoch = counted
        elif self.steps_per_epoch is not None and counted > 0 and counted != self.steps_per_epoch:
            warnings.warn(
                f"this epoch had {counted} optimizer steps, but steps_per_epoch is {self.steps_per_epoch}; "
                "the per-step sparsity schedule assumes the same number of steps in every epoch",
                stacklevel=3,
            )

    def step(self, next_step: int | None = None) -> None:
        """Count the step; with per-step updates, set the new level if it changed."""
        self.steps_in_epoch += 1
        if self.skipping_epoch:
            return
        super().step(next_step)
        if self.per_step:
            self._update(always=False)

    def get_state(self) -> dict[str, Any]:
        """Adds the step counters."""
        return {**super().get_state(), "steps_in_epoch": self.steps_in_epoch,
                "steps_per_epoch": self.steps_per_epoch, "skipping_epoch": self.skipping_epoch}

    def _read_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        where = "scheduler_state"
        return {
            **super()._read_state(state),
            "steps_in_epoch": state_int(state, "steps_in_epoch", where, minimum=0),
            "steps_per_epoch": state_int(state, "steps_per_epoch", where, minimum=1, optional=True),
            # absent from states written before it was added; that code never skipped an epoch
            "skipping_epoch": state_bool(state, "skipping_epoch", where, default=False),
        }


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
    """Raises the level by ``step`` once the measured sparsity has caught up for ``patience`` epochs.

    As NNCF 2.x, every ``epoch_step()`` (the first one included) compares the measured sparsity
    with the level of the epoch before and may raise it.
    """

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
        level, self.num_bad_epochs = fs.adaptive_level(
            self.current_level, self._target.compression_rate, self.num_bad_epochs, self.patience,
            self.level_step, self.target_level, self.eps,
        )
        return level

    def get_state(self) -> dict[str, Any]:
        """Adds the bad-epoch counter."""
        return {**super().get_state(), "num_bad_epochs": self.num_bad_epochs}

    def _read_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._read_state(state),
                "num_bad_epochs": state_int(state, "num_bad_epochs", "scheduler_state", minimum=0)}
