"""Model-level functions: find a compressed model's controller, strip it, export it.

``create_compressed_model`` and ``quantize`` remember the controller with the model (inside
its ``nncompress`` runtime module, as a reference that copies and pickles leave behind), so a
model from ``quantize`` can be exported or trained further without holding the controller::

    q = nnc.quantize(model, nnc.Dataset(loader, lambda b: b[0]))
    nnc.export_model(q, "model_int8.onnx")
    plain = nnc.strip(q)  # PyTorch-native fake quantization, no nncompress modules
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from nncompress.api.compression import CompressionAlgorithmController, StripFormat
from nncompress.errors import InvalidArgumentError
from nncompress.torch.runtime import get_runtime, strip_runtime

_ATTR = "_controller_ref"

Controller = CompressionAlgorithmController[nn.Module]


class _ControllerRef:
    """Holds the controller; copies and pickles of the model get an empty reference."""

    def __init__(self, ctrl: Controller | None) -> None:
        self.ctrl = ctrl

    def __deepcopy__(self, memo: dict[int, Any]) -> _ControllerRef:
        return _ControllerRef(None)

    def __reduce__(self) -> tuple[type, tuple[None]]:
        return _ControllerRef, (None,)


def register_controller(model: nn.Module, ctrl: Controller) -> None:
    """Remember ``ctrl`` as the controller of the compressed ``model``."""
    rt = get_runtime(model)
    if rt is not None:
        rt.__dict__[_ATTR] = _ControllerRef(ctrl)


def compression_controller(model: nn.Module) -> Controller:
    """The controller of a model returned by ``create_compressed_model`` or ``quantize``.

    Use it to continue with quantization-aware training (``ctrl.scheduler``, ``ctrl.loss``,
    ``ctrl.statistics()``) after post-training quantization.

    :raises InvalidArgumentError: for a model without one (not compressed, stripped, or a copy).
    """
    rt = get_runtime(model)
    ref = rt.__dict__.get(_ATTR) if rt is not None else None
    if ref is None or ref.ctrl is None:
        raise InvalidArgumentError(
            "this model has no compression controller: pass the model returned by create_compressed_model or "
            "quantize (copies and stripped models do not keep it)"
        )
    ctrl: Controller = ref.ctrl
    return ctrl


def strip(
    model: nn.Module, do_copy: bool = True, strip_format: StripFormat = StripFormat.NATIVE
) -> nn.Module:
    """Turn every inserted module into its plain PyTorch form (see :class:`StripFormat`).

    :param model: a compressed model.
    :param do_copy: strip a deep copy and leave ``model`` as it is.
    :param strip_format: NATIVE (torch fake-quantize ops), DQ (int8 weights) or IN_PLACE.
    :return: the stripped model.
    """
    if not isinstance(strip_format, StripFormat):
        raise InvalidArgumentError(f"strip_format must be a StripFormat, got {strip_format!r}")
    target = copy.deepcopy(model) if do_copy else model
    return strip_runtime(target, strip_format)


def export_model(
    model: nn.Module,
    save_path: str,
    model_args: tuple[Any, ...] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    save_format: str | None = None,
) -> None:
    """Export a compressed model to ONNX, as its controller's ``export_model`` does.

    BatchNorms are folded and quantizers become QuantizeLinear/DequantizeLinear; the file is
    written atomically. ``model_args`` defaults to the input the model was captured with.
    """
    compression_controller(model).export_model(save_path, save_format, input_names, output_names, model_args)
