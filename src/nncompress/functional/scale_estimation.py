"""Scale estimation: refit each group's scale to minimise the activation-weighted error.

Tensor in, tensor out. For one row and group of weights ``w_k`` with input-channel importances
``a_k = 1/T sum_t x_tk^2`` (the diagonal of the layer's Hessian), the output error of the
quantized layer is approximated by::

    err(s) = sum_k a_k (w_k - s v(q_k))^2,   q_k = code of w_k / s

where ``v(q) = q`` (symmetric), ``q - z`` (asymmetric, zero point ``z``) or ``NF4_LEVELS[q]``
(NF4). Starting from the given (round-to-nearest) scale ``s0``, every group independently:

1. tries ``s = f s0`` for ``initial_steps`` factors ``f`` evenly spaced in ``[1 - shrink, 1 + grow]``
   (shrinking clips outliers to refine the rest; growing helps where the extreme rounds badly),
2. from the best so far, alternates ``scale_steps`` times: codes ``q = round(w / s)`` for the
   current ``s``, then the weighted least-squares scale for those codes::

       s* = sum_k a_k w_k v(q_k) / sum_k a_k v(q_k)^2

3. keeps the scale of lowest ``err`` seen, and finally falls back to ``s0`` wherever the stored
   (cast, re-rounded) result is not strictly better: the result is never worse than the start.

Asymmetric modes keep the starting zero point ``z``: the representable interval
``[(qmin - z) s, (qmax - z) s]`` then stretches about zero with ``s``, and the least-squares
step stays exact. All groups are handled at once (tensors ``[N, G, g]``), in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import (
    NF4_LEVELS,
    QuantizedWeight,
    WeightQuantSpec,
    codes_for,
    compute_scale,
    dequantize_weight,
    grouped,
    quantize_weight,
)


def code_values(codes: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec) -> Tensor:
    """``v(q)`` of codes ``[N, G, g]``: the dequantized value divided by the scale (float64)."""
    if spec.nf4:
        levels = torch.tensor(NF4_LEVELS, dtype=torch.float64, device=codes.device)
        return levels[codes.long()]
    values = codes.to(torch.float64)
    if zero_point is not None:
        values = values - zero_point.unsqueeze(-1).to(torch.float64)
    return values


def weighted_group_error(
    wg: Tensor, importance: Tensor, scale: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec
) -> Tensor:
    """``err`` ``[N, G]`` of grouped weights ``wg`` ``[N, G, g]`` quantized with ``scale`` ``[N, G]``.

    :param importance: ``[G, g]`` channel importances (zero on padded columns).
    """
    v = code_values(codes_for(wg, scale, zero_point, spec), zero_point, spec)
    diff = wg.to(torch.float64) - v * scale.to(torch.float64).unsqueeze(-1)
    return (importance.to(torch.float64) * diff * diff).sum(dim=-1)


def estimate_scales(
    w: Tensor,
    spec: WeightQuantSpec,
    act_importance: Tensor,
    scale: Tensor | None = None,
    zero_point: Tensor | None = None,
    initial_steps: int = 9,
    scale_steps: int = 5,
    shrink: float = 0.3,
    grow: float = 0.1,
) -> QuantizedWeight:
    """Quantize ``w`` ``[N, K]`` with scales refit to the importance-weighted error (module doc).

    :param w: the float weight (the result's scale has its dtype).
    :param spec: the weight format.
    :param act_importance: ``[K]`` non-negative importance per input channel (mean ``x^2``).
    :param scale: ``[N, G]`` starting scales, :func:`compute_scale`'s when ``None``.
    :param zero_point: ``[N, G]`` zero points (asymmetric modes; kept), with ``scale``.
    :param initial_steps: candidate rescalings tried first (``f`` grid; 1 tries only ``s0``).
    :param scale_steps: least-squares alternations after the grid.
    :param shrink: the grid starts at ``1 - shrink`` (in ``[0, 1)``).
    :param grow: the grid ends at ``1 + grow`` (``>= 0``).
    :return: the quantized weight; per group never a larger weighted error than ``scale``'s.
    :raises InvalidArgumentError: for a bad importance shape, negative importances or bad steps.
    """
    k = w.shape[1] if w.dim() == 2 else -1
    if act_importance.shape != (k,) or bool((act_importance < 0).any()):
        raise InvalidArgumentError(
            f"act_importance must be a non-negative [{k}] tensor, got shape {tuple(act_importance.shape)}"
        )
    if initial_steps < 1 or scale_steps < 0 or not 0 <= shrink < 1 or grow < 0:
        raise InvalidArgumentError(
            "scale estimation needs initial_steps >= 1, scale_steps >= 0, 0 <= shrink < 1 and grow >= 0, got "
            f"{initial_steps!r}, {scale_steps!r}, {shrink!r}, {grow!r}"
        )
    if scale is None:
        scale, zero_point = compute_scale(w, spec)
    start = quantize_weight(w, spec, scale, zero_point)  # validates w and the shapes
    wg = grouped(w.detach().to(torch.float64), spec.group_size)
    imp = grouped(act_importance.to(w.device, torch.float64).unsqueeze(0), spec.group_size)[0]
    s0 = start.scale.to(torch.float64)
    best_s = _search(wg, imp, s0, zero_point, spec, initial_steps, scale_steps, shrink, grow)
    # store in w's dtype and re-round; keep the start wherever that is not strictly better
    candidate = best_s.to(start.scale.dtype)
    err_start = _stored_error(w, wg, imp, start)
    err_new = _stored_error(w, wg, imp, quantize_weight(w, spec, candidate, zero_point))
    final = torch.where(err_new < err_start, candidate, start.scale)
    return quantize_weight(w, spec, final, zero_point)


def _stored_error(w: Tensor, wg: Tensor, imp: Tensor, qw: QuantizedWeight) -> Tensor:
    """Weighted error ``[N, G]`` of ``qw`` as stored: rounded and dequantized in ``w``'s dtype (a
    float32 quotient can round a tie the other way than the float64 search did)."""
    diff = wg - grouped(dequantize_weight(qw).to(torch.float64), qw.spec.group_size)
    return (imp * diff * diff).sum(dim=-1)


def _search(
    wg: Tensor, imp: Tensor, s0: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec,
    initial_steps: int, scale_steps: int, shrink: float, grow: float,
) -> Tensor:
    """The lowest-error scale ``[N, G]`` of the grid and the least-squares alternation."""
    best_s = s0.clone()
    best_err = weighted_group_error(wg, imp, s0, zero_point, spec)
    factors = torch.linspace(1 - shrink, 1 + grow, initial_steps).tolist() if initial_steps > 1 else []
    for f in factors:
        best_s, best_err = _keep_better(wg, imp, s0 * f, zero_point, spec, best_s, best_err)
    current = best_s.clone()
    for _ in range(scale_steps):
        v = code_values(codes_for(wg, current, zero_point, spec), zero_point, spec)
        num = (imp * wg * v).sum(dim=-1)
        den = (imp * v * v).sum(dim=-1)
        refit = num / den.where(den > 0, torch.ones_like(den))
        usable = (den > 0) & (refit != 0) & torch.isfinite(refit)
        current = torch.where(usable, refit, current)
        best_s, best_err = _keep_better(wg, imp, current, zero_point, spec, best_s, best_err)
    return best_s


def _keep_better(
    wg: Tensor, imp: Tensor, s: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec,
    best_s: Tensor, best_err: Tensor,
) -> tuple[Tensor, Tensor]:
    err = weighted_group_error(wg, imp, s, zero_point, spec)
    better = err < best_err
    return torch.where(better, s, best_s), torch.where(better, err, best_err)
