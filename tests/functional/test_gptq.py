"""GPTQ against a plain float64 column-loop reference, and its error against round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from nncompress.errors import InvalidArgumentError
from nncompress.functional.activation_stats import hessian_accumulate
from nncompress.functional.gptq import gptq_quantize
from nncompress.functional.scale_estimation import estimate_scales
from nncompress.functional.weight_quant import (
    QuantizedWeight,
    WeightQuantSpec,
    compute_scale,
    dequantize_codes,
    dequantize_weight,
    grouped,
    quantize_weight,
)


def _correlated_inputs(t: int, k: int, seed: int = 0) -> torch.Tensor:
    """Tokens with correlated channels and a few loud ones, float64 ``[t, k]``."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g, dtype=torch.float64) / k**0.5 + torch.eye(k, dtype=torch.float64)
    x = torch.randn(t, k, generator=g, dtype=torch.float64) @ mix
    x[:, : max(1, k // 8)] *= 6
    return x


def _reference_gptq(w: torch.Tensor, h: torch.Tensor, spec: WeightQuantSpec, damp: float) -> QuantizedWeight:
    """GPTQ written plainly: one column at a time, every update applied at once (float64)."""
    w = w.clone()
    h = h.clone()
    n, k = w.shape
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.diagonal(h).mean() * torch.eye(k, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    g = k if spec.group_size == -1 else spec.group_size
    groups = -(-k // g)
    scale = torch.zeros(n, groups, dtype=w.dtype)
    zp = None if spec.symmetric else torch.zeros(n, groups, dtype=torch.int16)
    codes = torch.zeros(n, k, dtype=torch.int16)
    for j in range(k):
        gi = j // g
        if j % g == 0:
            s, z = compute_scale(w[:, j:j + g], spec.with_group_size(-1))
            scale[:, gi] = s[:, 0]
            if zp is not None and z is not None:
                zp[:, gi] = z[:, 0]
        z_col = None if zp is None else zp[:, gi:gi + 1]
        q = quantize_weight(w[:, j:j + 1], spec.with_group_size(-1), scale[:, gi:gi + 1], z_col)
        codes[:, j] = q.codes[:, 0]
        value = dequantize_codes(q.codes, scale[:, gi:gi + 1], z_col, spec, 1)[:, 0]
        e = (w[:, j] - value) / u[j, j]
        w[:, j + 1:] -= e.unsqueeze(1) * u[j, j + 1:].unsqueeze(0)
    padded = torch.zeros(n, groups * g, dtype=torch.int16)
    padded[:, :k] = codes
    return QuantizedWeight(padded, scale, zp, spec, k)


def _output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float(((x @ (w - w_hat.to(w.dtype)).T) ** 2).sum())


@pytest.mark.parametrize(
    ("mode", "group_size", "block_size"),
    [("int4_sym", 8, 5), ("int4_asym", 16, 16), ("nf4", 12, 7), ("int8_sym", -1, 11), ("int8_asym", 8, 3),
     ("int4_sym", 16, 64), ("int4_asym", -1, 4)],
)
def test_matches_plain_reference(mode: str, group_size: int, block_size: int) -> None:
    k, n = 40, 6  # 40 is not a multiple of 12 or 16: ragged last groups
    x = _correlated_inputs(200, k)
    h, _ = hessian_accumulate(None, 0, x)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = WeightQuantSpec.from_mode(mode, group_size)
    got = gptq_quantize(w, h, spec, damp_percent=0.05, block_size=block_size)
    ref = _reference_gptq(w, h, spec, 0.05)
    assert torch.equal(got.codes[:, :k], ref.codes[:, :k])
    torch.testing.assert_close(got.scale, ref.scale, rtol=1e-9, atol=1e-12)
    if ref.zero_point is not None:
        assert got.zero_point is not None and torch.equal(got.zero_point, ref.zero_point)
    # codes are consistent with the scales: the padded layout dequantizes as quantize_weight's does
    assert got.codes.shape == quantize_weight(w, spec).codes.shape


@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym", "nf4", "int8_asym"])
def test_output_error_below_rtn(mode: str) -> None:
    k, n = 64, 32
    x = _correlated_inputs(512, k, seed=1).float()
    h, _ = hessian_accumulate(None, 0, x)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(4))
    spec = WeightQuantSpec.from_mode(mode, 16)
    rtn = _output_error(x, w, dequantize_weight(quantize_weight(w, spec)))
    gptq = _output_error(x, w, dequantize_weight(gptq_quantize(w, h, spec, damp_percent=0.01, block_size=16)))
    assert gptq < 0.8 * rtn


def test_scale_fn_is_called_per_group_with_current_columns() -> None:
    k, n = 24, 5
    x = _correlated_inputs(100, k).float()
    h, _ = hessian_accumulate(None, 0, x)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(5))
    spec = WeightQuantSpec.from_mode("int4_sym", 8)
    seen: list[tuple[int, int]] = []
    importance = (x * x).mean(dim=0)

    def se_scale(cols: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        seen.append((first, cols.shape[1]))
        qw = estimate_scales(cols, spec.with_group_size(-1), importance[first:first + cols.shape[1]])
        return qw.scale[:, 0], None

    qw = gptq_quantize(w, h, spec, block_size=5, scale_fn=se_scale)
    assert seen == [(0, 8), (8, 8), (16, 8)]
    rtn = _output_error(x, w, dequantize_weight(quantize_weight(w, spec)))
    assert _output_error(x, w, dequantize_weight(qw)) < rtn


def test_dead_inputs_become_zero() -> None:
    k, n = 16, 4
    x = _correlated_inputs(64, k)
    x[:, 3] = 0
    h, _ = hessian_accumulate(None, 0, x)
    w = torch.randn(n, k, dtype=torch.float64)
    qw = gptq_quantize(w, h, WeightQuantSpec.from_mode("int4_asym", 8))
    assert torch.all(dequantize_weight(qw)[:, 3] == 0)
    assert torch.isfinite(qw.scale).all()


def test_bad_arguments() -> None:
    w = torch.randn(4, 8)
    spec = WeightQuantSpec.from_mode("int4_sym", 4)
    with pytest.raises(InvalidArgumentError, match="hessian"):
        gptq_quantize(w, torch.eye(7), spec)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        gptq_quantize(w, torch.eye(8), spec, block_size=0)
    with pytest.raises(InvalidArgumentError, match="damp_percent"):
        gptq_quantize(w, torch.eye(8), spec, damp_percent=0.0)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        gptq_quantize(torch.randn(8), torch.eye(8), spec)


def test_grouped_padding_matches_quantize_weight_layout() -> None:
    w = torch.randn(3, 10, dtype=torch.float64)
    spec = WeightQuantSpec.from_mode("int4_asym", 4)
    qw = gptq_quantize(w, torch.eye(10, dtype=torch.float64), spec)
    # padded columns hold the code of zero
    zero_codes = quantize_weight(torch.zeros(3, 12, dtype=torch.float64), spec, qw.scale, qw.zero_point).codes
    assert torch.equal(qw.codes[:, 10:], zero_codes[:, 10:])
    assert grouped(dequantize_weight(qw), 4).shape == (3, 3, 4)
