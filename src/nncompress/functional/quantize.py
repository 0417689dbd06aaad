"""Uniform affine quantization math for quantization-aware training (QAT).

Tensor in, tensor out; nothing here knows about modules. A real ``x`` maps to an integer ``q`` and
back through a step ``s > 0`` (``scale``) and an integer ``z`` (``zero_point``):

.. math::

    q = \\operatorname{clamp}(\\lfloor x \\cdot (1/s) \\rceil + z,\\ q_{min},\\ q_{max}), \\qquad
    \\hat{x} = (q - z) \\cdot s

with :math:`\\lfloor \\cdot \\rceil` rounding half to even (``torch.round``; the fused kernels'
``std::nearbyint``). As in those kernels, ``scale`` is used as float32, ``zero_point`` as int32,
and ``x / s`` is ``x * (1/s)`` with ``1/s`` in float32 and the product in float32 (float64 for
float64 ``x``): it can differ from the exact quotient by an ulp, next to midpoints between levels.

Granularity is the single argument ``axis``:

=====================  ============  ==========================================================
granularity            ``axis``      ``scale`` / ``zero_point`` shape
=====================  ============  ==========================================================
per-tensor             ``None``      ``()`` or ``(1,)``: one step and zero point for all of ``x``
per-channel            ``int`` ``a`` ``(x.shape[a],)``: one per slice ``x.select(a, c)``
=====================  ============  ==========================================================

``scale`` and ``zero_point`` share a shape (as :func:`scale_zero_point` returns them); ``axis``
may be negative. Every function checks that ``scale`` is finite and positive and (except learnable
zero points, which are clamped) that ``zero_point`` lies in ``[qmin, qmax]``: one device
synchronisation per call, as PyTorch's per-channel kernels already do.

A typical use::

    qmin, qmax = integer_range(8, signed=True, narrow_range=False)
    scale, zp = scale_zero_point(w.amin(dim=(1, 2, 3)), w.amax(dim=(1, 2, 3)), qmin, qmax, symmetric=True)
    w_fq = fake_quantize(w, scale, zp, qmin, qmax, axis=0)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from nncompress.errors import InvalidArgumentError

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def integer_range(bits: int, signed: bool, narrow_range: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-wide quantized value.

    ==========  =============================  =============================
    ``signed``  ``narrow_range=False``         ``narrow_range=True``
    ==========  =============================  =============================
    ``True``    ``[-2^(b-1), 2^(b-1) - 1]``    ``[-2^(b-1) + 1, 2^(b-1) - 1]``
    ``False``   ``[0, 2^b - 1]``               ``[0, 2^b - 2]``
    ==========  =============================  =============================

    >>> integer_range(8, signed=True, narrow_range=False)
    (-128, 127)
    >>> integer_range(4, signed=False, narrow_range=True)
    (0, 14)

    :param bits: bit width, an int in ``2..8``.
    :param signed: centred on zero (weights) or starting at zero (e.g. ReLU outputs).
    :param narrow_range: drop the lowest signed level (a symmetric range) or the highest unsigned one.
    :return: ``(qmin, qmax)``.
    :raises InvalidArgumentError: if ``bits`` is not an int in ``2..8``.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise InvalidArgumentError(f"bits must be an int in 2..8, got {bits!r}")
    if signed:
        return -(2 ** (bits - 1)) + int(narrow_range), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow_range)


def _check_range(qmin: int, qmax: int) -> None:
    """Raise unless ``qmin <= 0 < qmax`` are ints within int32 (the range must hold zero)."""
    for name, value in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"{name} must be an int, got {value!r}")
    if not _INT32_MIN <= qmin <= 0 < qmax <= _INT32_MAX:
        raise InvalidArgumentError(f"need -2**31 <= qmin <= 0 < qmax < 2**31, got ({qmin}, {qmax})")


def scale_zero_point(
    min_val: Tensor, max_val: Tensor, qmin: int, qmax: int, symmetric: bool, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Step and zero point that cover ``[min_val, max_val]`` with zero exactly on the grid.

    Computed in float64; the step is then rounded once to float32.

    - **Symmetric**: ``z = 0``, :math:`s = a / L` with :math:`a = \\max(|min|, |max|)`, ``L = qmax``
      if ``qmin = 0`` else ``min(qmax, -qmin)`` (``= qmax`` for every :func:`integer_range`: NNCF's
      ``scale / level_high``). A signed range covers ``[-a, a]`` (a full one a step more below);
      an unsigned one covers ``[0, a]`` and clips negative values to 0.
    - **Asymmetric**: widened to hold zero, ``lo = min(min, 0)``, ``hi = max(max, 0)``;
      :math:`s = (hi - lo) / (q_{max} - q_{min})`,
      :math:`z = \\operatorname{clamp}(\\lfloor q_{min} - lo / s \\rceil, q_{min}, q_{max})` (float32
      ``s``, half to even): rounding ``z`` shifts the grid by at most ``s / 2``.

    ``s`` is clamped to ``>= eps`` (an all-zero range gets ``eps``). Every value of the covered
    range round-trips through :func:`fake_quantize` with error ``<= s / 2`` (up to float rounding).

    >>> scale_zero_point(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, symmetric=False)
    (tensor(0.0157), tensor(64, dtype=torch.int32))

    :param min_val: smallest observed value: 0-d (per-tensor) or 1-d (per-channel).
    :param max_val: largest observed value, the shape of ``min_val``.
    :param qmin: lowest integer level, ``<= 0`` (e.g. from :func:`integer_range`).
    :param qmax: highest integer level, ``> 0``.
    :param symmetric: ``z = 0`` (symmetric) or a fitted ``z`` (asymmetric).
    :param eps: smallest step, at least float32's smallest normal number.
    :return: ``(scale, zero_point)``, float32 and int32 tensors of ``min_val``'s shape and device.
    :raises InvalidArgumentError: for bad shapes, dtypes, ``eps`` or range, non-finite values, or
        ``min_val > max_val`` anywhere.
    """
    _check_range(qmin, qmax)
    if not torch.finfo(torch.float32).tiny <= eps < math.inf:
        raise InvalidArgumentError(f"eps must be a finite float32-normal number > 0, got {eps!r}")
    if min_val.shape != max_val.shape or min_val.dim() > 1:
        shapes = f"{tuple(min_val.shape)}, {tuple(max_val.shape)}"
        raise InvalidArgumentError(f"min_val, max_val must share a shape () or (C,), got {shapes}")
    if not (min_val.is_floating_point() and max_val.is_floating_point()):
        raise InvalidArgumentError(f"min_val, max_val must be floating, got {min_val.dtype}, {max_val.dtype}")
    lo, hi = min_val.detach().double(), max_val.detach().double()
    if not bool((torch.isfinite(lo) & torch.isfinite(hi) & (lo <= hi)).all()):
        raise InvalidArgumentError(f"need finite min_val <= max_val elementwise, got {min_val} and {max_val}")
    if symmetric:
        levels = qmax if qmin == 0 else min(qmax, -qmin)
        scale = (torch.maximum(lo.abs(), hi.abs()) / levels).clamp_min(eps).float()
        return scale, torch.zeros_like(lo, dtype=torch.int32)
    lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(eps).float()
    zero_point = torch.round(qmin - lo / scale.double()).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_qparams(
    x: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None, qrange: tuple[int, int] | None
) -> list[int]:
    """Check shapes (module table), dtypes and values; return ``scale``'s broadcast shape against ``x``.

    One device synchronisation. ``qrange=None`` skips the zero-point checks (dequantize, learnable).

    :return: ``[]`` per-tensor; per-channel ``[1] * x.dim()`` with ``x.shape[axis]`` at ``axis``.
    """
    if scale.shape != zero_point.shape:
        raise InvalidArgumentError(
            f"scale, zero_point shapes differ: {tuple(scale.shape)}, {tuple(zero_point.shape)}"
        )
    shape: list[int] = []
    if axis is None and (scale.dim() > 1 or scale.numel() != 1):
        raise InvalidArgumentError(f"axis=None needs scale of shape () or (1,), got {tuple(scale.shape)}")
    if axis is not None:
        ndim = x.dim()
        if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
            raise InvalidArgumentError(f"axis must be None or an int in [{-ndim}, {ndim - 1}], got {axis!r}")
        channels = x.shape[axis]
        if scale.shape != (channels,):
            raise InvalidArgumentError(
                f"per-channel scale for axis {axis} of x of shape {tuple(x.shape)} must have shape "
                f"({channels},), got {tuple(scale.shape)}"
            )
        shape = [channels if d == axis % ndim else 1 for d in range(ndim)]
    if not scale.is_floating_point():
        raise InvalidArgumentError(f"scale must be a floating-point tensor, got dtype {scale.dtype}")
    if qrange is not None and not _is_integer(zero_point):
        raise InvalidArgumentError(f"zero_point must be an integer tensor, got dtype {zero_point.dtype}")
    scale32 = scale.detach().float()
    ok = (torch.isfinite(scale32) & (scale32 > 0)).all()
    if qrange is not None:
        ok = ok & ((zero_point >= qrange[0]) & (zero_point <= qrange[1])).all()
    if not bool(ok):
        allowed = "" if qrange is None else f" and zero_point in [{qrange[0]}, {qrange[1]}]"
        raise InvalidArgumentError(f"scale must be finite and > 0{allowed}, got {scale} and {zero_point}")
    return shape


