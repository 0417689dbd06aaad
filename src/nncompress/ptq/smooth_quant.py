"""SmoothQuant for post-training quantization: per-channel scales before quantized linear inputs.

Each linear layer reading an activation gets a :class:`ChannelScale` at its input, before the
input quantizer; the layers reading one tensor (a transformer's Q, K and V projections) share
one set of factors. During the statistics pass a ``ChannelScale`` passes its input through and
records each batch's per-channel minimum and maximum; :func:`smooth` then picks the factors
(:func:`~nncompress.functional.smoothing.smooth_quant_scales`), divides the inputs by them and
multiplies the weights' columns, and sets the input quantizers' ranges from the recorded
extremes (:func:`~nncompress.functional.smoothing.scaled_tensor_range`) without another pass.
Other readers of the tensor (a residual add) see it unscaled. Exported, a ``ChannelScale`` is
one ``Mul`` in front of the ``QuantizeLinear``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nncompress.errors import InitDataError
from nncompress.functional.smoothing import smooth_quant_scales
from nncompress.graph.capture import CapturedGraph, OpNode


class ChannelScale(nn.Module):
    """``x * factor`` along the last axis; passes ``x`` through while collecting, recording per-batch
    channel extremes if ``recording`` (one module per group records: its layers read one tensor).

    :param num_channels: size of the last axis.
    :param name: the op whose input it scales (for messages).
    """

    def __init__(self, num_channels: int, name: str) -> None:
        super().__init__()
        self.factor: torch.Tensor
        self.register_buffer("factor", torch.ones(num_channels))
        self.name = name
        self.collecting = False  # pass the input through (and record, if ``recording``)
        self.recording = False
        self.batch_min: list[torch.Tensor] = []
        self.batch_max: list[torch.Tensor] = []

    def extra_repr(self) -> str:
        return f"channels={self.factor.numel()}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``x`` (pass it through while collecting)."""
        if self.collecting:
            if not self.recording:
                return x
            flat = x.detach().reshape(-1, x.shape[-1])
            lo, hi = torch.aminmax(flat, dim=0)
            if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
                raise InitDataError(
                    f"calibration: the input of {self.name} contains NaN or inf; check the data"
                )
            self.batch_min.append(lo.float())
            self.batch_max.append(hi.float())
            return x
        return x * self.factor


@dataclass
class SmoothGroup:
    """Linear layers reading one tensor, smoothed with one set of factors.

    :param producer: the op producing the tensor.
    :param ops: the linear ops.
    :param weights: their weight parameters' qualified names.
    :param scales: their :class:`ChannelScale` modules, one per op.
    """

    producer: str
    ops: list[str]
    weights: list[str]
    scales: list[ChannelScale]


def smoothable_linears(graph: CapturedGraph, quantized_inputs: set[str]) -> dict[str, list[OpNode]]:
    """Producer -> the ``linear`` ops reading its output whose input is quantized.

    :param graph: the captured graph.
    :param quantized_inputs: ops whose activation input gets a quantizer.
    """
    groups: dict[str, list[OpNode]] = {}
    for node in graph:
        w = node.weight
        if node.op != "linear" or w is None or w.port != 1 or node.name not in quantized_inputs:
            continue
        producer = node.inputs[0] if node.inputs else None
        if producer is None or producer.startswith("@") or len(w.shape) != 2:
            continue
        groups.setdefault(producer, []).append(node)
    return groups


def smooth(model: nn.Module, group: SmoothGroup, alpha: float) -> torch.Tensor:
    """Pick the group's factors from the recorded statistics and apply them.

    Sets every ``ChannelScale.factor`` to ``1 / s`` and multiplies column ``j`` of each weight
    by ``s_j``; the model's output is unchanged up to rounding.

    :return: ``(C,)`` the factors ``1 / s`` now applied to the input.
    """
    first = group.scales[0]
    act = torch.stack(first.batch_max).amax(0).abs().maximum(torch.stack(first.batch_min).amin(0).abs())
    params = [model.get_parameter(w) for w in group.weights]
    with torch.no_grad():
        w_absmax = torch.stack([p.detach().abs().amax(dim=0).float() for p in params]).amax(0)
        s = smooth_quant_scales(act, w_absmax, alpha)
        for p in params:
            p.mul_(s.to(p.dtype))
        inv = (1.0 / s).to(first.factor.dtype)
        for cs in group.scales:
            cs.factor.copy_(inv)
    return inv
