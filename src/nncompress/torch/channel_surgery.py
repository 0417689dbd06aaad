"""Physically remove pruned channels: smaller convs, BatchNorms and linears, same model class.

Each module a group touches has two axes: ``out`` (conv weight dim 0, conv_transpose weight
dim 1, linear weight dim 0, the bias, BatchNorm's weight, bias and running statistics) and
``in`` (conv weight dim 1, conv_transpose weight dim 0, linear weight dim 1). A slot's role
says which axis it uses (``output`` and ``channelwise``: ``out``; ``input``: ``in``), its offset
and repeat where along it the group's channels sit. :func:`remove_channels` builds one keep mask
per (module, axis) from every slot, checks everything, then slices the tensors and sets the
module attributes (``out_channels``, ``in_channels``, ``groups``, ``num_features``,
``in_features``, ``out_features``) so that the model still runs.

Example::

    groups = channel_groups(capture(model, (x,)), model)
    keep = {g.index: importance[g.index] > threshold for g in groups if g.prunable}
    remove_channels(model, groups, keep)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from nncompress.errors import InvalidArgumentError
from nncompress.graph.channel_groups import ChannelGroup, ChannelSlot
from nncompress.torch.runtime import get_runtime

Axis = tuple[str, str]  # (module qualified name, "out" or "in")


def axis_tensors(module: nn.Module, axis: str) -> list[tuple[str, int]]:
    """The tensors (attribute names) of a module that an axis runs along, with their dim.

    :param module: a conv, conv_transpose, linear or BatchNorm module.
    :param axis: ``"out"`` or ``"in"``.
    :return: ``(name, dim)`` pairs, parameters and buffers that are not ``None``.
    :raises InvalidArgumentError: for any other module type.
    """
    if isinstance(module, _ConvNd):
        wdim = (1 if module.transposed else 0) if axis == "out" else (0 if module.transposed else 1)
        names = [("weight", wdim)] + ([("bias", 0)] if axis == "out" else [])
    elif isinstance(module, nn.Linear):
        names = [("weight", 0), ("bias", 0)] if axis == "out" else [("weight", 1)]
    elif isinstance(module, _BatchNorm) and axis == "out":
        names = [("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)]
    else:
        raise InvalidArgumentError(f"{type(module).__name__} has no {axis!r} channel axis nncompress can slice")
    return [(n, d) for n, d in names if getattr(module, n, None) is not None]


def _axis_size(module: nn.Module, axis: str) -> int:
    name, dim = axis_tensors(module, axis)[0]
    tensor = getattr(module, name)
    assert isinstance(tensor, torch.Tensor)  # axis_tensors keeps tensors only
    return int(tensor.shape[dim])


def _group_label(group: ChannelGroup) -> str:
    producers = ", ".join(s.module for s in group.producers) or "no producer"
    return f"group {group.index} ({producers})"


def _check_keep(groups: list[ChannelGroup], keep: Mapping[int, torch.Tensor]) -> dict[int, ChannelGroup]:
    by_index = {g.index: g for g in groups}
    for index, mask in keep.items():
        group = by_index.get(index) if isinstance(index, int) else None
        if group is None:
            raise InvalidArgumentError(f"keep names group {index!r}, which is not one of the groups given "
                                       f"(indices {sorted(by_index)})")
        label = _group_label(group)
        if not group.prunable:
            raise InvalidArgumentError(f"keep names {label}, which is not prunable: {group.reason}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (group.channels,):
            got = f"{mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise InvalidArgumentError(f"keep[{index}] for {label} must be a bool tensor of shape "
                                       f"({group.channels},), got a {got}")
        if not bool(mask.any()):
            raise InvalidArgumentError(f"keep[{index}] for {label} removes all {group.channels} channels; "
                                       "at least one must be kept")
    return by_index


def _slot_axis(slot: ChannelSlot) -> str:
    return "in" if slot.role == "input" else "out"


def _plan(model: nn.Module, groups: dict[int, ChannelGroup], keep: Mapping[int, torch.Tensor]) -> dict[Axis, torch.Tensor]:
    """One keep mask per (module, axis) touched, checked against the model's shapes."""
    masks: dict[Axis, torch.Tensor] = {}
    for index, mask in keep.items():
        group = groups[index]
        removed = (~mask.detach().cpu()).nonzero().flatten().tolist()
        for slot in group.slots:
            try:
                module = model.get_submodule(slot.module)
                axis = _slot_axis(slot)
                size = _axis_size(module, axis)
            except (AttributeError, InvalidArgumentError) as exc:
                raise InvalidArgumentError(f"{_group_label(group)}: slot {slot.module!r} ({slot.role}) does not fit "
                                           f"this model: {exc}") from exc
            if slot.offset + group.channels * slot.repeat > size:
                raise InvalidArgumentError(f"{_group_label(group)}: slot {slot.module!r} ({slot.role}) needs "
                                           f"{slot.offset + group.channels * slot.repeat} features, the module has "
                                           f"{size}; were the groups found on another model?")
            full = masks.setdefault((slot.module, axis), torch.ones(size, dtype=torch.bool))
            for c in removed:
                start = slot.offset + c * slot.repeat
                full[start:start + slot.repeat] = False
    for (name, axis), full in masks.items():
        module = model.get_submodule(name)
        if isinstance(module, _ConvNd) and _is_depthwise(module) and axis == "out":
            mult = module.out_channels // module.in_channels
            if not bool((full.view(-1, mult) == full.view(-1, mult)[:, :1]).all()):
                raise InvalidArgumentError(f"depthwise conv {name}: the keep masks split its channel multiplier")
    return masks