def _check_input(x: Tensor, qmin: int, qmax: int) -> None:
    if not x.is_floating_point():
        raise InvalidArgumentError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    _check_range(qmin, qmax)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32: the precision of the fused kernels' ``x * (1/s)``."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Integer levels :math:`q = \\operatorname{clamp}(\\lfloor x/s \\rceil + z, q_{min}, q_{max})`.

    ``x/s`` is computed as ``x * (1/s)`` as in the module docstring.

    >>> quantize(torch.tensor([-1.0, 0.26, 9.0]), torch.tensor(0.5), torch.tensor(1), 0, 15)
    tensor([ 0,  2, 15], dtype=torch.int32)

    :param x: floating-point tensor of any shape.
    :param scale: step ``s``, float, shape as in the module table.
    :param zero_point: integer ``z`` in ``[qmin, qmax]``, shape of ``scale``.
    :param qmin: lowest level, ``<= 0``.
    :param qmax: highest level, ``> 0``.
    :param axis: ``None`` per-tensor, else the channel axis of ``x``.
    :return: an int32 tensor of ``x``'s shape (NaN inputs give unspecified values), no gradient.
    :raises InvalidArgumentError: for bad dtypes, shapes, ``axis``, range, ``scale <= 0`` or
        ``zero_point`` outside the range.
    """
    _check_input(x, qmin, qmax)
    shape = _check_qparams(x, scale, zero_point, axis, (qmin, qmax))
    inv_scale = torch.reciprocal(scale.detach().float()).reshape(shape)
    levels = torch.round(x.detach().to(_compute_dtype(x)) * inv_scale) + zero_point.reshape(shape)
    return levels.clamp(qmin, qmax).to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None) -> Tensor:
    """Real values :math:`\\hat{x} = (q - z) \\cdot s`, computed in float32.

    >>> dequantize(torch.tensor([0, 2, 15], dtype=torch.int32), torch.tensor(0.5), torch.tensor(1))
    tensor([-0.5000,  0.5000,  7.0000])

    :param q: integer tensor of any shape, e.g. from :func:`quantize`.
    :param scale: step ``s``, float, shape as in the module table.
    :param zero_point: integer ``z``, shape of ``scale``.
    :param axis: ``None`` per-tensor, else the channel axis of ``q``.
    :return: a float32 tensor of ``q``'s shape; gradients flow to ``scale`` (not through ``q``).
    :raises InvalidArgumentError: for non-integer ``q``/``zero_point``, bad shapes or ``scale <= 0``.
    """
    if not (_is_integer(q) and _is_integer(zero_point)):
        raise InvalidArgumentError(
            f"q, zero_point must be integer tensors, got {q.dtype}, {zero_point.dtype}"
        )
    shape = _check_qparams(q, scale, zero_point, axis, None)
    centred = q.to(torch.int64) - zero_point.to(torch.int64).reshape(shape)
    return centred.to(torch.float32) * scale.float().reshape(shape)


def _fused_fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None
) -> Tensor:
    """PyTorch's fused quantize-dequantize with clipped STE; arguments already checked.

    The per-channel kernel rounds the exact ``(q - z) * s`` once to ``x``'s dtype; the per-tensor
    one rounds it to float32 first, the same result for float32 ``x`` only. Other dtypes therefore
    take the per-channel kernel per-tensor too, as one channel of an unsqueezed ``x``.
    """
    scale32, zp32 = scale.detach().float().reshape(-1), zero_point.detach().to(torch.int32).reshape(-1)
    if axis is not None:
        return torch.fake_quantize_per_channel_affine(x, scale32, zp32, axis % x.dim(), qmin, qmax)
    if x.dtype == torch.float32:
        return torch.fake_quantize_per_tensor_affine(x, scale32[0], zp32[0], qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x.unsqueeze(0), scale32, zp32, 0, qmin, qmax).squeeze(0)


def fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Quantize-dequantize :math:`\\hat{x} = (q - z) \\cdot s` in ``x``'s dtype, with a clipped STE.

    Forward: :math:`(q - z) \\cdot s` rounded once to ``x``'s dtype, so bit for bit
    ``dequantize(quantize(x))`` for float32 ``x``. Backward: the clipped
    straight-through estimator, :math:`\\partial \\hat{x} / \\partial x = 1` where
    :math:`q_{min} \\le \\lfloor x/s \\rceil + z \\le q_{max}`, else 0; no gradient to ``scale``
    or ``zero_point`` (see :func:`fake_quantize_learnable`). Runs PyTorch's fused
    ``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine``.

    >>> fake_quantize(torch.tensor([-1.0, 0.26, 9.0]), torch.tensor(0.5), torch.tensor(1), 0, 15)
    tensor([-0.5000,  0.5000,  7.0000])

    :param x: floating-point tensor of any shape (float32, float64, float16, bfloat16).
    :param scale: step ``s``, float, shape as in the module table, on ``x``'s device.
    :param zero_point: integer ``z`` in ``[qmin, qmax]``, shape of ``scale``.
    :param qmin: lowest level, ``<= 0``.
    :param qmax: highest level, ``> 0``.
    :param axis: ``None`` per-tensor, else the channel axis of ``x``.
    :return: a tensor of ``x``'s shape and dtype.
    :raises InvalidArgumentError: as :func:`quantize`.
    """
    _check_input(x, qmin, qmax)
    _check_qparams(x, scale, zero_point, axis, (qmin, qmax))
    return _fused_fake_quantize(x, scale, zero_point, qmin, qmax, axis)


