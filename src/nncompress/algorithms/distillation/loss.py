"""The knowledge-distillation loss: ``scale`` times the sum of per-output losses of the last forward."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.api.compression import CompressionLoss
from nncompress.errors import InvalidArgumentError
from nncompress.functional.distillation import mse_distillation_loss, softmax_distillation_loss

from .outputs import Path, distillation_pairs, path_text

KD_TYPES = ("mse", "softmax")
"""Values of ``type``."""

DEFAULT_SCALE = 1.0
"""NNCF 2.x default of ``scale``."""

DEFAULT_TEMPERATURE = 1.0
"""NNCF 2.x default of ``temperature`` (``softmax`` only)."""


@dataclass(frozen=True)
class DistillationParams:
    """A ``knowledge_distillation`` section, typed.

    :param kd_type: ``"softmax"`` or ``"mse"`` (``type`` in the JSON).
    :param scale: multiplier of the loss, a finite number ``>= 0``.
    :param temperature: ``softmax`` only: logits are divided by it; finite and ``> 0``.
    :raises InvalidArgumentError: for a value outside these.
    """

    kd_type: str
    scale: float = DEFAULT_SCALE
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if self.kd_type not in KD_TYPES:
            raise InvalidArgumentError(f"kd_type {self.kd_type!r} is not allowed; expected one of: {', '.join(KD_TYPES)}")
        if not (_is_number(self.scale) and self.scale >= 0):
            raise InvalidArgumentError(f"scale must be a finite number >= 0, got {self.scale!r}")
        if not (_is_number(self.temperature) and self.temperature > 0):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {self.temperature!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class KnowledgeDistillationLoss(nn.Module, CompressionLoss):
    """``ctrl.loss()`` of knowledge distillation: the loss of the last training forward.

    For each distilled output pair (see :mod:`~nncompress.algorithms.distillation.outputs`):
    ``scale * softmax_distillation_loss(s, t, temperature)`` or ``scale * mse_distillation_loss(s, t)``;
    the value is their sum. Before any training forward, and after a training forward without
    gradients, it is a zero scalar on the student's device. Eval-mode forwards leave it as it was
    (as NNCF 2.x). Calling the loss does not clear it.

    :param params: type, scale, temperature.
    :param device: gives the device of the zero loss (the student's).
    """

    def __init__(self, params: DistillationParams, device: Callable[[], torch.device]) -> None:
        super().__init__()
        self.params = params
        self._device = device
        self._value: torch.Tensor | None = None
        self._warned: set[Path] = set()

    @property
    def last_value(self) -> torch.Tensor | None:
        """The loss of the last training forward with gradients, ``None`` if there is none."""
        return self._value

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``scale`` times the loss of one output pair.

        :param student: the student's output tensor.
        :param teacher: the teacher's tensor of the same shape.
        :return: a scalar tensor.
        """
        p = self.params
        if p.kd_type == "softmax":
            return p.scale * softmax_distillation_loss(student, teacher, p.temperature)
        return p.scale * mse_distillation_loss(student, teacher)

    def record(self, student: list[tuple[Path, torch.Tensor]], teacher_output: Any) -> None:
        """Compute and keep the loss of one forward.

        :param student: the student's output tensors that require gradients, with their paths.
        :param teacher_output: what the teacher returned for the same inputs.
        :raises DistillationError: for outputs the loss cannot take (see ``distillation_pairs``).
        """
        self._value = None
        pairs, skipped = distillation_pairs(student, teacher_output, self.params.kd_type)
        new = [p for p in skipped if p not in self._warned]
        if new:
            self._warned.update(new)
            warnings.warn(
                f"knowledge_distillation type 'softmax' distils 2-D logits only; left out: "
                f"{', '.join(path_text(p) for p in new)} (as NNCF 2.x)",
                stacklevel=2,
            )
        total = self.pair_loss(pairs[0][1], pairs[0][2])
        for _, s, t in pairs[1:]:
            total = total + self.pair_loss(s, t)
        self._value = total

    def clear(self) -> None:
        """Forget the last loss (a training forward without gradients)."""
        self._value = None

    def calculate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """:return: the loss of the last training forward, or a zero scalar on the student's device."""
        if self._value is None:
            return torch.zeros((), device=self._device())
        return self._value

    forward = calculate

    def load_state(self, state: dict[str, Any]) -> None:
        """Nothing to load: the loss is recomputed at every forward."""

    def get_state(self) -> dict[str, Any]:
        """:return: an empty state (as NNCF 2.x)."""
        return {}
