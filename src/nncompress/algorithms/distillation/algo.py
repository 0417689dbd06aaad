"""NNCF 2.x ``knowledge_distillation``: a loss between the compressed model and its frozen original.

Config section (NNCF 2.x keys; defaults of NNCF's ``schemata/defaults.py``)::

    {"algorithm": "knowledge_distillation", "type": "softmax", "scale": 1.0, "temperature": 1.0}

Combined with other algorithms in one ``compression`` list, the teacher is the model as it was
given to ``create_compressed_model`` (before any insertion), and ``ctrl.loss()`` is the sum of every
algorithm's loss. See ``docs/distillation.md``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.api.compression import CompressionStage, StripFormat
from nncompress.api.statistics import CompressionStatistics, format_table
from nncompress.config import AlgorithmSection
from nncompress.errors import CompressionStateError, ConfigError, InvalidArgumentError
from nncompress.graph.layout import Priority, TransformationLayout
from nncompress.torch.insertion import strip_runtime

from ..base import BaseBuilder, BaseController
from ..context import CompressionContext
from ..state_fields import state_list
from .loss import DEFAULT_SCALE, DEFAULT_TEMPERATURE, DistillationParams, KnowledgeDistillationLoss
from .teacher import TeacherRunner, attach, make_teacher, remove_teacher_hooks, teacher_fingerprint


def distillation_params(section: dict[str, Any], json_path: str) -> DistillationParams:
    """The typed parameters of a validated ``knowledge_distillation`` section.

    :param section: the section.
    :param json_path: where it is in the config, for messages.
    :return: the parameters.
    :raises ConfigError: ``temperature`` with type ``mse`` (NNCF 2.x refused it too), a negative
        ``scale`` or a ``temperature`` of 0.
    """
    kd_type = section["type"]
    if "temperature" in section and kd_type == "mse":
        raise ConfigError(
            f"{json_path}.temperature",
            "temperature applies to type 'softmax' only; remove it or use \"type\": \"softmax\"",
            section["temperature"],
        )
    scale = section.get("scale", DEFAULT_SCALE)
    if scale < 0:
        raise ConfigError(f"{json_path}.scale", f"scale must be >= 0, got {scale!r}", scale)
    temperature = section.get("temperature", DEFAULT_TEMPERATURE)
    if temperature <= 0:
        raise ConfigError(f"{json_path}.temperature", f"temperature must be > 0, got {temperature!r}", temperature)
    return DistillationParams(kd_type, float(scale), float(temperature))


@dataclass(frozen=True)
class DistillationStatistics:
    """Knowledge distillation settings and the loss of the last training forward.

    :param kd_type: ``softmax`` or ``mse``.
    :param scale: the loss multiplier.
    :param temperature: the softmax temperature (``None`` for mse).
    :param loss: the last loss value, ``None`` before a training forward with gradients.
    """

    kd_type: str
    scale: float
    temperature: float | None
    loss: float | None

    def to_str(self) -> str:
        """One table row."""
        loss = "-" if self.loss is None else self.loss
        temperature = "-" if self.temperature is None else self.temperature
        return format_table(
            ["type", "scale", "temperature", "last loss"],
            [[self.kd_type, self.scale, temperature, loss]],
            "Knowledge distillation",
        )

    def to_dict(self) -> dict[str, float]:
        """``{"loss": value}`` once there is a value (the container prefixes the algorithm name)."""
        return {} if self.loss is None else {"loss": self.loss}


class KnowledgeDistillationBuilder(BaseBuilder):
    """Copies the model as the teacher; inserts nothing into the student."""

    algorithm = "knowledge_distillation"
    priority = Priority.QUANTIZATION  # unused: the layout is empty

    def __init__(self, section: AlgorithmSection, context: CompressionContext) -> None:
        super().__init__(section, context)
        self.params = distillation_params(section.section, section.json_path)
        self._teacher: nn.Module | None = None

    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        # Every builder's layout is computed before the merged layout is applied, so the model
        # holds no compression module yet: the copy is the original model.
        self._teacher = make_teacher(model)
        return TransformationLayout()

    def build_controller(self, model: nn.Module) -> KnowledgeDistillationController:
        """:return: the controller; it starts running the teacher on training forwards."""
        teacher = self._teacher if self._teacher is not None else make_teacher(model)
        self._teacher = None
        return KnowledgeDistillationController(model, self, teacher)


class KnowledgeDistillationController(BaseController):
    """Holds the teacher and the loss; the stage is always FULLY_COMPRESSED (as NNCF 2.x).

    :param model: the compressed model (the student).
    :param builder: its builder.
    :param teacher: the frozen teacher.
    """

    def __init__(self, model: nn.Module, builder: KnowledgeDistillationBuilder, teacher: nn.Module) -> None:
        super().__init__(model, builder)
        self.params = builder.params
        self._kd_loss = KnowledgeDistillationLoss(self.params, self._student_device)
        self._loss = self._kd_loss
        self._runner = TeacherRunner(model, teacher, self._kd_loss.record, self._kd_loss.clear)
        attach(model, self._runner)

    def _student_device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (not part of the model; load weights into it if it should be another model)."""
        teacher = self._runner.teacher
        if teacher is None:
            raise InvalidArgumentError("this controller has no teacher")
        return teacher

    @property
    def compression_rate(self) -> float:
        """0: distillation removes nothing."""
        return 0.0

    @compression_rate.setter
    def compression_rate(self, value: float) -> None:
        raise InvalidArgumentError(f"knowledge_distillation has no compression rate to set (got {value!r})")

    @property
    def maximal_compression_rate(self) -> float:
        """1: distillation does not limit the rate of the algorithms it is combined with."""
        return 1.0

    def compression_stage(self) -> CompressionStage:
        """Always FULLY_COMPRESSED, as NNCF 2.x."""
        return CompressionStage.FULLY_COMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """The settings and the last loss value."""
        value = self._kd_loss.last_value
        stats = CompressionStatistics()
        p = self.params
        stats.register(self.name, DistillationStatistics(
            p.kd_type, p.scale, p.temperature if p.kd_type == "softmax" else None,
            None if value is None else float(value.detach()),
        ))
        return stats

    # -- state: the teacher is not saved, only a fingerprint to recognise it on resume -------------

    def _extra_state(self) -> dict[str, Any]:
        return {"teacher_fingerprint": teacher_fingerprint(self.teacher)}

    def _check_extra_state(self, state: Mapping[str, Any], where: str) -> None:
        if "teacher_fingerprint" not in state:  # states written before the field existed
            return
        values = state_list(state, "teacher_fingerprint", where, length=2)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise CompressionStateError(f"{where}.teacher_fingerprint: expected two finite numbers, got {values!r}")

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("teacher_fingerprint")
        now = teacher_fingerprint(self.teacher)
        if saved is not None and not all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6) for a, b in zip(saved, now)):
            warnings.warn(
                "knowledge_distillation: the teacher (a copy of the model given to create_compressed_model) "
                f"has weights that differ from the teacher's when the state was saved (fingerprint {now} vs "
                f"{saved}): the teacher is not in the checkpoint, so pass the original pretrained model when "
                "resuming, or load its weights into ctrl.teacher; otherwise the student is distilled towards "
                "these weights",
                stacklevel=2,
            )

    def strip_model(
        self, model: nn.Module, do_copy: bool = False, strip_format: StripFormat = StripFormat.NATIVE
    ) -> nn.Module:
        """Take the teacher's hook off the model (or a copy, which does not copy the teacher).

        Stripped in place, the model no longer runs the teacher and ``ctrl.loss()`` keeps its last value.
        """
        if do_copy:
            model = copy.deepcopy(model)
        remove_teacher_hooks(model)
        return strip_runtime(model, strip_format, groups={self.name})