class _LearnableFakeQuantize(torch.autograd.Function):
    """LSQ / LSQ+ gradients around the fused forward; formulas at :func:`fake_quantize_learnable`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        scale: Tensor,
        zero_point: Tensor,
        qmin: int,
        qmax: int,
        axis: int | None,
        grad_factor: float,
        shape: tuple[int, ...],
    ) -> Tensor:
        zp_used = torch.round(zero_point.detach().float()).clamp(qmin, qmax)
        ctx.save_for_backward(x, scale, zp_used)
        ctx.qrange, ctx.grad_factor, ctx.shape = (qmin, qmax), grad_factor, shape
        ctx.zp_dtype = zero_point.dtype
        # Dimensions that one scale entry covers: all per-tensor, all but ``axis`` per-channel.
        ctx.dims = tuple(d for d in range(x.dim()) if axis is None or d != axis % x.dim())
        return _fused_fake_quantize(x, scale, zp_used, qmin, qmax, axis)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, scale, zp_used = ctx.saved_tensors
        (qmin, qmax), shape, dims = ctx.qrange, ctx.shape, ctx.dims
        dtype = _compute_dtype(x)
        z = zp_used.reshape(shape).to(dtype)
        t = x.detach().to(dtype) * torch.reciprocal(scale.detach().float()).reshape(shape)  # as the kernel
        r = torch.round(t)
        below, above = r + z < qmin, r + z > qmax
        inside = ~(below | above)
        g = grad.to(dtype)
        dx = grad * inside if ctx.needs_input_grad[0] else None
        dscale = dzero = None
        if ctx.needs_input_grad[1]:
            d_elem = torch.where(inside, r - t, torch.where(below, qmin - z, qmax - z))
            dscale = _finite(_sum_to(g * d_elem, dims, scale.shape) * ctx.grad_factor)
            dscale = dscale.to(scale.dtype)
        if ctx.needs_input_grad[2]:
            outside = _sum_to(g * ~inside, dims, scale.shape)
            dzero = _finite(-ctx.grad_factor * scale.detach().to(dtype) * outside).to(ctx.zp_dtype)
        return dx, dscale, dzero, None, None, None, None, None


class _FixedZeroPointLsq(torch.autograd.Function):
    """LSQ for an integer (fixed) zero point, float32 input, keeping the in-range mask.

    The forward computes exactly what PyTorch's fused kernels compute (``x * (1/s)`` with a
    float32 reciprocal, half-to-even rounding, ``+ z``, clamp, ``(q - z) * s``) with a few
    vectorised tensor ops (about 3x faster than ``fake_quantize_*_cachemask`` on this CPU) and
    keeps the mask of in-range elements, ``clamp(q) == q``. With it the gradients of
    :func:`fake_quantize_learnable` are ``dx = g_y * mask`` and
    ``ds = g * sum(g_y * (y - x * mask)) / s`` (inside the range ``y/s - x/s = round(x/s) - x/s``;
    outside, ``y/s = q - z`` at the clamped level), so the backward needs no re-quantization.

    ``zero_point=None`` is a zero point known to be 0 (no add and subtract). With ``min_scale``
    the step used is ``max(|scale|, min_scale)`` and the gradient goes to ``scale`` through that
    (as autograd's ``abs`` and ``clamp_min`` would pass it), in this one autograd node.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: int, qmax: int,
        view: tuple[int, ...], dims: tuple[int, ...], grad_factor: float, min_scale: float | None = None,
    ) -> Tensor:
        s = scale.detach()
        magnitude = None
        if min_scale is not None:
            magnitude = s.abs()
            s = magnitude.clamp_min(min_scale)
        s_b = s.reshape(view)  # broadcast shape of the per-tensor or per-channel float32 step
        q = x * torch.reciprocal(s_b)
        q.round_()
        z_b = None
        if zero_point is not None:
            z_b = zero_point.detach().reshape(view).to(x.dtype)
            q.add_(z_b)
        y = q.clamp(qmin, qmax)
        mask = y == q  # in range (NaN: not)
        if z_b is not None:
            y.sub_(z_b)
        y.mul_(s_b)
        ctx.save_for_backward(x, y, mask, s, magnitude, scale if min_scale is not None else None)
        ctx.grad_factor, ctx.dims, ctx.min_scale = grad_factor, dims, min_scale
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, y, mask, s, magnitude, scale = ctx.saved_tensors
        dscale = None
        if ctx.needs_input_grad[1]:
            # y - x * mask first: inside the range it is the small rounding residual; splitting the
            # sum into sum(g * y) - sum(g * x) would cancel catastrophically in float32.
            residual = torch.where(mask, y - x, y)
            if len(ctx.dims) == x.dim():
                dscale = torch.dot(grad.reshape(-1), residual.reshape(-1))
                dscale = dscale.reshape(s.shape) if s.dim() else dscale
            else:
                dscale = _sum_to(grad * residual, ctx.dims, s.shape)
            dscale = _finite(dscale * ctx.grad_factor / s)
            if magnitude is not None:  # through clamp_min (zero below the bound), then abs
                dscale = torch.where(magnitude >= ctx.min_scale, dscale, 0.0) * scale.sgn()
        dx = torch.where(mask, grad, 0.0) if ctx.needs_input_grad[0] else None  # no float copy of the mask
        return dx, dscale, None, None, None, None, None, None, None


