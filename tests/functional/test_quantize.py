"""Quantization math against plain float64 references, Hypothesis properties and LSQ gradients."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional.quantize import (
    dequantize,
    fake_quantize,
    fake_quantize_learnable,
    integer_range,
    lsq_grad_factor,
    quantize,
    scale_zero_point,
)

# By name: a package-level re-export of the function ``quantize`` would shadow the attribute.
quantize_module = importlib.import_module("nncompress.functional.quantize")

RANGES = [
    (bits, signed, narrow) for bits in range(2, 9) for signed in (True, False) for narrow in (False, True)
]
GRANULARITIES = [None, 0, -1]  # per-tensor; per-channel along the first / last axis of a 3-d x
SHAPE = (5, 7, 6)


# --- float64 references ------------------------------------------------------------------------


def bshape(ndim: int, axis: int | None, channels: int) -> tuple[int, ...]:
    """Broadcast shape of per-channel parameters (``()`` per-tensor)."""
    return () if axis is None else tuple(channels if d == axis % ndim else 1 for d in range(ndim))


def ref_qparams(lo: np.ndarray, hi: np.ndarray, qmin: int, qmax: int, symmetric: bool, eps: float = 1e-8):
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    if symmetric:
        levels = qmax if qmin == 0 else min(qmax, -qmin)
        scale = np.maximum(np.maximum(np.abs(lo), np.abs(hi)) / levels, eps).astype(np.float32)
        return scale, np.zeros(lo.shape, np.int32)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.maximum((hi - lo) / (qmax - qmin), eps).astype(np.float32)
    return scale, np.clip(np.rint(qmin - lo / scale.astype(np.float64)), qmin, qmax).astype(np.int32)


def ref_quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int, axis: int | None):
    """``clip(rint(x / s) + z)`` in float64; ``np.rint`` rounds half to even."""
    shape = bshape(x.ndim, axis, scale.size)
    s, z = scale.astype(np.float64).reshape(shape), zp.astype(np.float64).reshape(shape)
    return np.clip(np.rint(x.astype(np.float64) / s) + z, qmin, qmax)


def ref_dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    shape = bshape(q.ndim, axis, scale.size)
    return (q - zp.astype(np.float64).reshape(shape)) * scale.astype(np.float64).reshape(shape)


def off_midpoint_x(scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, axis: int | None, seed: int):
    """float32 values on both sides of and beyond the range, never within 0.05 steps of a midpoint.

    Away from midpoints the float32 ``x * (1/s)`` of the kernels and the float64 ``x / s`` of the
    references round alike, so the comparisons can be exact.
    """
    g = torch.Generator().manual_seed(seed)
    shape = bshape(len(SHAPE), axis, scale.numel())
    level = torch.randint(qmin - 3, qmax + 4, SHAPE, generator=g).double()
    frac = (torch.rand(SHAPE, generator=g, dtype=torch.float64) - 0.5) * 0.9
    s, z = scale.double().reshape(shape), zp.double().reshape(shape)
    return ((level - z + frac) * s).float()


def random_qparams(qmin: int, qmax: int, symmetric: bool, axis: int | None, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = 1 if axis is None else SHAPE[axis]
    lo, hi = -torch.rand(n, generator=g) * 3, torch.rand(n, generator=g) * 2
    if axis is None:
        return scale_zero_point(lo.reshape(()), hi.reshape(()), qmin, qmax, symmetric)
    lo[1] = hi[1] = 0.0  # an all-zero channel: step eps
    lo[-1], hi[-1] = 0.5, 1.5  # an all-positive one
    return scale_zero_point(lo, hi, qmin, qmax, symmetric)


# --- integer ranges and parameters -------------------------------------------------------------


@pytest.mark.parametrize(("bits", "signed", "narrow"), RANGES)
def test_integer_range(bits: int, signed: bool, narrow: bool) -> None:
    qmin, qmax = integer_range(bits, signed, narrow)
    expected = (-(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1 - narrow)
    assert (qmin, qmax) == expected
    assert qmax - qmin + 1 == 2**bits - narrow


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("bits", "signed", "narrow"), RANGES)
def test_scale_zero_point_matches_float64(bits: int, signed: bool, narrow: bool, symmetric: bool) -> None:
    qmin, qmax = integer_range(bits, signed, narrow)
    g = torch.Generator().manual_seed(bits)
    lo = torch.tensor([-1.0, 0.0, 0.5, -3.0, 0.0]) * torch.rand(5, generator=g)
    hi = torch.tensor([2.0, 0.0, 1.0, -1.0, 0.0]) * torch.rand(5, generator=g)
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    for lo_, hi_ in [(lo, hi), (lo[0], hi[0])]:  # per-channel, per-tensor
        scale, zp = scale_zero_point(lo_, hi_, qmin, qmax, symmetric)
        ref_scale, ref_zp = ref_qparams(lo_.numpy(), hi_.numpy(), qmin, qmax, symmetric)
        assert scale.dtype == torch.float32 and zp.dtype == torch.int32 and scale.shape == lo_.shape
        assert np.array_equal(scale.numpy(), ref_scale) and np.array_equal(zp.numpy(), ref_zp)


def test_scale_zero_point_examples() -> None:
    scale, zp = scale_zero_point(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, symmetric=False)
    assert scale.item() == np.float32(4 / 255) and zp.item() == 64
    scale, zp = scale_zero_point(torch.tensor(-2.0), torch.tensor(1.0), -128, 127, symmetric=True)
    assert scale.item() == np.float32(2 / 127) and zp.item() == 0
    scale, zp = scale_zero_point(torch.tensor(0.0), torch.tensor(5.1), 0, 255, symmetric=True)
    assert scale.item() == np.float32(0.02) and zp.item() == 0
    scale, zp = scale_zero_point(torch.tensor(2.0), torch.tensor(3.0), 0, 15, symmetric=False)
    assert scale.item() == np.float32(0.2) and zp.item() == 0  # widened to [0, 3]
    scale, zp = scale_zero_point(torch.tensor(0.0), torch.tensor(0.0), -8, 7, symmetric=False, eps=1e-3)
    assert scale.item() == np.float32(1e-3) and zp.item() == -8


# --- quantize / dequantize / fake_quantize against the reference ----------------------------


@pytest.mark.parametrize("axis", GRANULARITIES)
@pytest.mark.parametrize(("bits", "signed", "narrow"), RANGES)
def test_quantize_dequantize_fake_quantize_match_float64(bits: int, signed: bool, narrow: bool, axis) -> None:
    qmin, qmax = integer_range(bits, signed, narrow)
    for symmetric in (True, False):
        scale, zp = random_qparams(qmin, qmax, symmetric, axis, seed=bits)
        x = off_midpoint_x(scale, zp, qmin, qmax, axis, seed=bits + 100)
        ref_q = ref_quantize(x.numpy(), scale.numpy(), zp.numpy(), qmin, qmax, axis)
        ref_y = ref_dequantize(ref_q, scale.numpy(), zp.numpy(), axis).astype(np.float32)
        q = quantize(x, scale, zp, qmin, qmax, axis)
        assert q.dtype == torch.int32 and np.array_equal(q.numpy(), ref_q)
        y = dequantize(q, scale, zp, axis)
        assert y.dtype == torch.float32 and np.array_equal(y.numpy(), ref_y)
        assert np.array_equal(fake_quantize(x, scale, zp, qmin, qmax, axis).numpy(), ref_y)
        y64 = fake_quantize(x.double(), scale, zp, qmin, qmax, axis)  # float64: the product stays exact
        assert y64.dtype == torch.float64 and np.array_equal(
            y64.numpy(), ref_dequantize(ref_q, scale.numpy(), zp.numpy(), axis)
        )


def test_midpoints_round_half_to_even() -> None:
    scale, zp = torch.tensor(0.25), torch.tensor(3, dtype=torch.int32)  # power of two: x / s is exact
    x = (torch.arange(-20, 21, dtype=torch.float32) + 0.5) * 0.25
    expected = np.clip(np.rint(np.arange(-20, 21) + 0.5) + 3, -8, 7)
    assert np.array_equal(quantize(x, scale, zp, -8, 7).numpy(), expected)
    assert np.array_equal(fake_quantize(x, scale, zp, -8, 7).numpy(), (expected - 3) * 0.25)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_rounds_the_exact_output_once(dtype: torch.dtype) -> None:
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    scale, zp = torch.tensor([0.1, 0.07, 0.3]), torch.tensor([3, -2, 0], dtype=torch.int32)
    for axis, s, z in [(None, scale[:1], zp[:1]), (1, scale, zp)]:
        # x * (1/s) in float32, as for float32 x; (q - z) * s exact, then rounded to dtype
        q = ref_quantize(x.float().numpy(), s.numpy(), z.numpy(), -8, 7, axis)
        y = fake_quantize(x, s, z, -8, 7, axis)  # per-tensor parameters of shape (1,)
        assert y.dtype == dtype
        assert torch.equal(y, torch.from_numpy(ref_dequantize(q, s.numpy(), z.numpy(), axis)).to(dtype))


# --- properties ----------------------------------------------------------------------------------


@st.composite
def quantizers(draw: st.DrawFn):
    """``(qmin, qmax, scale, zero_point)`` per-tensor, from any range of :func:`integer_range`."""
    qmin, qmax = integer_range(draw(st.integers(2, 8)), draw(st.booleans()), draw(st.booleans()))
    scale = draw(st.floats(2.0**-14, 2.0**10, width=32))
    return qmin, qmax, torch.tensor(scale), torch.tensor(draw(st.integers(qmin, qmax)), dtype=torch.int32)


values = st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=40)


@settings(deadline=None)
@given(quantizers(), values)
def test_round_trip_error_at_most_half_a_step_inside_the_range(quantizer, xs) -> None:
    qmin, qmax, scale, zp = quantizer
    s = scale.item()
    lo, hi = (qmin - zp.item()) * s, (qmax - zp.item()) * s
    x = torch.tensor([lo + (v % 1.0) * (hi - lo) for v in xs] + [lo, hi, 0.0], dtype=torch.float32)
    err = (fake_quantize(x, scale, zp, qmin, qmax).double() - x.double()).abs()
    assert bool((err <= s / 2 + 1e-6 * (x.double().abs() + s)).all())


@settings(deadline=None)
@given(quantizers(), values)
def test_idempotent_monotone_on_grid_and_bounded(quantizer, xs) -> None:
    qmin, qmax, scale, zp = quantizer
    x = torch.tensor(sorted(xs), dtype=torch.float32) * scale  # spans the range and beyond
    y = fake_quantize(x, scale, zp, qmin, qmax)
    assert torch.equal(fake_quantize(y, scale, zp, qmin, qmax), y)
    assert bool((y[1:] >= y[:-1]).all())
    assert torch.equal(dequantize(quantize(y, scale, zp, qmin, qmax), scale, zp), y)  # on the grid
    bounds = dequantize(torch.tensor([qmin, qmax], dtype=torch.int32), scale, zp)
    assert bool(((y >= bounds[0]) & (y <= bounds[1])).all())


@settings(deadline=None)
@given(quantizers())
def test_zero_is_exactly_representable(quantizer) -> None:
    qmin, qmax, scale, zp = quantizer
    zero = torch.zeros(3)
    assert torch.equal(fake_quantize(zero, scale, zp, qmin, qmax), zero)
    assert torch.equal(quantize(zero, scale, zp, qmin, qmax), zp.expand(3))


@settings(deadline=None)
@given(
    st.integers(2, 8),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.floats(-1e3, 1e3, width=32),
    st.floats(0, 1e3, width=32),
)
def test_scale_zero_point_covers_the_range(bits, signed, narrow, symmetric, low, width) -> None:
    qmin, qmax = integer_range(bits, signed, narrow)
    lo, hi = torch.tensor(low), torch.tensor(low + width)
    scale, zp = scale_zero_point(lo, hi, qmin, qmax, symmetric)
    fq_zero = fake_quantize(torch.zeros(1), scale, zp, qmin, qmax)
    assert fq_zero.item() == 0.0
    amax = max(abs(lo.item()), abs(hi.item()))
    if symmetric:
        covered = (-amax if signed else 0.0, amax)
    else:
        covered = (min(lo.item(), 0.0), max(hi.item(), 0.0))
    x = torch.linspace(covered[0], covered[1], 101, dtype=torch.float32)
    err = (fake_quantize(x, scale, zp, qmin, qmax).double() - x.double()).abs()
    assert bool((err <= scale.item() / 2 + 1e-6 * (x.double().abs() + scale.item())).all())


# --- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", GRANULARITIES)
def test_fake_quantize_gradient_is_clipped_ste(axis) -> None:
    qmin, qmax = integer_range(4, signed=False, narrow_range=False)
    scale, zp = random_qparams(qmin, qmax, False, axis, seed=3)
    x = off_midpoint_x(scale, zp, qmin, qmax, axis, seed=4).requires_grad_()
    scale.requires_grad_()
    grad = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    fake_quantize(x, scale, zp, qmin, qmax, axis).backward(grad)
    shape = bshape(x.dim(), axis, scale.numel())
    unclamped = np.rint(x.detach().double().numpy() / scale.detach().double().numpy().reshape(shape))
    unclamped += zp.numpy().reshape(shape)
    inside = (unclamped >= qmin) & (unclamped <= qmax)
    assert inside.any() and not inside.all()
    assert x.grad is not None and np.array_equal(x.grad.numpy(), np.where(inside, grad.numpy(), 0.0))
    assert scale.grad is None


def lsq_reference(x, scale, zero_point, qmin, qmax, axis, grad_factor, grad):
    """Plain float64 autograd LSQ+: round and the zero point's round/clamp pass gradients straight."""
    shape = bshape(x.dim(), axis, scale.numel())
    x = x.detach().double().requires_grad_()
    s = scale.detach().double().requires_grad_()
    z = zero_point.detach().double().requires_grad_()
    z_int = z + (torch.clamp(torch.round(z), qmin, qmax) - z).detach()
    t = x / s.reshape(shape)
    q = torch.clamp(t + (torch.round(t) - t).detach() + z_int.reshape(shape), qmin, qmax)
    ((q - z_int.reshape(shape)) * s.reshape(shape)).backward(grad.double())
    return x.grad, s.grad * grad_factor, z.grad * grad_factor


