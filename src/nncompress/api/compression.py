"""The training-time compression API: loss, scheduler, stage, controller and builder.

This module implements the interface specified for ``nncf.api.compression`` (OpenVINO NNCF 2.x)
under the name ``nncompress.api.compression``. It holds only abstract classes and enums and
imports nothing heavy: concrete algorithms live in :mod:`nncompress.algorithms`, the composite
versions in :mod:`nncompress.composite`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from nncompress.api.statistics import CompressionStatistics
    from nncompress.graph.layout import TransformationLayout

TModel = TypeVar("TModel")


class CompressionLoss(ABC):
    """The additional loss a compression algorithm adds to the task loss during training.

    For example, the L0-based (RB) sparsity algorithm counts the non-zero weights of the
    convolutional and fully-connected layers to build its loss. Use it as
    ``loss = criterion(output, target) + ctrl.loss()``.
    """

    @abstractmethod
    def calculate(self, *args: Any, **kwargs: Any) -> Any:
        """Calculate and return the compression loss value."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Load the compression loss state.

        :param state: the state of the loss, as returned by :meth:`get_state`.
        """

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Return the compression loss state (JSON-serialisable)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calculate and return the compression loss value; same as :meth:`calculate`."""
        return self.calculate(*args, **kwargs)


class CompressionScheduler(ABC):
    """Changes the compression hyper-parameters (e.g. the sparsity level) as training goes on.

    Call :meth:`step` at the beginning of each training step and :meth:`epoch_step` at the
    beginning of each epoch::

        for epoch in range(num_epochs):
            scheduler.epoch_step()
            for x, y in loader:
                scheduler.step()
                ...
    """

    @abstractmethod
    def step(self, next_step: int | None = None) -> None:
        """Prepare the compression method for training step ``next_step``.

        :param next_step: the global step index; the next one after the current if ``None``.
        """

    @abstractmethod
    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Prepare the compression method for training epoch ``next_epoch``.

        :param next_epoch: the epoch index; the next one after the current if ``None``.
        """

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Load the scheduler state without updating the compression method.

        :param state: output of :meth:`get_state`.
        """

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Return the scheduler state (JSON-serialisable)."""


class CompressionStage(IntEnum):
    """How far the compression of a model has progressed."""

    UNCOMPRESSED = 0
    PARTIALLY_COMPRESSED = 1
    FULLY_COMPRESSED = 2

    def __add__(self, other: object) -> CompressionStage:  # type: ignore[override]
        """Stage of a composite controller whose two algorithms are at ``self`` and ``other``.

        Equal stages stay as they are; any two different stages give PARTIALLY_COMPRESSED:

        * ``UNCOMPRESSED + UNCOMPRESSED == UNCOMPRESSED``
        * ``PARTIALLY_COMPRESSED + PARTIALLY_COMPRESSED == PARTIALLY_COMPRESSED``
        * ``FULLY_COMPRESSED + FULLY_COMPRESSED == FULLY_COMPRESSED``
        * ``UNCOMPRESSED + PARTIALLY_COMPRESSED == PARTIALLY_COMPRESSED``
        * ``UNCOMPRESSED + FULLY_COMPRESSED == PARTIALLY_COMPRESSED``
        * ``PARTIALLY_COMPRESSED + FULLY_COMPRESSED == PARTIALLY_COMPRESSED``

        :param other: the stage of the other algorithm.
        :return: the common stage of the two algorithms.
        """
        if not isinstance(other, CompressionStage):
            return NotImplemented
        if self == other:
            return self
        return CompressionStage.PARTIALLY_COMPRESSED

    def __radd__(self, other: object) -> CompressionStage:  # type: ignore[override]
        """``0 + stage`` is ``stage``, so that ``sum(stages)`` folds stages with the table above."""
        if type(other) is int and other == 0:
            return self
        return self.__add__(other)


class StripFormat(Enum):
    """The form compression operations take after :meth:`CompressionAlgorithmController.strip`.

    * ``NATIVE``: inserted operations become PyTorch-native ones (e.g. ``torch.fake_quantize_*``);
      what has no native form (sparsity masks) is baked into the weights.
    * ``DQ``: weights stored compressed (e.g. int8 plus scale) and decompressed at run time.
    * ``IN_PLACE``: everything is baked into the weights; no inserted operation remains and the
      model has exactly its original class and ``state_dict`` keys.
    """

    NATIVE = "native"
    DQ = "dq"
    IN_PLACE = "in_place"


class CompressionAlgorithmController(ABC, Generic[TModel]):
    """A handle to the compression-specific modifications made to a model.

    Hosts what the training loop uses: the compression scheduler and loss, statistics, state
    for checkpoints, strip and export.

    :param target_model: the model with the modifications made by the
        :class:`CompressionAlgorithmBuilder`.
    """

    def __init__(self, target_model: TModel) -> None:
        self._model = target_model

    @property
    def model(self) -> TModel:
        """The compressed model this controller is associated with."""
        return self._model

    @property
    @abstractmethod
    def loss(self) -> CompressionLoss:
        """The compression loss of this algorithm (combination)."""

    @property
    @abstractmethod
    def scheduler(self) -> CompressionScheduler:
        """The compression scheduler of this algorithm (combination)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Name of the algorithm; unique among controllers, it keys this controller's state."""

    @property
    @abstractmethod
    def compression_rate(self) -> float:
        """The compression rate in [0, 1] (e.g. the sparsity level, the share of filters pruned)."""

    @property
    @abstractmethod
    def maximal_compression_rate(self) -> float:
        """The maximal compression rate this controller supports."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Load the controller state.

        :param state: map of algorithm name to that algorithm's state attributes.
        """

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Return the controller state: a map of algorithm name to its state attributes."""

    @abstractmethod
    def get_compression_state(self) -> dict[str, Any]:
        """Return the compression state: builder and controller state.

        Pass it as ``compression_state`` to ``create_compressed_model`` to resume compression.

        :return: the compression state of the model.
        """

    @abstractmethod
    def compression_stage(self) -> CompressionStage:
        """Return the compression stage; use it to tell best checkpoints apart.

        :return: the compression stage of the target model.
        """

    @abstractmethod
    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """Return the statistics of the compression algorithm(s).

        :param quickly_collected_only: collect only statistics that are cheap to compute, e.g. to
            log them on every training step.
        """

    def strip_model(
        self, model: TModel, do_copy: bool = False, strip_format: StripFormat = StripFormat.NATIVE
    ) -> TModel:
        """Remove the auxiliary layers used only for training compression.

        :param model: the compressed model.
        :param do_copy: modify a copy of the model instead of the model itself.
        :param strip_format: the form compression takes after stripping.
        :return: the stripped model.
        """
        return copy.deepcopy(model) if do_copy else model

    def prepare_for_export(self) -> None:
        """Prepare the compressed model for export to a serialization format."""

    def strip(self, do_copy: bool = True, strip_format: StripFormat = StripFormat.NATIVE) -> TModel:
        """Remove the operations added for compression, leaving a deployable model.

        :param do_copy: return a stripped copy (default); if ``False``, strip the associated model
            in place and return it.
        :param strip_format: the form compression takes after stripping.
        :return: the stripped model.
        """
        return self.strip_model(self.model, do_copy, strip_format)

    @abstractmethod
    def export_model(
        self,
        save_path: str,
        save_format: str | None = None,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        model_args: tuple[Any, ...] | None = None,
    ) -> None:
        """Export the compressed model for deployment.

        :param save_path: where to write the model.
        :param save_format: ``"onnx"`` (default) or ``"onnx_<opset>"``.
        :param input_names: names of the model's input tensors.
        :param output_names: names of the model's output tensors.
        :param model_args: positional and keyword arguments for the forward during export, as
            ``(a, b, {"x": None, "y": y})``, ``(a, b, {})`` or ``({"x": None, "y": y},)``.
        """

    @abstractmethod
    def disable_scheduler(self) -> None:
        """Replace the scheduler by one that never changes the compression rate."""


class CompressionAlgorithmBuilder(ABC):
    """Decides which modifications a model needs for an algorithm and makes them."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Name of the algorithm being built; unique, it keys this builder's state."""

    @abstractmethod
    def apply_to(self, model: Any) -> Any:
        """Apply the algorithm's modifications to the model.

        :param model: the original, uncompressed model.
        :return: the model with the modifications needed for compression-aware training.
        """

    @abstractmethod
    def build_controller(self, model: Any) -> CompressionAlgorithmController[Any]:
        """Build the controller that handles the modules and hooks inserted into the model.

        :param model: the model returned by :meth:`apply_to`.
        :return: the algorithm's controller.
        """

    @abstractmethod
    def get_transformation_layout(self, model: Any) -> TransformationLayout:
        """Compute the model transformations this algorithm needs.

        :param model: the original, uncompressed model.
        :return: the transformation layout listing the modifications.
        """

    @abstractmethod
    def initialize(self, model: Any) -> None:
        """Initialise the model's compression parameters before training.

        :param model: the model returned by :meth:`apply_to`.
        """

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Initialise the builder from a saved state.

        :param state: the output of :meth:`get_state`.
        """

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Return the builder state as plain Python data (JSON-serialisable)."""


__all__ = [
    "CompressionAlgorithmBuilder",
    "CompressionAlgorithmController",
    "CompressionLoss",
    "CompressionScheduler",
    "CompressionStage",
    "StripFormat",
]
