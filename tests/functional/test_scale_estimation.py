"""Scale estimation: never worse than its start on the weighted error, better on average."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional.scale_estimation import estimate_scales, weighted_group_error
from nncompress.functional.weight_quant import (
    WeightQuantSpec,
    compute_scale,
    dequantize_weight,
    grouped,
    quantize_weight,
)


def _weighted_error(w: torch.Tensor, w_hat: torch.Tensor, a: torch.Tensor, group_size: int) -> torch.Tensor:
    """Plain float64 ``sum_k a_k (w_k - w_hat_k)^2`` per row and group, ``[N, G]``."""
    d = grouped((w.double() - w_hat.double()) ** 2 * a.double(), group_size)
    return d.sum(dim=-1)


def test_weighted_group_error_matches_plain() -> None:
    w = torch.randn(5, 20, dtype=torch.float64)
    a = torch.rand(20, dtype=torch.float64)
    for mode in ("int4_sym", "int4_asym", "nf4"):
        spec = WeightQuantSpec.from_mode(mode, 8)
        s, z = compute_scale(w, spec)
        got = weighted_group_error(grouped(w, 8), grouped(a.unsqueeze(0), 8)[0], s, z, spec)
        want = _weighted_error(w, dequantize_weight(quantize_weight(w, spec)), a, 8)
        torch.testing.assert_close(got, want)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["int4_sym", "int4_asym", "nf4", "int8_sym", "int8_asym"]),
    group_size=st.sampled_from([-1, 4, 8, 10]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_never_worse_per_group(seed: int, mode: str, group_size: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(6, 26, generator=g) * torch.rand(6, 1, generator=g) * 3).to(dtype)
    a = torch.rand(26, generator=g) ** 4 * 10
    spec = WeightQuantSpec.from_mode(mode, group_size)
    qw = estimate_scales(w, spec, a, initial_steps=5, scale_steps=3)
    before = _weighted_error(w, dequantize_weight(quantize_weight(w, spec)), a, group_size)
    after = _weighted_error(w, dequantize_weight(qw), a, group_size)
    assert bool((after <= before).all())
    assert qw.scale.dtype == dtype
    if not spec.symmetric:  # the zero point is kept
        start_zero_point = compute_scale(w, spec)[1]
        assert qw.zero_point is not None and start_zero_point is not None
        assert torch.equal(qw.zero_point, start_zero_point)


@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym", "nf4"])
def test_improves_weighted_error(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g)
    a = torch.rand(128, generator=g) ** 6 * 100  # heavy-tailed channel importance
    spec = WeightQuantSpec.from_mode(mode, 32)
    before = _weighted_error(w, dequantize_weight(quantize_weight(w, spec)), a, 32).sum()
    after = _weighted_error(w, dequantize_weight(estimate_scales(w, spec, a)), a, 32).sum()
    assert after < 0.85 * before


def test_explicit_start_and_dead_groups() -> None:
    w = torch.randn(3, 16)
    w[1, :8] = 0  # a group of zeros keeps its start scale (no error to reduce)
    a = torch.ones(16)
    spec = WeightQuantSpec.from_mode("int4_sym", 8)
    s0, _ = compute_scale(w, spec)
    qw = estimate_scales(w, spec, a, scale=s0 * 1.5)
    assert torch.isfinite(qw.scale).all() and qw.scale[1, 0] == 1.5 * s0[1, 0]
    before = _weighted_error(w, dequantize_weight(quantize_weight(w, spec, s0 * 1.5)), a, 8)
    assert bool((_weighted_error(w, dequantize_weight(qw), a, 8) <= before).all())
    zero_a = estimate_scales(w, spec, torch.zeros(16))  # no importance: nothing can improve
    assert torch.equal(zero_a.scale, s0)


def test_bad_arguments() -> None:
    spec = WeightQuantSpec.from_mode("int4_sym", 8)
    w = torch.randn(3, 16)
    with pytest.raises(InvalidArgumentError, match="act_importance"):
        estimate_scales(w, spec, torch.ones(8))
    with pytest.raises(InvalidArgumentError, match="act_importance"):
        estimate_scales(w, spec, -torch.ones(16))
    with pytest.raises(InvalidArgumentError, match="initial_steps"):
        estimate_scales(w, spec, torch.ones(16), initial_steps=0)
    with pytest.raises(InvalidArgumentError, match="zero point"):
        estimate_scales(w, WeightQuantSpec.from_mode("int4_asym", 8), torch.ones(16), scale=torch.ones(3, 2))