@pytest.mark.parametrize("axis", GRANULARITIES)
@pytest.mark.parametrize("zp_value", [-3.0, -1.5, 0.0, 2.5, 4.2, 40.0])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("fixed", [False, True])
def test_fake_quantize_learnable_gradients_match_float64_lsq(axis, zp_value: float, signed: bool, fixed: bool) -> None:
    """Learned (float) zero points, and fixed (integer) ones, which take the fast path for float32."""
    qmin, qmax = integer_range(5, signed, narrow_range=False)
    scale, _ = random_qparams(qmin, qmax, False, axis, seed=7)
    zero_point = torch.full(scale.shape, zp_value)
    x_zp = torch.round(zero_point).clamp(qmin, qmax).to(torch.int32)
    x = off_midpoint_x(scale, x_zp, qmin, qmax, axis, seed=8)
    grad = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    factor = lsq_grad_factor(x.numel() // scale.numel(), qmax)
    leaves = [t.clone().requires_grad_() for t in (x, scale, zero_point)]
    if fixed:
        leaves[2] = x_zp
    y = fake_quantize_learnable(*leaves, qmin, qmax, axis, grad_factor=factor)
    assert torch.equal(y, fake_quantize(x, scale, x_zp, qmin, qmax, axis))
    y.backward(grad)
    ref_x, ref_s, ref_z = lsq_reference(x, scale, leaves[2], qmin, qmax, axis, factor, grad)
    assert leaves[0].grad is not None and torch.equal(leaves[0].grad.double(), ref_x)
    atol = 1e-5 * factor * grad.abs().sum().item()  # float32 sums of float32 terms
    for got, ref in [(leaves[1].grad, ref_s), (leaves[2].grad, ref_z)][:1 if fixed else 2]:
        assert got is not None and got.shape == ref.shape and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=atol)