def _finite(grad: Tensor) -> Tensor:
    """The step / zero-point gradient with non-finite entries set to 0.

    One batch with an overflowing upstream gradient (or an inf input) would otherwise turn the
    step into NaN for good; dropping that batch's contribution to the step (a tensor of the
    step's shape, so the cost is negligible) keeps training going. The inputs' gradient is not
    touched: it is the model's, not ours to hide.
    """
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def _sum_to(t: Tensor, dims: tuple[int, ...], shape: torch.Size) -> Tensor:
    """Sum ``t`` over ``dims`` (none: no sum, unlike ``Tensor.sum([])``) and reshape to ``shape``."""
    out = t.sum(dims) if dims else t
    return out if out.shape == shape else out.reshape(shape)


def fake_quantize_learnable(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor | None,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    grad_factor: float = 1.0,
    validate: bool = True,
    min_scale: float | None = None,
) -> Tensor:
    """:func:`fake_quantize` whose step (and float zero point) learn: LSQ (Esser et al., 2020), LSQ+.

    The forward is :func:`fake_quantize` with :math:`z = \\operatorname{clamp}(\\lfloor z_f \\rceil,
    q_{min}, q_{max})` for a float ``zero_point`` :math:`z_f` (an integer one is used as is). With
    :math:`q = \\lfloor x/s \\rceil + z` before clamping and ``g = grad_factor``, the gradients of
    :math:`\\hat{x}` (rounding and the rounding/clamping of :math:`z_f` pass straight through):

    .. math::

        \\frac{\\partial \\hat{x}}{\\partial x} = [q_{min} \\le q \\le q_{max}], \\quad
        \\frac{\\partial \\hat{x}}{\\partial s} = g \\cdot \\begin{cases}
            q_{min} - z & q < q_{min} \\\\
            \\lfloor x/s \\rceil - x/s & q_{min} \\le q \\le q_{max} \\\\
            q_{max} - z & q > q_{max} \\end{cases}, \\quad
        \\frac{\\partial \\hat{x}}{\\partial z_f} = g \\cdot \\begin{cases}
            0 & q_{min} \\le q \\le q_{max} \\\\ -s & \\text{else} \\end{cases}

    summed over the elements each ``scale`` entry covers. LSQ suggests
    :math:`g = 1 / \\sqrt{N \\cdot q_{max}}` with ``N`` the elements per step (:func:`lsq_grad_factor`).
    These are the formulas of ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``,
    which are not used: the per-tensor backward rounds the zero point differently from its
    forward (``int(z + 0.5)``, truncating, against ``nearbyint(z)``: a wrong mask and gradients
    for every negative zero point and for ones like 2.5), the per-channel backward rounds
    ``z + x/s`` where the forward rounds ``x/s`` (differs next to midpoints), and both backwards
    need float32 or bfloat16 inputs (PyTorch 2.13). Here the forward is the fused kernel and the
    backward recomputes the forward's ``q`` exactly. Non-finite entries of the step and zero-point
    gradients (from an overflowing upstream gradient) are set to 0, so one bad batch cannot turn
    the step into NaN; the gradient of ``x`` is passed on as it is.

    :param x: floating-point tensor of any shape.
    :param scale: step ``s`` (a parameter), float, shape as in the module table.
    :param zero_point: float :math:`z_f` (learned; any value, clamped as above) or an integer ``z``
        in ``[qmin, qmax]`` (fixed, no gradient); shape of ``scale``. ``None``: a fixed zero point 0.
    :param qmin: lowest level, ``<= 0``.
    :param qmax: highest level, ``> 0``.
    :param axis: ``None`` per-tensor, else the channel axis of ``x``.
    :param grad_factor: ``g`` above, a finite float ``> 0``.
    :param validate: check the arguments (one device synchronisation); callers that checked them
        once and keep them fixed (the fake-quantizer modules) pass ``False`` on later calls.
    :param min_scale: if given, the step is :math:`s = \\max(|scale|, min\\_scale)`, and ``scale``
        gets the gradient of that (as from ``scale.abs().clamp_min(min_scale)``, the same values
        without two extra autograd nodes): a step that training drives negative stays usable.
    :return: a tensor of ``x``'s shape and dtype.
    :raises InvalidArgumentError: as :func:`quantize`, or for a bad ``grad_factor`` or ``min_scale``.
    """
    if validate:
        _check_learnable(x, scale, zero_point, qmin, qmax, axis, grad_factor, min_scale)
    view, dims = _geometry(x.shape, axis)
    if (x.dtype == torch.float32 and scale.dtype == torch.float32
            and (zero_point is None or not zero_point.is_floating_point())):
        # same values and gradients as the general function, in fewer tensor passes
        out: Tensor = _FixedZeroPointLsq.apply(x, scale, zero_point, qmin, qmax, view, dims, grad_factor, min_scale)
        return out
    if min_scale is not None:
        scale = scale.abs().clamp_min(min_scale)
    if zero_point is None:
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    out = _LearnableFakeQuantize.apply(x, scale, zero_point, qmin, qmax, axis, grad_factor, view)
    return out


