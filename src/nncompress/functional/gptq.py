"""GPTQ (Frantar et al. 2022): columns quantized in order, each one's error pushed onto the rest.

Tensor in, tensor out. For a layer ``W`` ``[N, K]`` with input Hessian ``H = 1/T sum_t x_t^T x_t``
``[K, K]``, quantizing column ``j`` to ``q_j`` and updating the columns not yet quantized by::

    W[:, j+1:] -= ((W[:, j] - q_j) / U_jj) U[j, j+1:]

where ``U`` is the upper Cholesky factor of ``H^{-1}`` (``H^{-1} = U^T U``), minimises the
layer's output error ``tr((W - Q) H (W - Q)^T)`` greedily column by column (the optimal brain
surgeon update restricted to the remaining columns). Preparation, as the reference code:

* dead inputs (``H_jj = 0``: the channel was always zero) get ``W[:, j] = 0`` and ``H_jj = 1``;
* damping ``H += damp_percent * mean(diag H) * I`` keeps the inverse well conditioned (doubled
  up to 8 times should the Cholesky factorisation still fail).

Updates are applied lazily: inside a block of ``block_size`` columns eagerly, to the columns
after the block once per block (``W[:, i2:] -= Err @ U[i1:i2, i2:]``), which is mathematically
the same as the column loop above. A group's scale (and zero point) is computed when its first
column comes up, from the group's *current* weights (every earlier column's update applied, also
the pending ones of the current block), by :func:`compute_scale` or by ``scale_fn``; the codes
of its columns use that scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import (
    QuantizedWeight,
    WeightQuantSpec,
    codes_for,
    compute_scale,
    dequantize_codes,
    group_count,
)

#: ``scale_fn(columns [N, width], first_column) -> (scale [N], zero_point [N] or None)``: the
#: scale of the group whose current weights are ``columns``, starting at input ``first_column``.
ScaleFn = Callable[[Tensor, int], tuple[Tensor, Tensor | None]]


def inverse_hessian_factor(hessian: Tensor, damp_percent: float) -> tuple[Tensor, Tensor]:
    """``(U, dead)``: upper Cholesky factor of the damped ``H^{-1}`` (float64) and the dead-input mask.

    :raises InvalidArgumentError: if ``H`` is not square, or not positive definite after damping.
    """
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise InvalidArgumentError(f"hessian must be square [K, K], got shape {tuple(hessian.shape)}")
    if not 0 < damp_percent:
        raise InvalidArgumentError(f"damp_percent must be positive, got {damp_percent!r}")
    h = hessian.detach().to(torch.float64).clone()
    diag = torch.diagonal(h)
    dead = diag == 0
    h[dead, dead] = 1.0
    damp = damp_percent * float(diag.mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(9):
        chol, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper, dead
        damp *= 2
    raise InvalidArgumentError("hessian is not positive definite even after damping; check the calibration inputs")


def gptq_quantize(
    w: Tensor,
    hessian: Tensor,
    spec: WeightQuantSpec,
    damp_percent: float = 0.1,
    block_size: int = 128,
    scale_fn: ScaleFn | None = None,
) -> QuantizedWeight:
    """Quantize ``w`` ``[N, K]`` with GPTQ (module doc) in ``w``'s dtype.

    :param w: the float weight.
    :param hessian: ``[K, K]`` mean ``x^T x`` of the layer's inputs.
    :param spec: the weight format (groups along ``K`` as :func:`compute_scale`).
    :param damp_percent: damping relative to the mean diagonal of ``H``.
    :param block_size: columns per lazy update block.
    :param scale_fn: computes a group's scale from its current columns (e.g. scale estimation);
        round-to-nearest :func:`compute_scale` when ``None``.
    :return: codes and the scales they were rounded with (padding columns hold the code of zero).
    :raises InvalidArgumentError: for mismatched shapes or a non-positive ``block_size``.
    """
    if w.dim() != 2 or not torch.is_floating_point(w):
        raise InvalidArgumentError(f"weight must be a 2-D float tensor [out, in], got {w.dtype} {tuple(w.shape)}")
    n, k = w.shape
    if tuple(hessian.shape) != (k, k):
        raise InvalidArgumentError(f"hessian must have shape {(k, k)} for a weight with {k} inputs, got {tuple(hessian.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidArgumentError(f"block_size must be a positive int, got {block_size!r}")
    upper64, dead = inverse_hessian_factor(hessian.to(w.device), damp_percent)
    upper = upper64.to(w.dtype)
    work = w.detach().clone()
    work[:, dead] = 0
    groups, g = group_count(k, spec.group_size)
    scale = torch.ones(n, groups, dtype=w.dtype, device=w.device)
    zero_point = None if spec.symmetric else torch.zeros(n, groups, dtype=torch.int16, device=w.device)
    codes = torch.zeros(n, k, dtype=torch.int16, device=w.device)
    scale_of = scale_fn or _rtn_scale(spec)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        block = work[:, i1:i2].clone()
        err = torch.zeros_like(block)
        for i in range(i2 - i1):
            col = i1 + i
            gi = col // g
            if col % g == 0:
                cols = _group_columns(work, block, err, upper, i1, i2, i, min(col + g, k))
                s, z = scale_of(cols, col)
                scale[:, gi] = s.to(w.dtype)
                if zero_point is not None:
                    if z is None:
                        raise InvalidArgumentError(f"scale_fn gave no zero point for the {spec.mode} group at column {col}")
                    zero_point[:, gi] = z.to(torch.int16)
            zp = None if zero_point is None else zero_point[:, gi:gi + 1]
            q = codes_for(block[:, i:i + 1].unsqueeze(1), scale[:, gi:gi + 1], zp, spec).reshape(n)
            codes[:, col] = q
            value = dequantize_codes(q.reshape(n, 1), scale[:, gi:gi + 1], zp, spec, 1).reshape(n)
            e = (block[:, i] - value) / upper[col, col]
            block[:, i + 1:] -= e.unsqueeze(1) * upper[col, col + 1:i2].unsqueeze(0)
            err[:, i] = e
        work[:, i2:] -= err @ upper[i1:i2, i2:]
    return _assemble(codes, scale, zero_point, spec, k)


def _rtn_scale(spec: WeightQuantSpec) -> ScaleFn:
    per_group = spec.with_group_size(-1)

    def rtn(cols: Tensor, first_column: int) -> tuple[Tensor, Tensor | None]:
        s, z = compute_scale(cols, per_group)
        return s[:, 0], None if z is None else z[:, 0]

    return rtn


def _group_columns(
    work: Tensor, block: Tensor, err: Tensor, upper: Tensor, i1: int, i2: int, i: int, end: int
) -> Tensor:
    """Current weights ``[N, end - (i1 + i)]`` of the group starting at column ``i1 + i``.

    Columns inside the block are up to date in ``block``; those after it still miss the updates
    of the block's columns done so far, ``err[:, :i] @ U[i1:i1+i, i2:end]``.
    """
    inside = block[:, i:min(end, i2) - i1]
    if end <= i2:
        return inside
    after = work[:, i2:end] - err[:, :i] @ upper[i1:i1 + i, i2:end]
    return torch.cat([inside, after], dim=1)


def _assemble(codes: Tensor, scale: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec, k: int) -> QuantizedWeight:
    """Codes padded to ``[N, G * g]`` with the code of zero, as :func:`quantize_weight` stores them."""
    n, groups = scale.shape
    g = group_count(k, spec.group_size)[1]
    padded = codes_for(torch.zeros(n, groups, g, dtype=scale.dtype, device=scale.device), scale, zero_point, spec)
    padded = padded.reshape(n, groups * g)
    padded[:, :k] = codes
    return QuantizedWeight(padded, scale, zero_point, spec, k)
