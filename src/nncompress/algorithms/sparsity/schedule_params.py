"""The schedule keys magnitude and RB sparsity share: typed, checked, and turned into a scheduler.

Both NNCF 2.x sections take the same ``sparsity_init`` and ``params`` schedule keys
(``schedule``, ``sparsity_target``, ``sparsity_target_epoch``, ``sparsity_freeze_epoch``,
``power``, ``concave``, ``update_per_optimizer_step``, ``steps_per_epoch``, ``patience``,
``step``, ``eps``, ``multistep_steps``, ``multistep_sparsity_levels``,
``sparsity_level_setting_mode``); each algorithm's params dataclass derives from
:class:`SparsityScheduleParams` and adds its own keys.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from nncompress.config import AlgorithmSection
from nncompress.errors import ConfigError
from nncompress.functional import schedules as fs

from .schedulers import (
    AdaptiveSparsityScheduler,
    ExponentialSparsityScheduler,
    MultiStepSparsityScheduler,
    PolynomialSparsityScheduler,
    SparsityLevelTarget,
    SparsityScheduler,
)


@dataclass(frozen=True)
class SparsityScheduleParams:
    """The schedule keys of a sparsity section, with NNCF 2.x defaults (magnitude's schedule)."""

    sparsity_init: float = fs.DEFAULT_SPARSITY_INIT
    schedule: str = fs.DEFAULT_SCHEDULE
    sparsity_target: float = fs.DEFAULT_SPARSITY_TARGET
    sparsity_target_epoch: float = fs.DEFAULT_SPARSITY_TARGET_EPOCH
    sparsity_freeze_epoch: int = fs.DEFAULT_SPARSITY_FREEZE_EPOCH
    power: float = fs.DEFAULT_POWER
    concave: bool = fs.DEFAULT_CONCAVE
    update_per_optimizer_step: bool = fs.DEFAULT_UPDATE_PER_OPTIMIZER_STEP
    steps_per_epoch: int | None = None
    patience: int = fs.DEFAULT_PATIENCE
    step: float = fs.DEFAULT_ADAPTIVE_STEP
    eps: float = fs.DEFAULT_ADAPTIVE_EPS
    multistep_steps: list[int] = field(default_factory=lambda: list(fs.DEFAULT_MULTISTEP_STEPS))
    multistep_sparsity_levels: list[float] = field(default_factory=lambda: list(fs.DEFAULT_MULTISTEP_LEVELS))
    sparsity_level_setting_mode: str = "global"

    @classmethod
    def section_values(cls, section: AlgorithmSection) -> dict[str, Any]:
        """The section's values of this dataclass's fields (``sparsity_init`` from the section level)."""
        values = {k: v for k, v in section.params.items() if k in cls.__dataclass_fields__}
        if "sparsity_init" in section.section:
            values["sparsity_init"] = section.section["sparsity_init"]
        return values

    def check(self, json_path: str, what: str) -> None:
        """Check what the schema cannot: multistep lists, ``sparsity_init <= sparsity_target``, levels in
        ``[0, 1)``, a polynomial ``power > 0``.

        :param json_path: the section's JSON path, for messages.
        :param what: why a level of 1 is refused, e.g. ``"1.0 would zero every weight"``.
        :raises ConfigError: naming the key, the value and what is allowed.
        """
        multistep = self.schedule == "multistep"
        steps, levels = self.multistep_steps, self.multistep_sparsity_levels
        if multistep and len(levels) != len(steps) + 1:
            raise ConfigError(f"{json_path}.params.multistep_sparsity_levels",
                              f"needs one more level than multistep_steps has steps ({len(steps)}), got {len(levels)}",
                              levels)
        if multistep and steps != sorted(set(steps)):
            raise ConfigError(f"{json_path}.params.multistep_steps", "must be strictly increasing", steps)
        if not multistep and self.sparsity_init > self.sparsity_target:
            raise ConfigError(f"{json_path}.sparsity_init", f"{self.sparsity_init} is above params.sparsity_target "
                              f"{self.sparsity_target}; the schedule raises the level from sparsity_init to "
                              "sparsity_target", self.sparsity_init)
        checked = ([("params.multistep_sparsity_levels", v) for v in levels] if multistep
                   else [("sparsity_init", self.sparsity_init), ("params.sparsity_target", self.sparsity_target)])
        for key, value in checked:
            if not 0.0 <= value < 1.0:  # False for NaN
                raise ConfigError(f"{json_path}.{key}", f"a sparsity level must be in [0, 1) ({what})", value)
        if self.schedule == "polynomial" and not 0.0 < self.power < math.inf:  # False for NaN
            raise ConfigError(f"{json_path}.params.power", "the polynomial schedule's exponent must be a finite "
                              "number > 0", self.power)
        if self.update_per_optimizer_step and self.schedule != "polynomial":
            warnings.warn(f"{json_path}.params.update_per_optimizer_step applies to the polynomial schedule only; "
                          f"the {self.schedule} schedule updates once per epoch", stacklevel=3)

    @property
    def initial_level(self) -> float:
        """The level set at creation."""
        return self.multistep_sparsity_levels[0] if self.schedule == "multistep" else self.sparsity_init

    @property
    def final_level(self) -> float:
        """The level the schedule ends at."""
        return self.multistep_sparsity_levels[-1] if self.schedule == "multistep" else self.sparsity_target


def make_sparsity_scheduler(target: SparsityLevelTarget, p: SparsityScheduleParams) -> SparsityScheduler:
    """The scheduler named by ``params.schedule``, driving ``target``.

    :raises ConfigError: for an unknown schedule.
    """
    if p.schedule == "polynomial":
        return PolynomialSparsityScheduler(
            target, p.sparsity_init, p.sparsity_target, p.sparsity_freeze_epoch, p.sparsity_target_epoch,
            p.power, p.concave, p.update_per_optimizer_step, p.steps_per_epoch,
        )
    if p.schedule == "exponential":
        return ExponentialSparsityScheduler(target, p.sparsity_init, p.sparsity_target, p.sparsity_freeze_epoch,
                                            p.sparsity_target_epoch)
    if p.schedule == "multistep":
        return MultiStepSparsityScheduler(target, p.sparsity_freeze_epoch, p.multistep_steps,
                                          p.multistep_sparsity_levels)
    if p.schedule == "adaptive":
        return AdaptiveSparsityScheduler(target, p.sparsity_init, p.sparsity_target, p.sparsity_freeze_epoch,
                                         p.patience, p.step, p.eps)
    raise ConfigError("params.schedule", f"unknown schedule {p.schedule!r}; allowed: polynomial, exponential, "
                      "multistep, adaptive", p.schedule)
