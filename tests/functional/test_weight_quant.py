"""Weight-only quantization math against a plain float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import (
    MODES,
    NF4_LEVELS,
    WeightQuantSpec,
    compute_scale,
    dequantize_weight,
    pack_int4,
    quantize_weight,
    unpack_int4,
)


def reference(w: np.ndarray, mode: str, group: int) -> np.ndarray:
    """Quantize-dequantize ``w`` group by group with plain numpy loops (ragged last group)."""
    n, k = w.shape
    g = k if group == -1 else group
    out = np.zeros_like(w)
    for r in range(n):
        for c0 in range(0, k, g):
            x = w[r, c0:c0 + g]
            if mode == "nf4":
                s = np.abs(x).max() or 1.0
                levels = np.array(NF4_LEVELS)
                idx = np.array([np.argmin(np.abs(levels - v / s) + 1e-12 * (levels < v / s)) for v in x])
                out[r, c0:c0 + g] = levels[idx] * s
                continue
            bits = int(mode[3])
            if mode.endswith("_sym"):
                if bits == 8:
                    s, lo, hi = np.abs(x).max() / 127, -128, 127
                else:
                    s, lo, hi = x[np.argmax(np.abs(x))] / -8, -8, 7
                s = s or 1.0
                out[r, c0:c0 + g] = np.clip(np.round(x / s), lo, hi) * s
            else:
                qmax = 2**bits - 1
                mn, mx = min(x.min(), 0.0), max(x.max(), 0.0)
                s = (mx - mn) / qmax or 1.0
                z = np.clip(np.round(-mn / s), 0, qmax)
                out[r, c0:c0 + g] = (np.clip(np.round(x / s) + z, 0, qmax) - z) * s
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", [-1, 16, 24, 7])
def test_matches_float64_reference(mode: str, group: int) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 40)) * rng.uniform(0.01, 3, (5, 1))
    got = dequantize_weight(quantize_weight(torch.from_numpy(w), WeightQuantSpec.from_mode(mode, group)))
    np.testing.assert_allclose(got.numpy(), reference(w, mode, group), rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 70), group=st.sampled_from([-1, 8, 32, 64]),
       mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_error_bounded_by_half_step(n: int, k: int, group: int, mode: str, seed: int) -> None:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spec = WeightQuantSpec.from_mode(mode, group)
    qw = quantize_weight(w, spec)
    err = (dequantize_weight(qw) - w).abs()
    g = qw.group_size
    step = qw.scale.abs().repeat_interleave(g, dim=1)[:, :k]
    if mode == "nf4":  # largest gap between neighbouring NF4 levels, halved
        bound = step * max(b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:])) / 2
    elif mode == "int4_sym":  # the level +8 is missing: values near +8 s round down to 7 s
        bound = step
    else:
        bound = step / 2
    assert bool((err <= bound * (1 + 1e-9) + 1e-12).all())
    lo, hi = spec.code_range
    assert int(qw.codes.min()) >= lo and int(qw.codes.max()) <= hi


def test_int4_sym_extreme_is_exact_and_asym_holds_zero() -> None:
    w = torch.tensor([[0.3, -0.1, 1.6, 0.2], [-2.0, 0.5, 0.25, 0.0]], dtype=torch.float64)
    qw = quantize_weight(w, WeightQuantSpec.from_mode("int4_sym", 4))
    assert qw.codes[0, 2] == -8 and qw.codes[1, 0] == -8
    assert dequantize_weight(qw)[0, 2] == 1.6 and dequantize_weight(qw)[1, 0] == -2.0
    pos = torch.tensor([[0.5, 1.0, 2.0, 3.0]], dtype=torch.float64)
    for mode in ("int4_asym", "int8_asym"):
        qa = quantize_weight(torch.cat([pos, torch.zeros(1, 4, dtype=torch.float64)], dim=1),
                             WeightQuantSpec.from_mode(mode, -1))
        assert bool((dequantize_weight(qa)[0, 4:] == 0).all())


def test_ragged_group_scale_ignores_padding() -> None:
    w = torch.randn(3, 70, dtype=torch.float64)
    for mode in MODES:
        scale, _ = compute_scale(w, WeightQuantSpec.from_mode(mode, 32))
        tail, _ = compute_scale(w[:, 64:], WeightQuantSpec.from_mode(mode, -1))
        assert scale.shape == (3, 3)
        torch.testing.assert_close(scale[:, 2:], tail)


@pytest.mark.parametrize("signed", [True, False])
def test_pack_int4_round_trip_and_nibble_order(signed: bool) -> None:
    lo = -8 if signed else 0
    codes = torch.randint(lo, lo + 16, (4, 10), dtype=torch.int16)
    packed = pack_int4(codes, signed)
    assert packed.dtype == torch.uint8 and packed.shape == (4, 5)
    assert torch.equal(unpack_int4(packed, signed), codes)
    offset = 8 if signed else 0
    assert int(packed[0, 0]) == (int(codes[0, 0]) + offset) | ((int(codes[0, 1]) + offset) << 4)


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="int3"):
        WeightQuantSpec.from_mode("int3_sym")
    with pytest.raises(InvalidArgumentError, match="group_size"):
        WeightQuantSpec(4, True, group_size=0)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        quantize_weight(torch.tensor([[1.0, float("nan")]]), WeightQuantSpec.from_mode("int8_sym"))
    with pytest.raises(InvalidArgumentError, match="2-D"):
        quantize_weight(torch.ones(3), WeightQuantSpec.from_mode("int8_sym"))
    with pytest.raises(InvalidArgumentError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int16), True)