def _is_depthwise(module: _ConvNd) -> bool:
    return not module.transposed and module.groups > 1 and module.groups == module.in_channels


def _slice(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    return tensor.index_select(dim, index.to(tensor.device)).clone()


def _slice_attr(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    if name in module._parameters:
        param = module._parameters[name]
        assert param is not None  # axis_tensors skips None
        param.data = _slice(param.data, dim, index)
        if param.grad is not None:
            param.grad = _slice(param.grad, dim, index)
    else:
        module._buffers[name] = _slice(module._buffers[name], dim, index)  # type: ignore[arg-type]


def _slice_inserted(model: nn.Module, qualified: str, ndim: int, dim: int, size: int, index: torch.Tensor) -> None:
    """Slice the runtime's modules at a weight point along the weight's sliced dim.

    A tensor with the weight's number of dims (a full mask, a ``[C, 1, 1, 1]`` scale) is sliced
    on ``dim`` where it has ``size`` there. A 1-D tensor (a per-channel scale, a filter mask)
    runs along the dim its module names in ``axis``, ``dim`` or ``channel_axis`` (0 if none).
    """
    rt = get_runtime(model)
    if rt is None:
        return
    for entry in rt.weight_points.get(qualified, []):
        for sub in rt.module_at(entry).modules():
            axis = next((a for a in (getattr(sub, n, None) for n in ("axis", "dim", "channel_axis"))
                         if isinstance(a, int) and not isinstance(a, bool)), 0)
            for name, t in [*sub._parameters.items(), *sub._buffers.items()]:
                if t is None or t.dim() == 0:
                    continue
                if t.dim() == ndim and t.shape[dim] == size:
                    _slice_attr(sub, name, dim, index)
                elif t.dim() == 1 < ndim and axis % ndim == dim and t.shape[0] == size:
                    _slice_attr(sub, name, 0, index)


def _update_attributes(module: nn.Module, old_depthwise: bool, mult: int) -> None:
    if isinstance(module, _ConvNd):
        w = module.weight
        if module.transposed:
            module.in_channels, module.out_channels = w.shape[0], w.shape[1] * module.groups
        elif old_depthwise:
            module.out_channels = w.shape[0]
            module.in_channels = module.groups = w.shape[0] // mult
        else:
            module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, _BatchNorm):
        ref = module.running_mean if module.running_mean is not None else module.weight
        module.num_features = int(ref.shape[0])


def remove_channels(model: nn.Module, groups: list[ChannelGroup], keep: Mapping[int, torch.Tensor]) -> None:
    """Physically remove channels in place.

    Slices every slot's parameters and buffers and updates the module attributes so the model
    stays the same class and runs. Modules nncompress inserted at a sliced weight (the model's
    runtime: sparsity masks, per-channel quantizer scales, pruning masks) are sliced along the
    same dim wherever one of their tensors has the parameter's size on that dim. Everything is
    checked before anything changes. Optimizers hold the old tensors' shapes: build a new one.

    :param model: the model the groups were found on.
    :param groups: its groups (:func:`nncompress.graph.channel_groups.channel_groups`).
    :param keep: group index -> bool tensor of shape ``[channels]`` (``True``: keep); groups
        not named keep all their channels.
    :raises InvalidArgumentError: for an unknown or unprunable group, a mask of the wrong shape
        or dtype, a mask removing every channel, or slots that do not fit the model; the model
        is then unchanged.
    """
    masks = _plan(model, _check_keep(groups, keep), keep)
    with torch.no_grad():
        for (name, axis), full in masks.items():
            if bool(full.all()):
                continue
            module = model.get_submodule(name)
            depthwise = isinstance(module, _ConvNd) and _is_depthwise(module)
            mult = module.out_channels // module.in_channels if isinstance(module, _ConvNd) and depthwise else 1
            index = full.nonzero().flatten()
            for attr, dim in axis_tensors(module, axis):
                tensor = getattr(module, attr)
                ndim, size = tensor.dim(), int(tensor.shape[dim])
                _slice_attr(module, attr, dim, index)
                _slice_inserted(model, f"{name}.{attr}", ndim, dim, size, index)
            _update_attributes(module, depthwise, mult)
