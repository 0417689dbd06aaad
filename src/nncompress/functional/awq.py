"""Activation-aware weight quantization (AWQ, Lin et al. 2023): per-input-channel scales.

Tensor in, tensor out. A linear layer ``y = x W^T`` (``W`` ``[N, K]``) computes the same with
``y = (x / s) (W diag(s))^T`` for any positive ``s`` ``[K]``. Quantizing ``W diag(s)`` instead of
``W`` gives input channels with large activations finer levels (their weight columns are
scaled up within their group), at the expense of the quiet channels. AWQ picks ``s`` from the
mean input magnitude of each channel, ``m_k = 1/T sum_t |x_tk|``::

    s_k(alpha) = c_k^alpha / sqrt(max_j c_j^alpha * min_j c_j^alpha),  c_k = max(m_k, 1e-6 max_j m_j)

(the normalisation centres ``s`` around 1 on a log scale, as NNCF does; the clamp keeps dead
channels finite), and the ``alpha`` on a grid whose output error on the calibration tokens::

    err(alpha) = ||x W^T - (x / s) Q(W diag s)^T||^2 = T tr(E H E^T),
    E = W - Q(W diag s) diag(1/s),   H = 1/T sum_t x_t^T x_t

is smallest. ``alpha = 0`` gives ``s = 1``, plain round-to-nearest, so with 0 on the grid AWQ
never does worse than RTN on those tokens. The error is computed from ``H`` ``[K, K]`` (built in
chunks of tokens), never from all outputs at once: memory is bounded by ``K^2 + N K``.

The result's ``input_multiplier`` is ``1 / s``: the compressed layer computes
``F.linear(x * input_multiplier, dequantize(qweight))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from nncompress.errors import InvalidArgumentError
from nncompress.functional.activation_stats import hessian_accumulate
from nncompress.functional.weight_quant import (
    QuantizedWeight,
    WeightQuantSpec,
    codes_for,
    compute_scale,
    dequantize_codes,
    grouped,
)

#: Relative floor of the channel magnitudes before the power: ``c_k >= 1e-6 max_j m_j``.
MAGNITUDE_FLOOR = 1e-6


class AWQResult(NamedTuple):
    """What :func:`awq_search` found.

    :param qweight: ``Q(W diag s)``, the quantized scaled weight.
    :param input_multiplier: ``1 / s`` ``[K]`` (``w``'s dtype), applied to the layer's input.
    :param alpha: the winning exponent.
    :param errors: ``[len(alphas)]`` float64 mean squared output error per token of each alpha.
    """

    qweight: QuantizedWeight
    input_multiplier: Tensor
    alpha: float
    errors: Tensor


def awq_scales(mean_abs: Tensor, alpha: float) -> Tensor:
    """``s(alpha)`` ``[K]`` of channel magnitudes ``mean_abs`` (formula in the module doc)."""
    m = mean_abs.to(torch.float64)
    top = float(m.max()) if m.numel() else 0.0
    floor = MAGNITUDE_FLOOR * top if top > 0 else 1.0
    c = m.clamp(min=floor) ** alpha
    return c / torch.sqrt(c.max() * c.min())


def alpha_grid(alpha_min: float, alpha_max: float, steps: int) -> list[float]:
    """``steps`` evenly spaced exponents from ``alpha_min`` to ``alpha_max`` (one point: ``alpha_min``)."""
    if steps < 1:
        raise InvalidArgumentError(f"AWQ needs at least one alpha step, got {steps!r}")
    if steps == 1:
        return [float(alpha_min)]
    return torch.linspace(alpha_min, alpha_max, steps, dtype=torch.float64).tolist()


def awq_search(
    w: Tensor, x: Tensor, spec: WeightQuantSpec, alphas: Sequence[float], chunk_tokens: int = 4096
) -> AWQResult:
    """Search the AWQ exponent for weight ``w`` ``[N, K]`` on calibration inputs ``x`` ``[..., K]``.

    :param w: the float weight.
    :param x: the layer's inputs; every leading dimension is a token.
    :param spec: the weight format.
    :param alphas: exponents to try (include 0 for the never-worse-than-RTN guarantee).
    :param chunk_tokens: tokens per chunk when forming ``H`` (bounds memory).
    :return: the best scaled quantized weight, ``1 / s``, the alpha and every alpha's error.
    :raises InvalidArgumentError: for mismatched shapes, an empty ``alphas`` or no tokens.
    """
    _check(w, x.shape[-1])
    flat = x.detach().reshape(-1, x.shape[-1])
    h, count = None, 0
    abs_sum = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[0], max(1, chunk_tokens)):
        chunk = flat[start:start + chunk_tokens]
        h, count = hessian_accumulate(h, count, chunk)
        abs_sum += chunk.abs().sum(dim=0, dtype=torch.float64)
    if h is None or count == 0:
        raise InvalidArgumentError("AWQ needs calibration tokens, got an empty x")
    return awq_search_from_stats(w, abs_sum / count, h, spec, alphas)


def awq_search_from_stats(
    w: Tensor, mean_abs: Tensor, hessian: Tensor, spec: WeightQuantSpec, alphas: Sequence[float]
) -> AWQResult:
    """:func:`awq_search` from accumulated statistics instead of the tokens themselves.

    :param w: ``[N, K]`` float weight.
    :param mean_abs: ``[K]`` mean ``|x|`` per input channel.
    :param hessian: ``[K, K]`` mean ``x^T x`` per token (:func:`hessian_accumulate`).
    :param spec: the weight format.
    :param alphas: exponents to try.
    :return: see :class:`AWQResult`.
    """
    k = _check(w, mean_abs.shape[-1])
    if tuple(hessian.shape) != (k, k):
        raise InvalidArgumentError(f"hessian must have shape {(k, k)}, got {tuple(hessian.shape)}")
    if len(alphas) == 0:
        raise InvalidArgumentError("AWQ needs at least one alpha to try, got none")
    # float32 products keep the K x K work fast; the errors are compared, not reported as exact
    h = hessian.to(w.device, torch.float32)
    wf = w.detach().float()
    if not bool(torch.isfinite(wf).all()):
        raise InvalidArgumentError("weight holds NaN or inf values; a non-finite weight cannot be quantized")
    errors = torch.zeros(len(alphas), dtype=torch.float64)
    best = 0
    for i, alpha in enumerate(alphas):
        s = awq_scales(mean_abs.to(w.device), float(alpha)).float()
        err_w = _fake_quantize(wf * s, spec).div_(s).neg_().add_(wf)  # W - Q(W diag s) diag(1/s)
        errors[i] = float((err_w @ h).mul_(err_w).sum())
        if errors[i] < errors[best]:
            best = i
    s = awq_scales(mean_abs.to(w.device), float(alphas[best])).float()
    scaled = wf * s
    scale, zero_point = compute_scale(scaled, spec)
    codes = codes_for(grouped(scaled, spec.group_size), scale, zero_point, spec).reshape(w.shape[0], -1)
    qweight = QuantizedWeight(codes, scale, zero_point, spec, k)
    return AWQResult(qweight, (1.0 / s).to(w.dtype), float(alphas[best]), errors)


def _fake_quantize(w: Tensor, spec: WeightQuantSpec) -> Tensor:
    """``dequantize(quantize(w))`` ``[N, K]`` with round-to-nearest scales, in few passes.

    The same arithmetic as :func:`codes_for` and :func:`dequantize_codes` (so the winner's codes,
    computed by them, give exactly the error measured here), without the integer round trip.
    """
    scale, zero_point = compute_scale(w, spec)
    wg = grouped(w, spec.group_size)
    if spec.nf4:
        values = dequantize_codes(codes_for(wg, scale, None, spec).reshape(w.shape[0], -1), scale, None, spec, w.shape[1])
        return values
    qmin, qmax = spec.code_range
    q = torch.round(wg / scale.unsqueeze(-1))
    if zero_point is not None:
        z = zero_point.unsqueeze(-1).to(q.dtype)
        q = q.add_(z).clamp_(qmin, qmax).sub_(z)
    else:
        q = q.clamp_(qmin, qmax)
    return q.mul_(scale.unsqueeze(-1)).reshape(w.shape[0], -1)[:, : w.shape[1]]


def _check(w: Tensor, k: int) -> int:
    if w.dim() != 2 or not torch.is_floating_point(w):
        raise InvalidArgumentError(f"weight must be a 2-D float tensor [out, in], got {w.dtype} {tuple(w.shape)}")
    if w.shape[1] != k:
        raise InvalidArgumentError(f"weight has {w.shape[1]} input channels but the activations have {k}")
    return int(w.shape[1])
