"""Fold BatchNorm layers into the convolutions before them, for export.

For a BatchNorm in inference mode directly after a convolution (and the conv's only consumer),
with ``f = gamma / sqrt(running_var + eps)`` per output channel::

    W' = W * f        b' = (b - running_mean) * f + beta

and the BatchNorm becomes ``nn.Identity``. onnxruntime only fuses quantized convolutions into
QLinearConv when no BatchNorm sits between the DequantizeLinear nodes and the next
QuantizeLinear, so the quantization export folds first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nncompress.graph.capture import CapturedGraph

_FOLDABLE = frozenset({"conv1d", "conv2d", "conv3d"})


@dataclass(frozen=True)
class FoldedPair:
    """A conv and the BatchNorm folded into it (module and op names), with the per-channel factor
    applied to the weight. After folding the BatchNorm op no longer runs: whatever was inserted
    after it belongs after the conv op."""

    conv: str
    batchnorm: str
    factor: torch.Tensor
    conv_op: str
    batchnorm_op: str


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, attr, module)


def fold_batchnorms(model: nn.Module, graph: CapturedGraph) -> list[FoldedPair]:
    """Fold every foldable conv -> BatchNorm pair of ``graph`` into ``model`` (changed in place).

    A pair is folded when the BatchNorm module runs once per forward, reads the conv's output and
    nothing else reads it. Call on a copy meant for export: the BatchNorm modules are replaced.

    :param model: the model (normally a stripped copy).
    :param graph: its captured graph.
    :return: the folded pairs.
    """
    consumers = graph.consumers()
    bn_calls: dict[str, int] = {}
    for node in graph:
        if node.op == "batch_norm":
            bn_calls[node.module] = bn_calls.get(node.module, 0) + 1
    folded = []
    with torch.no_grad():
        for node in graph:
            producer = graph.nodes.get(node.inputs[0] or "") if node.op == "batch_norm" and node.inputs else None
            if producer is None or producer.op not in _FOLDABLE or producer.weight is None:
                continue
            if consumers.get(producer.name) != [(node.name, 0)] or bn_calls[node.module] != 1:
                continue
            conv = model.get_submodule(producer.weight.module)
            bn = model.get_submodule(node.module)
            if not isinstance(conv, nn.modules.conv._ConvNd) or not isinstance(bn, _BatchNorm):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            factor = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                factor = factor * bn.weight
            shift = -bn.running_mean * factor + (bn.bias if bn.bias is not None else 0)
            conv.weight.mul_(factor.view(-1, *([1] * (conv.weight.dim() - 1))))
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros_like(shift))
            conv.bias.copy_(conv.bias * factor + shift)
            _set_submodule(model, node.module, nn.Identity())
            folded.append(
                FoldedPair(producer.weight.module, node.module, factor.detach().clone(), producer.name, node.name)
            )
    return folded