def _check_learnable(
    x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: int, qmax: int, axis: int | None,
    grad_factor: float, min_scale: float | None,
) -> None:
    """The checks of :func:`fake_quantize_learnable` (one device synchronisation)."""
    _check_input(x, qmin, qmax)
    if not 0.0 < grad_factor < math.inf:
        raise InvalidArgumentError(f"grad_factor must be a finite float > 0, got {grad_factor!r}")
    if min_scale is not None:
        if not 0.0 < min_scale < math.inf:
            raise InvalidArgumentError(f"min_scale must be None or a finite float > 0, got {min_scale!r}")
        scale = scale.detach().abs().clamp_min(min_scale)
    if zero_point is None:
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    qrange = None if zero_point.is_floating_point() else (qmin, qmax)
    _check_qparams(x, scale, zero_point, axis, qrange)


@functools.lru_cache(maxsize=512)
def _geometry(shape: torch.Size, axis: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Broadcast shape of the step against ``x`` of ``shape``, and the dimensions one step covers.

    :return: ``(view, dims)``: per-tensor ``(1, ..., 1)`` and all dimensions; per-channel
        ``x.shape[axis]`` at ``axis`` and every other dimension.
    """
    ndim = len(shape)
    a = None if axis is None else axis % ndim
    view = tuple(shape[d] if d == a else 1 for d in range(ndim))
    return view, tuple(d for d in range(ndim) if d != a)


def fake_quantize_rows_learnable(
    rows: Tensor, row_scale: Tensor, qmin: int, qmax: int, grad_factor: float = 1.0
) -> Tensor:
    """Symmetric LSQ fake quantization of gathered rows, each with its own step.

    For an embedding table quantized per row (axis 0), quantizing the looked-up rows with their
    gathered steps gives the same values and gradients as quantizing the whole table and then
    looking up, at the cost of the rows actually read.

    :param rows: float32 rows, shape ``(..., d)``.
    :param row_scale: each row's step, shape ``(..., 1)`` (e.g. ``F.embedding(ids, scale[:, None])``,
        through which the step gradient flows back to the table's steps).
    :param qmin: lowest level.
    :param qmax: highest level.
    :param grad_factor: LSQ's step-gradient factor.
    :return: the fake-quantized rows.
    """
    out: Tensor = _FixedZeroPointLsq.apply(
        rows, row_scale, None, qmin, qmax, row_scale.shape, (rows.dim() - 1,), grad_factor
    )
    return out


def lsq_grad_factor(numel: int, qmax: int) -> float:
    """LSQ's step-gradient scale :math:`1 / \\sqrt{N \\cdot q_{max}}` (Esser et al., 2020, sec. 2.2).

    >>> lsq_grad_factor(64, 4)
    0.0625

    :param numel: elements per step ``N`` in one example: for a weight ``numel / C`` per channel;
        for an activation the features of one example (the batch axis is not counted).
    :param qmax: highest level, ``> 0``.
    :return: the factor, for ``grad_factor`` of :func:`fake_quantize_learnable`.
    :raises InvalidArgumentError: unless ``numel`` and ``qmax`` are positive ints.
    """
    for name, value in (("numel", numel), ("qmax", qmax)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidArgumentError(f"{name} must be an int > 0, got {value!r}")
    return 1.0 / math.sqrt(numel * qmax)


__all__ = [
    "dequantize",
    "fake_quantize",
    "fake_quantize_learnable",
    "integer_range",
    "lsq_grad_factor",
    "quantize",
    "scale_zero_point",
]
