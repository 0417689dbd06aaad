"""Fast bias correction: remove each layer's mean output error caused by weight quantization.

During the statistics pass, a forward pre-hook on every corrected ``nn.Linear`` / ``nn.Conv*``
sums its float input per channel. Afterwards each layer's shift
``(W - Wq) m`` (:func:`~nncompress.functional.smoothing.bias_shift`, ``m`` the mean input)
is added to its bias; a convolution without bias followed by a BatchNorm gets it through the
BatchNorm's ``running_mean`` instead (``BN(y + d)`` uses ``y - (mean - d)``), which export then
folds into the convolution's bias. No extra pass over the data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.functional.smoothing import bias_shift
from nncompress.graph.capture import CapturedGraph

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class BiasTarget:
    """One layer to correct and where its shift goes.

    :param op: the op name.
    :param module: the layer's qualified name.
    :param batchnorm: qualified name of the BatchNorm taking the shift, or ``None`` for the bias.
    """

    op: str
    module: str
    batchnorm: str | None = None
    total: torch.Tensor | None = field(default=None, repr=False)  # (in,) float64 sum of inputs
    count: int = 0

    def hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook: add the input's per-channel sum."""
        x = args[0].detach()
        channel = x.dim() - 1 if isinstance(module, nn.Linear) else 1  # (..., in) or (N, C, *spatial)
        s = x.sum(dim=[d for d in range(x.dim()) if d != channel], dtype=torch.float64)
        self.total = s if self.total is None else self.total + s
        self.count += x.numel() // x.shape[channel]


def bias_targets(model: nn.Module, graph: CapturedGraph, quantized_weights: set[str]) -> list[BiasTarget]:
    """Layers whose quantized weight makes a correctable mean error.

    A layer qualifies when it is an ``nn.Linear`` / ``nn.ConvNd`` (not transposed) called once
    per forward, its weight is quantized, and it has a bias or its only consumer is a BatchNorm.
    """
    calls: dict[str, int] = {}
    for node in graph:
        calls[node.module] = calls.get(node.module, 0) + 1
    consumers = graph.consumers()
    out = []
    for node in graph.weighted_nodes():
        w = node.weight
        if w is None or w.qualified_name not in quantized_weights or calls.get(node.module) != 1:
            continue
        layer = model.get_submodule(node.module)
        if not isinstance(layer, _LAYERS) or w.qualified_name != f"{node.module}.weight".lstrip("."):
            continue
        if layer.bias is not None:
            out.append(BiasTarget(node.name, node.module))
            continue
        readers = consumers.get(node.name, [])
        if len(readers) == 1 and graph.nodes[readers[0][0]].op == "batch_norm":
            bn = model.get_submodule(graph.nodes[readers[0][0]].module)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
                out.append(BiasTarget(node.name, node.module, graph.nodes[readers[0][0]].module))
    return out


def layer_weight(model: nn.Module, target: BiasTarget) -> torch.Tensor:
    """The weight of the target's layer."""
    layer = model.get_submodule(target.module)
    assert isinstance(layer, _LAYERS)  # bias_targets chose it
    return layer.weight


def apply_shift(
    model: nn.Module, target: BiasTarget, quantized_weight: torch.Tensor, input_factor: torch.Tensor | None
) -> torch.Tensor | None:
    """Add the layer's shift to its bias (or subtract it from the BatchNorm's running mean).

    :param quantized_weight: the layer's weight on its quantization grid.
    :param input_factor: ``(in,)`` factors applied to the input before the layer (SmoothQuant).
    :return: the shift, ``None`` when the layer saw no data.
    """
    if target.total is None or target.count == 0:
        return None
    layer = model.get_submodule(target.module)
    assert isinstance(layer, _LAYERS)  # bias_targets chose it
    mean = target.total / target.count
    if input_factor is not None:
        mean = mean * input_factor.double()
    groups = int(getattr(layer, "groups", 1))
    with torch.no_grad():
        shift = bias_shift(layer.weight.detach(), quantized_weight, mean, groups)
        if target.batchnorm is None:
            assert layer.bias is not None  # bias_targets chose it for its bias
            layer.bias.add_(shift.to(layer.bias.dtype))
        else:
            bn = model.get_submodule(target.batchnorm)
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None  # checked
            bn.running_mean.sub_(shift.to(bn.running_mean.dtype))
    return shift
