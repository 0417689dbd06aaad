"""The filter-pruning mask module and the layout that puts one on every parameter of a pruned group.

A group (:class:`~nncompress.graph.channel_groups.ChannelGroup`) has one keep mask over its
channels. It is applied, as NNCF 2.x's ``FilterPruningMask`` does, by multiplying at WEIGHT
target points:

- every "output" slot: the producer's weight along its output dim (0; 1 for transposed
  convolutions) and its bias;
- every "channelwise" slot: depthwise convolution weight (dim 0) and bias, normalisation weight
  and bias; BatchNorm only with ``prune_batch_norms`` (NNCF's default, true).

Zeroed output channels then give exactly what the physically smaller model computes (the
defining property of the channel groups), so strip only has to cut them out. A parameter shared
by several groups (a BatchNorm after ``torch.cat``) gets one mask module holding each group's
slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nncompress.api.compression import StripFormat
from nncompress.graph.capture import CapturedGraph
from nncompress.graph.channel_groups import ChannelGroup, ChannelSlot
from nncompress.graph.layout import InsertionCommand, Priority, TargetPoint, TargetType, TransformationLayout


class FilterPruningMask(nn.Module):
    """Multiplies a parameter by a 0/1 mask along one dimension each time an op reads it.

    The mask is a 1-D buffer (saved in ``state_dict``) of the parameter's size along ``dim``;
    the parameter keeps its values, so a filter pruned at one level can come back at a lower one.

    :param param: the parameter (for size, dtype and device).
    :param dim: the masked dimension.
    :param zero_grad: ``True`` (NNCF's default): masked entries get zero gradient (plain product);
        ``False``: the gradient passes the mask unchanged (straight-through), so pruned filters
        keep learning while their output stays zero.
    """

    def __init__(self, param: torch.Tensor, dim: int, zero_grad: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.zero_pruned_grad = zero_grad
        self.register_buffer("mask", torch.ones(param.shape[dim], dtype=param.dtype, device=param.device))
        self.mask: torch.Tensor

    def _shaped(self, ndim: int) -> torch.Tensor:
        shape = [1] * ndim
        shape[self.dim] = -1
        return self.mask.view(shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """:return: ``weight * mask`` (broadcast along ``dim``)."""
        mask = self._shaped(weight.dim())
        out = weight * mask
        if not self.zero_pruned_grad:  # value weight * mask, gradient of weight
            out = out + (weight - weight.detach()) * (1 - mask)
        return out

    def bake_(self, weight: torch.Tensor, strip_format: StripFormat) -> bool:
        """Zero the masked entries of the parameter in place; the mask is then not needed."""
        weight.data.mul_(self._shaped(weight.dim()))
        return True

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.mask.numel()}, zero_grad={self.zero_pruned_grad}"


@dataclass
class MaskPiece:
    """Where one group's channels sit in one mask module."""

    mask: FilterPruningMask
    start: int


@dataclass
class PrunedGroup:
    """A group the algorithm prunes, with what it needs at run time.

    :param group: the channel group.
    :param pieces: its slices of the mask modules (the first one is read back as the group's mask).
    :param importance: ``(parameter name, dim, start)`` of each weight whose filters rank it: the
        producers' weights and depthwise convolutions' weights (NNCF sums their importances).
    :param layers: the producer modules (for statistics).
    """

    group: ChannelGroup
    pieces: list[MaskPiece] = field(default_factory=list)
    importance: list[tuple[str, int, int]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    @property
    def index(self) -> int:
        """The group's index."""
        return self.group.index

    @property
    def channels(self) -> int:
        """Channels of the group."""
        return self.group.channels

    def keep(self) -> torch.Tensor:
        """The group's current keep mask (bool, ``[channels]``)."""
        piece = self.pieces[0]
        return piece.mask.mask[piece.start:piece.start + self.channels] > 0

    def set_keep(self, keep: torch.Tensor) -> None:
        """Write a keep mask (bool, ``[channels]``) into every piece."""
        with torch.no_grad():
            for piece in self.pieces:
                piece.mask.mask[piece.start:piece.start + self.channels] = keep.to(piece.mask.mask)


def _masked_params(slot: ChannelSlot, graph: CapturedGraph, model: nn.Module,
                   prune_batch_norms: bool) -> list[tuple[str, int]]:
    """``(parameter name, dim)`` of the parameters a slot's mask covers."""
    node = graph.nodes[slot.op]
    if slot.role == "input" or (slot.role == "channelwise" and node.op == "batch_norm" and not prune_batch_norms):
        return []
    module = model.get_submodule(slot.module)
    out = []
    for pname in ("weight", "bias"):
        if isinstance(module._parameters.get(pname), nn.Parameter):
            dim = 1 if (pname == "weight" and slot.role == "output" and node.op.startswith("conv_transpose")) else 0
            out.append((f"{slot.module}.{pname}" if slot.module else pname, dim))
    return out


def misfit_reason(group: ChannelGroup, model: nn.Module, graph: CapturedGraph) -> str:
    """Why the group's parameters cannot take a mask ("" if they can)."""
    for slot in group.slots:
        if slot.role == "input":
            continue
        if slot.repeat != 1:
            return f"{slot.module}: {slot.repeat} features per channel on a {slot.role} slot"
        for name, dim in _masked_params(slot, graph, model, True):
            size = model.get_parameter(name).shape
            if len(size) <= dim or size[dim] < slot.offset + group.channels:
                return f"{name} of shape {tuple(size)} does not hold channels {slot.offset}..{slot.offset + group.channels}"
    return ""


def mask_layout(groups: list[ChannelGroup], graph: CapturedGraph, model: nn.Module, algorithm: str,
                prune_batch_norms: bool, zero_grad: bool) -> tuple[TransformationLayout, list[PrunedGroup]]:
    """One mask module per masked parameter, and each group's pieces of them.

    :param groups: the groups to prune (each fits: see :func:`misfit_reason`).
    :param graph: the captured graph.
    :param model: the model.
    :param algorithm: the group name of the inserted modules.
    :param prune_batch_norms: mask BatchNorm parameters too.
    :param zero_grad: see :class:`FilterPruningMask`.
    :return: the layout and one :class:`PrunedGroup` per group, in order.
    """
    owner_only = graph.owner_only_weights()
    layout = TransformationLayout()
    modules: dict[str, FilterPruningMask] = {}
    pruned = []
    for group in groups:
        record = PrunedGroup(group)
        for slot in group.slots:
            node = graph.nodes[slot.op]
            for name, dim in _masked_params(slot, graph, model, prune_batch_norms):
                if name not in modules:
                    param = model.get_parameter(name)
                    modules[name] = FilterPruningMask(param.detach(), dim, zero_grad)
                    owner, _, pname = name.rpartition(".")
                    point = TargetPoint(TargetType.WEIGHT, owner, param=pname)
                    layout.register(InsertionCommand(point, modules[name], algorithm, Priority.PRUNING,
                                                     name in owner_only))
                record.pieces.append(MaskPiece(modules[name], slot.offset))
                is_depthwise = slot.role == "channelwise" and node.op.startswith("conv")
                if name.rpartition(".")[2] == "weight" and (slot.role == "output" or is_depthwise):
                    record.importance.append((name, dim, slot.offset))
            if slot.role == "output" and slot.module not in record.layers:
                record.layers.append(slot.module)
        pruned.append(record)
    return layout, pruned
