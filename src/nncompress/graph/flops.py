"""FLOPs and parameter counts of convs and linears, dense and with pruned channels.

The cost of an op at the captured shapes (batch included, as NNCF 2.x counted at its
``input_info`` shape) is ``2 x`` its multiply-accumulates:

* conv: ``prod(output shape) * (C_in / groups) * prod(kernel)``;
* conv_transpose: ``prod(input shape) * (C_out / groups) * prod(kernel)``;
* linear: ``prod(output shape) * in_features``.

Biases, BatchNorm and activations are not counted (NNCF 2.x's filter pruning did not count
them either). With ``kept[g]`` of a group's channels kept, an op's FLOPs and weight count scale
by the kept fraction of its input axis times that of its output axis; a depthwise conv's
channels are one axis, so it scales once.

Example::

    costs = layer_costs(graph, groups)
    ratio = total_flops(costs, {g.index: g.channels // 2 for g in groups if g.prunable}) / total_flops(costs)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from nncompress.graph import channel_rules as rules
from nncompress.graph.capture import CapturedGraph, OpNode
from nncompress.graph.channel_groups import ChannelGroup

SlotRef = tuple[int, int, int]  # (group index, group channels, features per channel)
COUNTED_OPS = rules.CONVS | rules.CONV_TRANSPOSES | {"linear"}


@dataclass(frozen=True)
class LayerCost:
    """Cost of one conv / conv_transpose / linear op.

    :param op: the captured op name.
    :param module: qualified name of the module owning its weight.
    :param flops: multiply-accumulates x 2 at the captured shapes, dense.
    :param params: parameter count of its weight (+ bias).
    :param in_group: index of the prunable group that is all of its input channels (``None``:
        no prunable group, a model input, or several groups side by side).
    :param out_group: index of the prunable group that is all of its output channels; a
        depthwise conv has ``in_group == out_group`` and its cost scales once, not twice.
    :param in_size: size of the weight's input axis (conv weight dim 1, linear weight dim 1).
    :param out_size: size of the weight's output axis (conv weight dim 0, linear weight dim 0).
    :param in_slots: prunable groups along the input axis: (group, channels, repeat).
    :param out_slots: prunable groups along the output axis (depthwise: its channel groups).
    :param weight_params: parameter count of the weight alone.
    """

    op: str
    module: str
    flops: int
    params: int
    in_group: int | None
    out_group: int | None
    in_size: int = 1
    out_size: int = 1
    in_slots: tuple[SlotRef, ...] = ()
    out_slots: tuple[SlotRef, ...] = ()
    weight_params: int = 0

    def kept_fractions(self, kept: Mapping[int, int] | None) -> tuple[int, int]:
        """Kept features along the input and output axes.

        :param kept: group index -> channels kept (missing: all).
        :return: ``(kept input features, kept output features)``.
        """
        kept = kept or {}

        def axis(size: int, slots: tuple[SlotRef, ...]) -> int:
            return size - sum((ch - kept.get(g, ch)) * rep for g, ch, rep in slots)

        return axis(self.in_size, self.in_slots), axis(self.out_size, self.out_slots)


def _whole(slots: tuple[SlotRef, ...], size: int) -> int | None:
    return slots[0][0] if len(slots) == 1 and slots[0][1] * slots[0][2] == size else None


def _cost(node: OpNode, in_shape: tuple[int, ...] | None) -> tuple[int, tuple[int, ...]]:
    """FLOPs of the op and its weight's shape."""
    read = node.weight
    assert read is not None  # layer_costs passes weighted ops only
    w, out = read.shape, node.output_shapes[0]
    if node.op in rules.CONV_TRANSPOSES:
        # each input element meets C_out/groups * prod(kernel) weights; an input of unknown
        # shape (a model input) is taken as the output's size over the stride
        src = in_shape if in_shape is not None else (out[0], w[0], *out[2:])
        macs = math.prod(src) * w[1] * math.prod(w[2:])
    elif node.op == "linear":
        macs = math.prod(out) * w[1]
    else:
        macs = math.prod(out) * w[1] * math.prod(w[2:])
    return 2 * macs, w


def layer_costs(graph: CapturedGraph, groups: list[ChannelGroup]) -> list[LayerCost]:
    """The cost of every conv, conv_transpose and linear op that reads a weight, in execution order.

    :param graph: the model's capture.
    :param groups: its channel groups; only prunable ones are linked to the costs.
    :return: one :class:`LayerCost` per op.
    """
    by_module: dict[tuple[str, str], list[SlotRef]] = {}
    channelwise: set[str] = set()  # depthwise convs among the modules (and BatchNorms)
    for g in groups:
        if g.prunable:
            for s in g.slots:
                axis = "in" if s.role == "input" else "out"
                by_module.setdefault((s.module, axis), []).append((g.index, g.channels, s.repeat))
                if s.role == "channelwise":
                    channelwise.add(s.module)
    costs = []
    for node in graph:
        read = node.weight
        if node.op not in COUNTED_OPS or read is None or read.port != 1:
            continue
        producer = node.inputs[0] if node.inputs else None
        src = graph.nodes.get(producer) if producer is not None else None
        in_shape = src.output_shapes[0] if src is not None and len(src.output_shapes) == 1 else None
        flops, w = _cost(node, in_shape)
        transpose = node.op in rules.CONV_TRANSPOSES
        in_size, out_size = (w[0], w[1]) if transpose else (w[1], w[0])
        bias = sum(math.prod(r.shape) for r in node.weights if r.param == "bias" and r.module == read.module)
        in_slots = tuple(by_module.get((read.module, "in"), ()))
        out_slots = tuple(by_module.get((read.module, "out"), ()))
        depthwise = read.module in channelwise
        out_group = _whole(out_slots, out_size)
        costs.append(LayerCost(node.name, read.module, flops, math.prod(w) + bias,
                               out_group if depthwise else _whole(in_slots, in_size), out_group,
                               in_size, out_size, in_slots, out_slots, math.prod(w)))
    return costs


def total_flops(costs: list[LayerCost], kept: Mapping[int, int] | None = None) -> int:
    """FLOPs with ``kept[group index]`` channels kept per group (missing: all kept).

    :param costs: :func:`layer_costs`'s list.
    :param kept: group index -> channels kept.
    :return: the sum over the ops of ``flops * kept_in / in_size * kept_out / out_size``.
    """
    total = 0
    for c in costs:
        k_in, k_out = c.kept_fractions(kept)
        total += c.flops * k_in * k_out // (c.in_size * c.out_size)
    return total


def total_params(costs: list[LayerCost], kept: Mapping[int, int] | None = None) -> int:
    """Weight and bias parameter count with ``kept[group index]`` channels kept per group.

    :param costs: :func:`layer_costs`'s list.
    :param kept: group index -> channels kept (missing: all kept).
    :return: the count; a module called by several ops is counted once.
    """
    total, seen = 0, set()
    for c in costs:
        if c.module in seen:
            continue
        seen.add(c.module)
        k_in, k_out = c.kept_fractions(kept)
        bias = c.params - c.weight_params
        total += c.weight_params * k_in * k_out // (c.in_size * c.out_size) + bias * k_out // c.out_size
    return total
