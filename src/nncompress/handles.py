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

import torch
from torch import nn

from nncompress.algorithms.distillation.teacher import remove_teacher_hooks
from nncompress.api.compression import CompressionAlgorithmController, StripFormat
from nncompress.errors import InvalidArgumentError
from nncompress.torch.export import opset_from_format
from nncompress.torch.insertion import strip_runtime
from nncompress.torch.runtime import get_runtime

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
    ctrl = _registered(model)
    if ctrl is None:
        raise InvalidArgumentError(
            "this model has no compression controller: pass the model returned by create_compressed_model or "
            "quantize (copies and stripped models do not keep it)"
        )
    return ctrl


def _registered(model: nn.Module) -> Controller | None:
    """The controller remembered with ``model``, if any."""
    rt = get_runtime(model)
    ref = rt.__dict__.get(_ATTR) if rt is not None else None
    return None if ref is None else ref.ctrl


def strip(
    model: nn.Module, do_copy: bool = True, strip_format: StripFormat = StripFormat.NATIVE
) -> nn.Module:
    """Turn every inserted module into its plain PyTorch form (see :class:`StripFormat`).

    A model returned by ``create_compressed_model`` or ``quantize`` is stripped by its controller,
    exactly as ``ctrl.strip()``: pruned channels are removed physically and a distillation
    teacher is dropped too. Any other model (a copy, which does not keep its controller) has its
    inserted modules baked or converted and the rest removed.

    :param model: a compressed model.
    :param do_copy: strip a deep copy and leave ``model`` as it is.
    :param strip_format: NATIVE (torch fake-quantize ops), DQ (int8 weights) or IN_PLACE.
    :return: the stripped model.
    """
    if not isinstance(strip_format, StripFormat):
        raise InvalidArgumentError(f"strip_format must be a StripFormat, got {strip_format!r}")
    ctrl = _registered(model)
    if ctrl is not None:
        return ctrl.strip_model(model, do_copy=do_copy, strip_format=strip_format)
    target = copy.deepcopy(model) if do_copy else model
    remove_teacher_hooks(target)
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

    A model from :func:`~nncompress.compress_weights` (no controller) is exported with its weights
    packed (``MatMulNBits``, see :func:`~nncompress.weight_compression.onnx_export.export_compressed_onnx`);
    it needs ``model_args``.
    """
    # imported here: weight_compression imports ptq, which imports this module
    from nncompress.weight_compression.modules import CompressedEmbedding, CompressedLinear
    from nncompress.weight_compression.onnx_export import export_compressed_onnx

    compressed = any(isinstance(m, (CompressedLinear, CompressedEmbedding)) for m in model.modules())
    if _registered(model) is None and compressed:
        if model_args is None:
            raise InvalidArgumentError(
                "a weight-compressed model needs model_args to export: pass an example input, e.g. "
                "model_args=(input_ids,) or model_args=({'input_ids': ids, 'attention_mask': mask},)"
            )
        inputs = model_args[0] if len(model_args) == 1 and isinstance(model_args[0], dict) else tuple(model_args)
        export_compressed_onnx(model, inputs, save_path, opset_from_format(save_format),
                               input_names=input_names, output_names=output_names)
        return
    compression_controller(model).export_model(save_path, save_format, input_names, output_names, model_args)


def add_compression_parameters(optimizer: torch.optim.Optimizer, model: nn.Module, **group_options: Any) -> int:
    """Add the trainable parameters nncompress inserted into ``model`` to an existing optimizer.

    An optimizer made from ``model.parameters()`` *before* ``create_compressed_model`` (or
    ``quantize``) does not hold the quantizers' steps, so they never train; the quantization
    scheduler warns about that a few steps in. Create the optimizer afterwards, or call this::

        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        ctrl, model = nnc.create_compressed_model(model, config, init_data=loader)
        nnc.add_compression_parameters(optimizer, model)

    :param optimizer: any ``torch.optim`` optimizer.
    :param model: a compressed model.
    :param group_options: options of the new parameter group (e.g. ``lr=1e-4``); the
        optimizer's defaults otherwise.
    :return: how many parameters were added (0 when the optimizer had them all).
    :raises InvalidArgumentError: for a model with nothing inserted, or a non-optimizer.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidArgumentError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    rt = get_runtime(model)
    if rt is None:
        raise InvalidArgumentError("the model has no nncompress modules: pass the model create_compressed_model returned")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    new = [p for p in rt.parameters() if p.requires_grad and id(p) not in held]
    if new:
        optimizer.add_param_group({"params": new, **group_options})
    return len(new)
