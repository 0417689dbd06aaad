"""What the builders of one ``create_compressed_model`` call share: inputs, data, the graph."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nncompress.errors import CaptureError, InputInfoError
from nncompress.graph.capture import CapturedGraph, capture
from nncompress.torch.inputs import ModelInputs
from nncompress.torch.runtime import expect_captured_ops, get_runtime


@dataclass
class CompressionContext:
    """Shared by the builders of one compressed model.

    :param example_inputs: ``(args, kwargs)`` for one forward (capture, default export input).
    :param inputs_source: where they came from, for error messages (``"input_info"`` or
        ``"example_input"``).
    :param init_data: batches for initialisers, if given.
    """

    example_inputs: ModelInputs
    inputs_source: str = "example_input"
    init_data: Iterable[Any] | None = None
    _graphs: dict[int, CapturedGraph] = field(default_factory=dict)

    def graph_for(self, model: nn.Module) -> CapturedGraph:
        """The captured graph of ``model`` (captured once, in eval mode, then reused by every builder).

        The graph is given to the model's runtime (installed now if need be), which checks each
        later forward of the model against its op sequence.

        :raises InputInfoError: if the model cannot run on inputs built from ``input_info``.
        :raises CaptureError: if the model fails during capture on a user-given example input.
        """
        graph = self._graphs.get(id(model))
        if graph is None:
            args, kwargs = self.example_inputs
            try:
                graph = capture(model, args, kwargs, skip=get_runtime(model))
            except CaptureError as exc:
                if self.inputs_source != "input_info":
                    raise
                shapes = [tuple(a.shape) for a in args if hasattr(a, "shape")]
                kw = {k: tuple(v.shape) for k, v in kwargs.items() if hasattr(v, "shape")}
                raise InputInfoError(
                    f"the model cannot run on inputs built from input_info (positional shapes {shapes}, "
                    f"keyword shapes {kw}); fix input_info (sample_size, type, keyword) or pass example_input. "
                    f"{exc}"
                ) from exc
            self._graphs[id(model)] = graph
            expect_captured_ops(model, graph)  # to the model's runtime, which checks every later forward
        return graph
