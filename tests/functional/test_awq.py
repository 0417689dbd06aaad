"""AWQ's search against output errors computed plainly in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional.activation_stats import hessian_accumulate
from nncompress.functional.awq import alpha_grid, awq_scales, awq_search, awq_search_from_stats
from nncompress.functional.weight_quant import WeightQuantSpec, dequantize_weight, quantize_weight


def _inputs_with_outliers(t: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g)
    x[:, torch.randperm(k, generator=g)[: max(1, k // 10)]] *= 20  # a few loud channels, as in LLMs
    return x


def _error(x: torch.Tensor, w: torch.Tensor, w_eff: torch.Tensor) -> float:
    """``||x W^T - x W_eff^T||^2 / T`` in float64."""
    return float(((x.double() @ (w.double() - w_eff.double()).T) ** 2).sum()) / x.shape[0]


def test_scales_formula() -> None:
    m = torch.tensor([0.0, 1.0, 4.0, 16.0])
    torch.testing.assert_close(awq_scales(m, 0.0), torch.ones(4, dtype=torch.float64))
    s = awq_scales(m, 0.5)
    c = m.double().clamp(min=1e-6 * 16) ** 0.5
    torch.testing.assert_close(s, c / torch.sqrt(c.max() * c.min()))
    assert float(s.max() * s.min()) == pytest.approx(1.0)
    assert alpha_grid(0.0, 1.0, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert alpha_grid(0.3, 1.0, 1) == [0.3]


@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym", "nf4"])
def test_beats_rtn_with_outlier_channels(mode: str) -> None:
    k, n = 64, 48
    x = _inputs_with_outliers(256, k)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    spec = WeightQuantSpec.from_mode(mode, 32)
    res = awq_search(w, x, spec, alpha_grid(0.0, 1.0, 11))
    w_eff = dequantize_weight(res.qweight) * res.input_multiplier
    rtn = _error(x, w, dequantize_weight(quantize_weight(w, spec)))
    awq = _error(x, w, w_eff)
    assert res.alpha > 0
    assert awq < 0.9 * rtn
    # the reported errors are the plain ones (alpha 0 is RTN)
    assert float(res.errors[0]) == pytest.approx(rtn, rel=1e-4)
    assert float(res.errors.min()) == pytest.approx(awq, rel=1e-4)


def test_chunking_and_stats_paths_agree() -> None:
    x = _inputs_with_outliers(100, 32, seed=2)
    w = torch.randn(8, 32)
    spec = WeightQuantSpec.from_mode("int4_asym", 16)
    a = awq_search(w, x.reshape(4, 25, 32), spec, [0.0, 0.5, 1.0], chunk_tokens=7)
    h, _ = hessian_accumulate(None, 0, x)
    b = awq_search_from_stats(w, x.abs().double().mean(dim=0), h, spec, [0.0, 0.5, 1.0])
    assert a.alpha == b.alpha
    torch.testing.assert_close(a.errors, b.errors, rtol=1e-5, atol=0)
    assert torch.equal(a.qweight.codes, b.qweight.codes)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["int4_sym", "int4_asym", "nf4", "int8_sym"]),
    group_size=st.sampled_from([-1, 4, 8, 12]),
)
def test_never_worse_than_rtn(seed: int, mode: str, group_size: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = 24
    x = torch.randn(40, k, generator=g) * torch.rand(k, generator=g) * 5
    w = torch.randn(6, k, generator=g)
    spec = WeightQuantSpec.from_mode(mode, group_size)
    res = awq_search(w, x, spec, alpha_grid(0.0, 1.0, 6))
    rtn = _error(x, w, dequantize_weight(quantize_weight(w, spec)))
    awq = _error(x, w, dequantize_weight(res.qweight) * res.input_multiplier)
    assert awq <= rtn * (1 + 1e-4) + 1e-9


def test_dead_channels_stay_finite() -> None:
    x = torch.randn(30, 16)
    x[:, 2] = 0
    w = torch.randn(4, 16)
    res = awq_search(w, x, WeightQuantSpec.from_mode("int4_sym", 8), [0.0, 1.0])
    assert torch.isfinite(res.input_multiplier).all()
    assert torch.isfinite(res.qweight.scale).all()


def test_bad_arguments() -> None:
    spec = WeightQuantSpec.from_mode("int4_sym", 8)
    with pytest.raises(InvalidArgumentError, match="input channels"):
        awq_search(torch.randn(4, 16), torch.randn(5, 8), spec, [0.0])
    with pytest.raises(InvalidArgumentError, match="alpha"):
        awq_search(torch.randn(4, 16), torch.randn(5, 16), spec, [])
    with pytest.raises(InvalidArgumentError, match="tokens"):
        awq_search(torch.randn(4, 16), torch.randn(0, 16), spec, [0.0])
    with pytest.raises(InvalidArgumentError, match="hessian"):
        awq_search_from_stats(torch.randn(4, 16), torch.ones(16), torch.eye(8), spec, [0.0])
