"""SmoothQuant scales, ranges after a channel factor and bias shifts against float64 references."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from nncompress.errors import InvalidArgumentError
from nncompress.functional.quantize import fake_quantize
from nncompress.functional.smoothing import bias_shift, scaled_tensor_range, smooth_quant_scales

SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 1.0), channels=st.integers(1, 16))
def test_smooth_quant_scales_match_formula_and_keep_the_product(seed: int, alpha: float, channels: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, channels, generator=gen) * torch.rand(channels, generator=gen).mul(20)
    w = torch.randn(5, channels, generator=gen)
    a, m = x.abs().amax(0), w.abs().amax(0)
    s = smooth_quant_scales(a, m, alpha)
    ref = np.maximum(a.double().numpy() ** alpha / m.double().numpy() ** (1 - alpha), 1e-5)
    np.testing.assert_allclose(s.double().numpy(), ref, rtol=1e-6)
    # x W^T == (x / s) (W s)^T
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, rtol=1e-4, atol=1e-4)


def test_smooth_quant_scales_equalise_ranges_at_half() -> None:
    s = smooth_quant_scales(torch.tensor([16.0, 1.0]), torch.tensor([1.0, 4.0]), 0.5)
    # after smoothing, activation and weight maxima are equal per channel: sqrt(a * w)
    torch.testing.assert_close(torch.tensor([16.0, 1.0]) / s, torch.tensor([1.0, 4.0]) * s)


def test_smooth_quant_scales_leave_empty_channels_alone() -> None:
    s = smooth_quant_scales(torch.tensor([0.0, 3.0, 2.0]), torch.tensor([1.0, 0.0, 2.0]), 0.8)
    assert s[:2].tolist() == [1.0, 1.0] and float(s[2]) == pytest.approx(2.0**0.8 / 2.0**0.2)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_smooth_quant_alpha_outside_0_1_is_refused(alpha: float) -> None:
    with pytest.raises(InvalidArgumentError, match="smooth_quant_alpha must be in"):
        smooth_quant_scales(torch.ones(2), torch.ones(2), alpha)


def test_smooth_quant_shapes_must_match() -> None:
    with pytest.raises(InvalidArgumentError, match="1-d of one size"):
        smooth_quant_scales(torch.ones(2), torch.ones(3), 0.5)


@SETTINGS
@given(seed=st.integers(0, 10_000), batches=st.integers(1, 6), channels=st.integers(1, 8),
       estimator=st.sampled_from(["min_max", "mean_min_max"]))
def test_scaled_range_equals_range_of_scaled_batches(seed: int, batches: int, channels: int, estimator: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    data = [torch.randn(7, channels, generator=gen).double() * 3 for _ in range(batches)]
    factor = torch.rand(channels, generator=gen).double() + 0.1
    lo, hi = scaled_tensor_range(torch.stack([d.amin(0) for d in data]), torch.stack([d.amax(0) for d in data]),
                                 factor, estimator)
    per_batch = [((d * factor).min().item(), (d * factor).max().item()) for d in data]
    if estimator == "min_max":
        ref = (min(p[0] for p in per_batch), max(p[1] for p in per_batch))
    else:
        ref = (float(np.mean([p[0] for p in per_batch])), float(np.mean([p[1] for p in per_batch])))
    assert float(lo) == pytest.approx(ref[0], rel=1e-9) and float(hi) == pytest.approx(ref[1], rel=1e-9)


def test_scaled_range_refuses_other_estimators_and_bad_factors() -> None:
    with pytest.raises(InvalidArgumentError, match="estimator must be"):
        scaled_tensor_range(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(2), "percentile")
    with pytest.raises(InvalidArgumentError, match="positive"):
        scaled_tensor_range(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([1.0, 0.0]), "min_max")


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_bias_shift_is_the_mean_output_error_of_a_linear_layer(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 6, generator=gen).double() + 1.0
    w = torch.randn(4, 6, generator=gen).double()
    wq = fake_quantize(w, torch.full((4,), 0.2, dtype=torch.float64), torch.zeros(4, dtype=torch.int32), -127, 127, 0)
    shift = bias_shift(w, wq, x.mean(0))
    ref = (x @ w.T - x @ wq.T).mean(0)  # the mean error the shift removes
    torch.testing.assert_close(shift, ref)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_bias_shift_matches_conv_mean_error_without_padding(groups: int) -> None:
    gen = torch.Generator().manual_seed(groups)
    x = torch.rand(3, 4, 6, 6, generator=gen).double()
    w = torch.randn(8, 4 // groups, 3, 3, generator=gen).double()
    wq = (w * 5).round() / 5
    # with a spatially constant mean (no padding), mean(conv(x)) = kernel sums times channel means
    const = x.mean(dim=(0, 2, 3)).reshape(1, 4, 1, 1).expand(1, 4, 6, 6)
    ref = (F.conv2d(const, w, groups=groups) - F.conv2d(const, wq, groups=groups)).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bias_shift(w, wq, x.mean(dim=(0, 2, 3)), groups), ref)


def test_bias_shift_checks_shapes() -> None:
    with pytest.raises(InvalidArgumentError, match="mean_input must have shape"):
        bias_shift(torch.ones(4, 3), torch.ones(4, 3), torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="one shape"):
        bias_shift(torch.ones(4, 3), torch.ones(4, 2), torch.ones(3))