def test_fake_quantize_learnable_integer_zero_point_float64_and_1d_per_channel() -> None:
    scale = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64, requires_grad=True)
    zp = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    x = torch.tensor([0.43, -1.27, 9.9, 0.2], dtype=torch.float64, requires_grad=True)  # one per channel
    y = fake_quantize_learnable(x, scale, zp, 0, 15, axis=0)
    assert y.dtype == torch.float64
    y.sum().backward()
    ref_x, ref_s, _ = lsq_reference(x, scale, zp, 0, 15, 0, 1.0, torch.ones(4))
    assert x.grad is not None and scale.grad is not None and scale.grad.dtype == torch.float64
    assert torch.equal(x.grad, ref_x)
    torch.testing.assert_close(scale.grad, ref_s)


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 9, 0, 2.0, True])
def test_integer_range_rejects_bits(bits) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"2\.\.8, got {bits!r}"):
        integer_range(bits, signed=True, narrow_range=False)


@pytest.mark.parametrize("fn", ["quantize", "fake_quantize", "fake_quantize_learnable"])
def test_bad_quantizer_arguments(fn: str) -> None:
    f = getattr(quantize_module, fn)
    x, s, z = torch.randn(4, 3), torch.full((3,), 0.1), torch.zeros(3, dtype=torch.int32)
    with pytest.raises(
        InvalidArgumentError, match=r"shape \(3, 3\) must have shape \(4,\), got \(3,\)|\(4,\), got \(3,\)"
    ):
        f(x, s, z, -8, 7, 0)
    with pytest.raises(InvalidArgumentError, match=r"shapes differ: \(3,\), \(2,\)"):
        f(x, s, z[:2], -8, 7, 1)
    with pytest.raises(
        InvalidArgumentError, match=r"axis=None needs scale of shape \(\) or \(1,\), got \(3,\)"
    ):
        f(x, s, z, -8, 7)
    with pytest.raises(InvalidArgumentError, match=r"axis must be None or an int in \[-2, 1\], got 2"):
        f(x, s, z, -8, 7, 2)
    for bad_scale in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="scale must be finite and > 0"):
            f(x, torch.tensor([0.1, bad_scale, 0.1]), z, -8, 7, 1)
    with pytest.raises(InvalidArgumentError, match=r"zero_point in \[-8, 7\]"):
        f(x, s, torch.tensor([0, 8, 0], dtype=torch.int32), -8, 7, 1)
    for qmin, qmax in [(1, 7), (-8, 0), (-8, -9), (0, 2**31)]:
        with pytest.raises(InvalidArgumentError, match=rf"got \({qmin}, {qmax}\)"):
            f(x, s, z, qmin, qmax, 1)
    with pytest.raises(
        InvalidArgumentError, match="x must be a floating-point tensor, got dtype torch.int64"
    ):
        f(torch.ones(4, 3, dtype=torch.int64), s, z, -8, 7, 1)
    with pytest.raises(InvalidArgumentError, match="scale must be a floating-point tensor"):
        f(x, torch.ones(3, dtype=torch.int32), z, -8, 7, 1)


