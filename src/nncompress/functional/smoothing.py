"""Post-training corrections: SmoothQuant scales and per-channel ranges, bias shifts.

Tensor in, tensor out; nothing here knows about modules.

**SmoothQuant** (Xiao et al., 2023) moves activation outliers into the weights. For a linear
layer ``y = x W^T`` and input channel ``j``, with ``a_j = max |x_j|`` over the calibration data
and ``w_j = max_i |W_ij|`` (over every layer reading ``x``)::

    s_j = a_j ** alpha / w_j ** (1 - alpha)        x'_j = x_j / s_j        W'_ij = W_ij * s_j

so ``x' W'^T = x W^T`` exactly, and ``alpha`` in ``[0, 1]`` sets how much of the range moves
(0: none, 1: all of it). Channels with ``a_j = 0`` or ``w_j = 0`` keep ``s_j = 1``.

**Ranges after a per-channel factor.** With ``lo_bj`` / ``hi_bj`` the minimum / maximum of
channel ``j`` in batch ``b`` and a positive factor ``f_j``, the per-tensor extremes of the
scaled batch are ``min_j lo_bj f_j`` and ``max_j hi_bj f_j``; ``min_max`` takes their extremes
over batches, ``mean_min_max`` their means, exactly as if the scaled tensors had been collected.

**Bias shift** (fast bias correction). A layer with quantized weight ``Wq`` has output error
``(W - Wq) x``, whose mean over the data is ``(W - Wq) m`` for the mean input ``m``: adding
that to the bias removes the mean error of every output channel. For a convolution the error
is summed over the kernel window; ``groups`` splits the channels as in ``conv2d``.
"""

from __future__ import annotations

import torch

from nncompress.errors import InvalidArgumentError

MIN_SMOOTH_SCALE = 1e-5


def smooth_quant_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-channel SmoothQuant factors ``s = a ** alpha / w ** (1 - alpha)``.

    >>> smooth_quant_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 2.0]), 0.5)
    tensor([4., 1., 1.])

    :param act_absmax: ``(C,)`` largest ``|x|`` per input channel.
    :param weight_absmax: ``(C,)`` largest ``|W|`` per input channel.
    :param alpha: migration strength in ``[0, 1]``.
    :return: ``(C,)`` float32 factors, at least ``1e-5``; 1 where either statistic is 0.
    :raises InvalidArgumentError: for ``alpha`` outside ``[0, 1]`` or mismatched shapes.
    """
    if not 0.0 <= alpha <= 1.0:  # NaN fails too
        raise InvalidArgumentError(f"smooth_quant_alpha must be in [0, 1], got {alpha!r}")
    if act_absmax.shape != weight_absmax.shape or act_absmax.dim() != 1:
        raise InvalidArgumentError(
            f"act_absmax and weight_absmax must be 1-d of one size, got {tuple(act_absmax.shape)} "
            f"and {tuple(weight_absmax.shape)}"
        )
    a, w = act_absmax.double().abs(), weight_absmax.double().abs()
    scales = a.pow(alpha) / w.pow(1.0 - alpha)
    scales = torch.where((a > 0) & (w > 0), scales, torch.ones_like(scales))
    return scales.clamp_min(MIN_SMOOTH_SCALE).float()


def scaled_tensor_range(
    batch_min: torch.Tensor, batch_max: torch.Tensor, factor: torch.Tensor, estimator: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor ``(min, max)`` of ``x * factor`` from per-batch, per-channel extremes of ``x``.

    >>> scaled_tensor_range(torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 8.0]]),
    ...                     torch.tensor([2.0, 0.5]), "min_max")
    (tensor(-2.), tensor(4.))

    :param batch_min: ``(B, C)`` minimum of each channel in each batch.
    :param batch_max: ``(B, C)`` maximum.
    :param factor: ``(C,)`` positive factors.
    :param estimator: ``min_max`` (extremes over batches) or ``mean_min_max`` (means).
    :return: 0-d ``(min, max)``.
    :raises InvalidArgumentError: for another estimator or a non-positive factor.
    """
    if not bool((factor > 0).all()):
        raise InvalidArgumentError("channel factors must be positive")
    lo = (batch_min * factor).amin(dim=1)  # (B,)
    hi = (batch_max * factor).amax(dim=1)
    if estimator == "min_max":
        return lo.min(), hi.max()
    if estimator == "mean_min_max":
        return lo.double().mean().to(lo.dtype), hi.double().mean().to(hi.dtype)
    raise InvalidArgumentError(f"estimator must be 'min_max' or 'mean_min_max', got {estimator!r}")


def bias_shift(
    weight: torch.Tensor, quantized_weight: torch.Tensor, mean_input: torch.Tensor, groups: int = 1
) -> torch.Tensor:
    """Mean output error of a layer from its weight quantization: ``(W - Wq) m`` per output channel.

    >>> bias_shift(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 1.5]]), torch.tensor([3.0, 2.0]))
    tensor([1.])

    :param weight: ``(out, in / groups, *kernel)`` float weight (a linear layer has no kernel axes).
    :param quantized_weight: the same on its quantization grid.
    :param mean_input: ``(in,)`` mean of each input channel over the data.
    :param groups: convolution groups.
    :return: ``(out,)`` what to add to the bias, in the weight's dtype.
    :raises InvalidArgumentError: if the shapes do not fit.
    """
    if weight.shape != quantized_weight.shape or weight.dim() < 2:
        raise InvalidArgumentError(
            f"weight and quantized_weight must have one shape of at least 2 dims, got {tuple(weight.shape)} "
            f"and {tuple(quantized_weight.shape)}"
        )
    out_ch, in_per_group = weight.shape[0], weight.shape[1]
    if groups < 1 or out_ch % groups or mean_input.shape != (in_per_group * groups,):
        raise InvalidArgumentError(
            f"mean_input must have shape ({in_per_group * groups},) for a weight of shape {tuple(weight.shape)} "
            f"with groups={groups}, got {tuple(mean_input.shape)}"
        )
    err = (
        (weight.double() - quantized_weight.double()).flatten(2).sum(2)
        if weight.dim() > 2
        else (weight.double() - quantized_weight.double())
    )  # (out, in/g)
    err = err.reshape(groups, out_ch // groups, in_per_group)
    m = mean_input.double().reshape(groups, in_per_group, 1)
    return torch.bmm(err, m).reshape(out_ch).to(weight.dtype)
