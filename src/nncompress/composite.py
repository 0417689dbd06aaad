"""Composite loss, scheduler, controller and builder: several algorithms as one.

* loss: the sum of the children's losses;
* scheduler: steps every child;
* controller: merged state, stage folded with ``CompressionStage.__add__``, minimum of the
  children's maximal rates, strip by each child in turn on one copy;
* builder: the children's layouts merged and applied once, in priority order.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import reduce
from typing import Any

from torch import nn

from nncompress.algorithms.base import BaseBuilder, BaseController, export_compressed
from nncompress.algorithms.selection import CaptureReport
from nncompress.algorithms.state_fields import STATE_FORMAT_VERSION, check_loadable, state_list, state_mapping
from nncompress.api.compression import (
    CompressionAlgorithmBuilder,
    CompressionAlgorithmController,
    CompressionLoss,
    CompressionScheduler,
    CompressionStage,
    StripFormat,
)
from nncompress.api.statistics import CompressionStatistics
from nncompress.errors import CompressionStateError, InvalidArgumentError
from nncompress.graph.layout import TransformationLayout
from nncompress.torch.insertion import apply_layout


def _child_states(state: Any, count: int, what: str) -> list[dict[str, Any]]:
    """The ``child_states`` list of a composite loss or scheduler state, checked."""
    children = state_list(state_mapping(state, what), "child_states", what, length=count)
    return [dict(state_mapping(s, f"{what}.child_states[{i}]")) for i, s in enumerate(children)]


class CompositeCompressionLoss(CompressionLoss):
    """The sum of several compression losses."""

    def __init__(self, children: list[CompressionLoss]) -> None:
        self.child_losses = children

    def calculate(self, *args: Any, **kwargs: Any) -> Any:
        """:return: the sum of the children's values."""
        values = [loss(*args, **kwargs) for loss in self.child_losses]
        return reduce(lambda a, b: a + b, values) if values else 0.0

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Check every child's state, changing nothing.

        :raises CompressionStateError: unless ``child_states`` is a list of one valid state per child.
        """
        for loss, s in zip(self.child_losses, _child_states(state, len(self.child_losses), "loss_state")):
            check_loadable(loss, s)

    def load_state(self, state: dict[str, Any]) -> None:
        """Load each child's state (``state["child_states"]``, in order), once all are checked.

        :raises CompressionStateError: unless ``child_states`` is a list of one valid state per
            child; no child is changed then.
        """
        self.check_state(state)
        for loss, s in zip(self.child_losses, _child_states(state, len(self.child_losses), "loss_state")):
            loss.load_state(s)

    def get_state(self) -> dict[str, Any]:
        """:return: ``{"child_states": [...]}``."""
        return {"child_states": [loss.get_state() for loss in self.child_losses]}


class CompositeCompressionScheduler(CompressionScheduler):
    """Steps every child scheduler."""

    def __init__(self, children: list[CompressionScheduler]) -> None:
        self.child_schedulers = children

    def step(self, next_step: int | None = None) -> None:
        """Step every child."""
        for s in self.child_schedulers:
            s.step(next_step)

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Epoch-step every child."""
        for s in self.child_schedulers:
            s.epoch_step(next_epoch)

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Check every child's state, changing nothing.

        :raises CompressionStateError: unless ``child_states`` is a list of one valid state per child.
        """
        for s, st in zip(self.child_schedulers, _child_states(state, len(self.child_schedulers), "scheduler_state")):
            check_loadable(s, st)

    def load_state(self, state: dict[str, Any]) -> None:
        """Load each child's state (``state["child_states"]``, in order), once all are checked.

        :raises CompressionStateError: unless ``child_states`` is a list of one valid state per
            child; no child is changed then.
        """
        self.check_state(state)
        for s, st in zip(self.child_schedulers, _child_states(state, len(self.child_schedulers), "scheduler_state")):
            s.load_state(st)

    def get_state(self) -> dict[str, Any]:
        """:return: ``{"child_states": [...]}``."""
        return {"child_states": [s.get_state() for s in self.child_schedulers]}


class CompositeCompressionAlgorithmController(CompressionAlgorithmController[nn.Module]):
    """Several algorithms' controllers acting as one."""

    def __init__(self, model: nn.Module, children: list[BaseController], context: Any) -> None:
        super().__init__(model)
        self.child_ctrls = children
        self._context = context

    @property
    def capture_report(self) -> CaptureReport:
        """Every child's capture report, merged (with an algorithm column)."""
        return CaptureReport.merge([c.capture_report for c in self.child_ctrls])

    @property
    def name(self) -> str:
        """The children's names joined by ``+`` (``"none"`` without children)."""
        return "+".join(c.name for c in self.child_ctrls) or "none"

    @property
    def loss(self) -> CompressionLoss:
        """The sum of the children's losses."""
        return CompositeCompressionLoss([c.loss for c in self.child_ctrls])

    @property
    def scheduler(self) -> CompressionScheduler:
        """Steps every child's scheduler."""
        return CompositeCompressionScheduler([c.scheduler for c in self.child_ctrls])

    @property
    def compression_rate(self) -> float:
        """The first child's rate (NNCF has no common definition for a combination); 0 without children.

        Setting it sets the first child's rate (e.g. the sparsity level of a sparsity algorithm).
        """
        return self.child_ctrls[0].compression_rate if self.child_ctrls else 0.0

    @compression_rate.setter
    def compression_rate(self, value: float) -> None:
        if not self.child_ctrls:
            raise InvalidArgumentError(f"no algorithm to set the compression rate of (got {value!r})")
        self.child_ctrls[0].compression_rate = value  # type: ignore[misc]

    @property
    def maximal_compression_rate(self) -> float:
        """The smallest of the children's maximal rates."""
        return min((c.maximal_compression_rate for c in self.child_ctrls), default=0.0)

    def compression_stage(self) -> CompressionStage:
        """The children's stages folded with ``CompressionStage.__add__``."""
        stages = [c.compression_stage() for c in self.child_ctrls]
        return reduce(lambda a, b: a + b, stages) if stages else CompressionStage.UNCOMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """Every child's statistics in one container."""
        merged = CompressionStatistics()
        for c in self.child_ctrls:
            for name, stats in c.statistics(quickly_collected_only):
                merged.register(name, stats)
        return merged

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Check every child's entry of a ``ctrl_state``, changing nothing.

        :raises CompressionStateError: naming the path of the first missing or bad field.
        """
        for c in self.child_ctrls:
            c.check_state(state)

    def load_state(self, state: dict[str, Any]) -> None:
        """Each child loads its own entry, once every child's entry is checked.

        :raises CompressionStateError: naming the first missing or bad field; no child is changed then.
        """
        self.check_state(state)
        for c in self.child_ctrls:
            c.load_state(state)

    def get_state(self) -> dict[str, Any]:
        """Merged ``{name: state}`` of all children."""
        merged: dict[str, Any] = {}
        for c in self.child_ctrls:
            merged.update(c.get_state())
        return merged

    def get_compression_state(self) -> dict[str, Any]:
        """Merged builder states and controller states, with the state format version."""
        builder_state: dict[str, Any] = {}
        for c in self.child_ctrls:
            builder_state.update(c.get_compression_state()["builder_state"])
        return {"format_version": STATE_FORMAT_VERSION, "builder_state": builder_state, "ctrl_state": self.get_state()}

    def disable_scheduler(self) -> None:
        """Disable every child's scheduler."""
        for c in self.child_ctrls:
            c.disable_scheduler()

    def prepare_for_export(self) -> None:
        """Let every child prepare."""
        for c in self.child_ctrls:
            c.prepare_for_export()

    def strip_model(
        self, model: nn.Module, do_copy: bool = False, strip_format: StripFormat = StripFormat.NATIVE
    ) -> nn.Module:
        """Copy once (if asked), then let each child strip its own modules in turn."""
        if do_copy:
            model = copy.deepcopy(model)
        for c in self.child_ctrls:
            model = c.strip_model(model, do_copy=False, strip_format=strip_format)
        return model

    @property
    def export_strip_format(self) -> StripFormat:
        """NATIVE if any child exports natively (e.g. quantization), else IN_PLACE."""
        formats = {c.export_strip_format for c in self.child_ctrls}
        return StripFormat.NATIVE if StripFormat.NATIVE in formats else StripFormat.IN_PLACE

    def export_model(
        self,
        save_path: str,
        save_format: str | None = None,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        model_args: tuple[Any, ...] | None = None,
    ) -> None:
        """Strip a copy with every child, then export it to ONNX."""
        export_compressed(self, save_path, save_format, input_names, output_names, model_args)