def test_bad_zero_point_dtypes_and_grad_factor() -> None:
    x, s = torch.randn(4, 3), torch.tensor(0.1)
    with pytest.raises(
        InvalidArgumentError, match="zero_point must be an integer tensor, got dtype torch.float32"
    ):
        fake_quantize(x, s, torch.tensor(0.0), -8, 7)
    with pytest.raises(InvalidArgumentError, match="q, zero_point must be integer tensors"):
        dequantize(torch.zeros(3), s, torch.tensor(0))
    with pytest.raises(InvalidArgumentError, match="scale must be finite and > 0"):
        dequantize(torch.zeros(3, dtype=torch.int32), torch.tensor(0.0), torch.tensor(0))
    for gf in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="grad_factor must be a finite float > 0"):
            fake_quantize_learnable(x, s, torch.tensor(0.0), -8, 7, grad_factor=gf)
    with pytest.raises(InvalidArgumentError, match="numel must be an int > 0, got 0"):
        lsq_grad_factor(0, 7)


def test_bad_scale_zero_point_arguments() -> None:
    one, two = torch.tensor(1.0), torch.tensor(2.0)
    with pytest.raises(InvalidArgumentError, match="min_val <= max_val"):
        scale_zero_point(two, one, -8, 7, symmetric=False)
    with pytest.raises(InvalidArgumentError, match="min_val <= max_val"):
        scale_zero_point(torch.tensor(float("nan")), one, -8, 7, symmetric=True)
    with pytest.raises(InvalidArgumentError, match=r"share a shape \(\) or \(C,\), got \(2,\), \(\)"):
        scale_zero_point(torch.zeros(2), one, -8, 7, symmetric=True)
    with pytest.raises(InvalidArgumentError, match=r"got \(2, 2\), \(2, 2\)"):
        scale_zero_point(torch.zeros(2, 2), torch.ones(2, 2), -8, 7, symmetric=True)
    with pytest.raises(InvalidArgumentError, match="eps must be"):
        scale_zero_point(one, two, -8, 7, symmetric=True, eps=0.0)
    with pytest.raises(InvalidArgumentError, match=r"got \(3, 7\)"):
        scale_zero_point(one, two, 3, 7, symmetric=True)


