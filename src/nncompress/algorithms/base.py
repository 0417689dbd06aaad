"""What every algorithm shares: the builder and controller bases, the zero loss, the schedulers.

An algorithm's builder derives from :class:`BaseBuilder` and its controller from
:class:`BaseController`, one level under the spec's abstract classes.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from nncompress.api.compression import (
    CompressionAlgorithmBuilder,
    CompressionAlgorithmController,
    CompressionLoss,
    CompressionScheduler,
    StripFormat,
)
from nncompress.config import AlgorithmSection
from nncompress.errors import CompressionStateError
from nncompress.graph.layout import Priority, TransformationLayout
from nncompress.torch.bn_adaptation import DEFAULT_BN_ADAPTATION_SAMPLES, adapt_batchnorm
from nncompress.torch.export import export_onnx, opset_from_format
from nncompress.torch.inputs import parse_model_args
from nncompress.torch.insertion import apply_layout, strip_runtime

from .context import CompressionContext
from .selection import CaptureReport
from .state_fields import (
    STATE_FORMAT_VERSION,
    check_loadable,
    state_field,
    state_int,
    state_list,
    state_mapping,
)


class ZeroCompressionLoss(nn.Module, CompressionLoss):
    """The loss of algorithms that add nothing to the task loss: always 0."""

    def calculate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """:return: a zero scalar tensor."""
        return torch.zeros(())

    forward = calculate

    def load_state(self, state: dict[str, Any]) -> None:
        """Nothing to load."""

    def get_state(self) -> dict[str, Any]:
        """:return: an empty state."""
        return {}


class BaseCompressionScheduler(CompressionScheduler):
    """Counts steps and epochs as NNCF did: both start at -1, so the first call moves to 0."""

    def __init__(self) -> None:
        self.current_step = -1
        self.current_epoch = -1

    def step(self, next_step: int | None = None) -> None:
        """Move to ``next_step`` (default: the next step)."""
        self.current_step = self.current_step + 1 if next_step is None else int(next_step)

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Move to ``next_epoch`` (default: the next epoch)."""
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else int(next_epoch)

    def get_state(self) -> dict[str, Any]:
        """:return: ``{"current_step": ..., "current_epoch": ...}``."""
        return {"current_step": self.current_step, "current_epoch": self.current_epoch}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the counters without touching the compression method.

        :raises CompressionStateError: unless both counters are integers ``>= -1``; nothing is
            changed then.
        """
        where = "scheduler_state"
        step = state_int(state, "current_step", where, minimum=-1)
        epoch = state_int(state, "current_epoch", where, minimum=-1)
        self.current_step, self.current_epoch = step, epoch


class StubScheduler(BaseCompressionScheduler):
    """A scheduler that counts but never changes the compression method."""


class BaseBuilder(CompressionAlgorithmBuilder):
    """Builds one algorithm from its config section.

    Subclasses set ``algorithm`` and ``priority`` and implement :meth:`_build_layout` and
    :meth:`build_controller`. The builder state is the config section (so that a state from
    another config is refused) plus what subclasses add in :meth:`_extra_state`.

    :param section: the validated config section.
    :param context: inputs, init data and the captured graph, shared with other builders.
    """

    algorithm: ClassVar[str]
    priority: ClassVar[Priority]
    bn_adaptation_by_default: ClassVar[bool] = False

    def __init__(self, section: AlgorithmSection, context: CompressionContext) -> None:
        self._section = section
        self._context = context
        self._loaded_state: dict[str, Any] | None = None
        self.report = CaptureReport(self.algorithm)

    @property
    def name(self) -> str:
        """The algorithm name, e.g. ``"magnitude_sparsity"``."""
        return self.algorithm

    @property
    def section(self) -> AlgorithmSection:
        """The config section this builder was made from."""
        return self._section

    def get_transformation_layout(self, model: nn.Module) -> TransformationLayout:
        """Capture the model (once per model) and compute this algorithm's insertions.

        :raises CompressionStateError: when resuming, if the state compressed other weights.
        """
        layout = self._build_layout(model)
        if self._loaded_state is not None:
            saved = self._loaded_state.get("compressed_ops")
            now = [r.op for r in self.report.compressed]
            if saved != now:
                missing = sorted(set(saved or []) ^ set(now))[:3]
                raise CompressionStateError(
                    f"{self._section.json_path}: the compression_state was saved for a different model: it "
                    f"compressed {len(saved or [])} ops, this model gives {len(now)} (differing, e.g.: {missing})"
                )
        return layout

    @abstractmethod
    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        """The layout for ``model``; use ``self._context.graph_for(model)``."""

    def apply_to(self, model: nn.Module) -> nn.Module:
        """Insert this algorithm's modules into the model; on failure the model is unchanged."""
        apply_layout(model, self.get_transformation_layout(model))
        return model

    def initialize(self, model: nn.Module) -> None:
        """Run the section's ``initializer.batchnorm_adaptation`` on ``init_data``, if configured.

        Algorithms with ``bn_adaptation_by_default`` (quantization, as in NNCF 2.x) also run it
        without the key, on :data:`DEFAULT_BN_ADAPTATION_SAMPLES`, whenever ``init_data`` is given;
        ``"num_bn_adaptation_samples": 0`` turns it off.
        """
        initializer = self._section.section.get("initializer", {})
        if "batchnorm_adaptation" in initializer:
            bn = initializer["batchnorm_adaptation"]
            samples = int(bn.get("num_bn_adaptation_samples", DEFAULT_BN_ADAPTATION_SAMPLES))
        elif self.bn_adaptation_by_default and self._context.init_data is not None:
            samples = DEFAULT_BN_ADAPTATION_SAMPLES
        else:
            return
        adapt_batchnorm(model, self._context.init_data, samples)

    def get_state(self) -> dict[str, Any]:
        """:return: the config section and algorithm-specific state (JSON-serialisable)."""
        return {
            "section": copy.deepcopy(self._section.section),
            "compressed_ops": [r.op for r in self.report.compressed],
            **self._extra_state(),
        }

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from a saved builder state of the same config section.

        :raises CompressionStateError: if the state was saved with a different section, or is
            not a builder state (``compressed_ops`` not a list of op names).
        """
        where = f"builder_state.{self.algorithm}"
        saved = state_field(state, "section", where)
        ops = state_list(state, "compressed_ops", where)
        if not all(isinstance(op, str) for op in ops):
            raise CompressionStateError(f"{where}.compressed_ops: expected a list of op names (strings), got {ops!r}")
        if saved != self._section.section:
            raise CompressionStateError(
                f"{self._section.json_path}: the compression_state was saved with a different "
                f"{self.algorithm} config: saved {saved!r}, now {self._section.section!r}. Resume with the "
                "config the checkpoint was trained with."
            )
        self._loaded_state = state


class BaseController(CompressionAlgorithmController[nn.Module]):
    """Controller of one algorithm: state, strip and export.

    :param model: the compressed model.
    :param builder: the builder that made it (its state goes into the compression state).
    """

    export_strip_format: ClassVar[StripFormat] = StripFormat.IN_PLACE

    def __init__(self, model: nn.Module, builder: BaseBuilder) -> None:
        super().__init__(model)
        self._builder_state = builder.get_state()
        self._context = builder._context
        self.capture_report = builder.report
        self._loss: CompressionLoss = ZeroCompressionLoss()
        self._scheduler: CompressionScheduler = StubScheduler()
        self._name = builder.name

    @property
    def name(self) -> str:
        """The algorithm name."""
        return self._name

    @property
    def loss(self) -> CompressionLoss:
        """The compression loss."""
        return self._loss

    @property
    def scheduler(self) -> CompressionScheduler:
        """The compression scheduler."""
        return self._scheduler

    def disable_scheduler(self) -> None:
        """Replace the scheduler with one that never changes the compression rate."""
        self._scheduler = StubScheduler()

    def get_state(self) -> dict[str, Any]:
        """:return: ``{name: {"scheduler_state", "loss_state", ...}}``."""
        state = {"scheduler_state": self.scheduler.get_state(), "loss_state": self.loss.get_state()}
        return {self.name: {**state, **self._extra_state()}}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore scheduler and loss state (the model's tensors come from its ``state_dict``).

        Every field is checked (:meth:`check_state`) before anything is assigned.

        :raises CompressionStateError: naming the first missing or bad field; nothing is changed then.
        """
        mine = self._checked_entry(state)
        self.scheduler.load_state(dict(mine["scheduler_state"]))
        self.loss.load_state(dict(mine["loss_state"]))
        self._load_extra_state(mine)

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Check this controller's entry of a ``ctrl_state`` as :meth:`load_state` reads it, changing nothing.

        :raises CompressionStateError: naming the path of the first missing or bad field.
        """
        self._checked_entry(state)

    def _checked_entry(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        state_mapping(state, "ctrl_state")
        if self.name not in state:
            raise CompressionStateError(
                f"ctrl_state has no entry for {self.name!r} (it has {sorted(map(str, state))}); "
                "it was saved with a different config"
            )
        where = f"ctrl_state.{self.name}"
        mine = state_mapping(state[self.name], where)
        scheduler_state = state_mapping(state_field(mine, "scheduler_state", where), f"{where}.scheduler_state")
        loss_state = state_mapping(state_field(mine, "loss_state", where), f"{where}.loss_state")
        try:
            check_loadable(self.scheduler, scheduler_state)
            check_loadable(self.loss, loss_state)
        except CompressionStateError as err:  # name the full path in the state
            raise CompressionStateError(f"{where}.{err}") from None
        self._check_extra_state(mine, where)
        return mine

    def _check_extra_state(self, state: Mapping[str, Any], where: str) -> None:
        """Raise :class:`CompressionStateError` for a bad field of :meth:`_extra_state` (nothing loaded yet)."""

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    def prepare_export_copy(self, model: nn.Module) -> None:
        """Last changes to a stripped copy before ONNX export (e.g. BatchNorm folding); none by default."""

    def get_compression_state(self) -> dict[str, Any]:
        """:return: ``{"format_version": 1, "builder_state": ..., "ctrl_state": ...}`` for
        ``create_compressed_model`` (see :data:`~nncompress.algorithms.state_fields.STATE_FORMAT_VERSION`)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "builder_state": {self.name: copy.deepcopy(self._builder_state)},
            "ctrl_state": self.get_state(),
        }

    def strip_model(
        self, model: nn.Module, do_copy: bool = False, strip_format: StripFormat = StripFormat.NATIVE
    ) -> nn.Module:
        """Bake or convert this algorithm's inserted modules and remove what is left over."""
        if do_copy:
            model = copy.deepcopy(model)
        return strip_runtime(model, strip_format, groups={self.name})

    def export_model(
        self,
        save_path: str,
        save_format: str | None = None,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        model_args: tuple[Any, ...] | None = None,
    ) -> None:
        """Strip a copy of the model and export it to ONNX (see the spec for ``model_args``)."""
        export_compressed(self, save_path, save_format, input_names, output_names, model_args)


def export_compressed(
    ctrl: CompressionAlgorithmController[nn.Module],
    save_path: str,
    save_format: str | None,
    input_names: list[str] | None,
    output_names: list[str] | None,
    model_args: tuple[Any, ...] | None,
) -> None:
    """Shared body of ``export_model`` for single and composite controllers."""
    opset = opset_from_format(save_format)
    ctrl.prepare_for_export()
    stripped = ctrl.strip(do_copy=True, strip_format=getattr(ctrl, "export_strip_format", StripFormat.IN_PLACE))
    for child in getattr(ctrl, "child_ctrls", [ctrl]):
        child.prepare_export_copy(stripped)
    inputs = parse_model_args(model_args) or ctrl._context.example_inputs  # type: ignore[attr-defined]
    export_onnx(stripped, inputs, save_path, opset, input_names, output_names)