class CompositeCompressionAlgorithmBuilder(CompressionAlgorithmBuilder):
    """Builds several algorithms; their layouts are merged and applied once."""

    def __init__(self, children: list[BaseBuilder], context: Any) -> None:
        self.child_builders = children
        self._context = context

    @property
    def name(self) -> str:
        """The children's names joined by ``+``."""
        return "+".join(b.name for b in self.child_builders)

    def get_transformation_layout(self, model: nn.Module) -> TransformationLayout:
        """Every child's layout, merged."""
        layout = TransformationLayout()
        for b in self.child_builders:
            layout.merge(b.get_transformation_layout(model))
        return layout

    def apply_to(self, model: nn.Module) -> nn.Module:
        """Apply the merged layout once; on failure the model is unchanged."""
        apply_layout(model, self.get_transformation_layout(model))
        return model

    def build_controller(self, model: nn.Module) -> CompressionAlgorithmController[nn.Module]:
        """One controller per child; a composite one when there are several."""
        ctrls = [b.build_controller(model) for b in self.child_builders]
        if len(ctrls) == 1:
            return ctrls[0]
        return CompositeCompressionAlgorithmController(model, ctrls, self._context)  # type: ignore[arg-type]

    def initialize(self, model: nn.Module) -> None:
        """Initialise every child."""
        for b in self.child_builders:
            b.initialize(model)

    def get_state(self) -> dict[str, Any]:
        """``{name: state}`` of every child."""
        return {b.name: b.get_state() for b in self.child_builders}

    def load_state(self, state: dict[str, Any]) -> None:
        """Each child loads its entry.

        :raises CompressionStateError: if the state's algorithms differ from this config's.
        """
        state_mapping(state, "builder_state")
        names = sorted(b.name for b in self.child_builders)
        saved = sorted(map(str, state))
        if saved != names or not all(isinstance(k, str) for k in state):
            hint = ""
            if "magnitude_sparsity" in saved and "const_sparsity" in names:
                hint = (" To fine-tune a magnitude_sparsity checkpoint with const_sparsity (NNCF's workflow), create "
                        "the const_sparsity model without compression_state and load the checkpoint's state_dict: "
                        "its masks are taken over.")
            raise CompressionStateError(
                f"the compression_state was saved for algorithms {saved}, but the config has {names}.{hint}"
            )
        for b in self.child_builders:
            b.load_state(state[b.name])