def test_docstring_examples() -> None:
    assert doctest.testmod(quantize_module).failed == 0


def test_learnable_step_gradient_is_accurate_on_large_tensors() -> None:
    """The step gradient sums a million small rounding residuals: no float32 cancellation."""
    gen = torch.Generator().manual_seed(0)
    # values next to grid points: tiny residuals, large values (where naive sums lose precision)
    on_grid = torch.round(torch.randn(1_000_000, generator=gen).clamp(-3, 3) * 30) * 0.02  # all in range
    x = on_grid + torch.randn(1_000_000, generator=gen) * 1e-4
    grad = torch.randn(1_000_000, generator=gen)
    scale = torch.tensor(0.02, requires_grad=True)
    zero = torch.tensor(0, dtype=torch.int32)
    y = fake_quantize_learnable(x, scale, zero, -128, 127, None, 1.0)
    y.backward(grad)
    x64, g64 = x.double(), grad.double()
    t = x64 * (1 / torch.tensor(0.02, dtype=torch.float32).double())
    q = torch.round(t)
    inside = (q >= -128) & (q <= 127)
    expected = (g64 * torch.where(inside, q - t, q.clamp(-128, 127))).sum()
    assert scale.grad is not None
    # sum(g * y) - sum(g * x) in float32 would be off by about 0.6% here
    assert abs(float(scale.grad) - float(expected)) <= 1e-4 * abs(float(expected))


@pytest.mark.parametrize("axis", GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("zero", ["none", "int", "float"])
def test_min_scale_and_zero_point_none_equal_the_autograd_composition(axis, dtype: torch.dtype, zero: str) -> None:
    """``min_scale`` and ``zero_point=None`` give bit for bit what autograd's abs, clamp_min and zeros give."""
    qmin, qmax = integer_range(6, signed=True, narrow_range=False)
    scale, zp = random_qparams(qmin, qmax, zero == "none", axis, seed=11)
    raw = -scale  # a step trained negative (|s| is used)
    if axis is not None:
        raw[2:] = scale[2:]
        raw[1] = 1e-12  # below min_scale: no gradient
    zp = {"none": None, "int": zp, "float": zp.float() + 0.3}[zero]
    x = off_midpoint_x(scale, torch.zeros_like(scale, dtype=torch.int32) if zp is None else zp.round().int(),
                       qmin, qmax, axis, seed=12).to(dtype)
    grad = torch.randn(SHAPE, generator=torch.Generator().manual_seed(13), dtype=dtype)
    results = []
    for fused in (True, False):
        xs, s = x.clone().requires_grad_(), raw.clone().requires_grad_()
        z = zp.clone().requires_grad_(zp.is_floating_point()) if zp is not None else None
        if fused:
            y = fake_quantize_learnable(xs, s, z, qmin, qmax, axis, grad_factor=0.3, min_scale=1e-8)
        else:
            z_ref = torch.zeros(scale.shape, dtype=torch.int32) if z is None else z
            y = fake_quantize_learnable(xs, s.abs().clamp_min(1e-8), z_ref, qmin, qmax, axis, grad_factor=0.3)
        y.backward(grad)
        results.append((y.detach(), xs.grad, s.grad, None if z is None else z.grad))
    for got, ref in zip(*results):
        assert (got is None and ref is None) or torch.equal(got, ref)
    if axis is not None:
        assert results[0][2] is not None and float(results[0][2][1]) == 0.0
