"""Magnitude-sparsity math against numpy float64 references, NNCF 2.x's formulas and properties."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional import sparsity
from nncompress.functional.sparsity import (
    DEFAULT_WEIGHT_IMPORTANCE,
    WEIGHT_IMPORTANCE_MODES,
    binary_mask,
    global_threshold,
    local_threshold,
    sparsity_rate,
    weight_importance,
)

levels = st.floats(0.0, 1.0)


def distinct_values(n: int, seed: int) -> torch.Tensor:
    """``n`` distinct float32 values in random order: a shuffled, shifted ``arange``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(n, generator=g).to(torch.float32) - n / 3) * 0.37


def ref_threshold(values: np.ndarray, level: float) -> float:
    """Plain numpy reference: the k-th smallest value by a full sort, k = round(level * n)."""
    k = round(level * values.size)
    return -math.inf if k == 0 else float(np.sort(values, axis=None)[k - 1])


def nncf_threshold(values: np.ndarray, level: float) -> float:
    """NNCF 2.x ``MagnitudeSparsityController._select_threshold``: sorted[int((n - 1) * level)]."""
    flat = np.sort(values, axis=None)
    return float(flat[int((flat.size - 1) * level)])


# --- weight importance -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_abs_importance_matches_numpy(dtype: torch.dtype) -> None:
    w = torch.randn(7, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(weight_importance(w, "abs").numpy(), np.abs(w.numpy()))


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_normed_abs_importance_matches_numpy_float64(dtype: torch.dtype, rtol: float) -> None:
    w = torch.randn(16, 3, 3, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))
    w64 = w.numpy().astype(np.float64)
    expected = np.abs(w64) / np.linalg.norm(w64.ravel())
    np.testing.assert_allclose(weight_importance(w, "normed_abs").numpy(), expected, rtol=rtol, atol=0)


def test_normed_abs_is_bitwise_nncf_formula() -> None:
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(weight_importance(w, "normed_abs"), torch.abs(w) / w.norm(2))


def test_normed_abs_of_zero_weight_is_zero_not_nan() -> None:
    assert torch.equal(weight_importance(torch.zeros(3, 4), "normed_abs"), torch.zeros(3, 4))


@pytest.mark.parametrize("mode", WEIGHT_IMPORTANCE_MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_importance_keeps_shape_dtype_and_is_detached(mode: str, dtype: torch.dtype) -> None:
    w = torch.randn(4, 6).to(dtype).requires_grad_()
    importance = weight_importance(w, mode)
    assert importance.shape == w.shape and importance.dtype == dtype
    assert not importance.requires_grad and importance.grad_fn is None


def test_default_weight_importance_is_nncf_default() -> None:
    assert DEFAULT_WEIGHT_IMPORTANCE == "normed_abs" and DEFAULT_WEIGHT_IMPORTANCE in WEIGHT_IMPORTANCE_MODES


# --- thresholds --------------------------------------------------------------------------------


@given(st.integers(1, 300), levels, st.integers(0, 2**31 - 1))
def test_local_threshold_zeroes_round_level_n(n: int, level: float, seed: int) -> None:
    importance = distinct_values(n, seed)
    t = local_threshold(importance, level)
    assert t == ref_threshold(importance.numpy(), level)
    mask = binary_mask(importance, t)
    assert int((mask == 0).sum()) == round(level * n)


@given(
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=200, unique=True),
    levels,
)
def test_local_threshold_on_arbitrary_distinct_floats(values: list[float], level: float) -> None:
    importance = torch.tensor(values, dtype=torch.float32)
    t = local_threshold(importance, level)
    assert t == ref_threshold(importance.numpy(), level)
    assert int((binary_mask(importance, t) == 0).sum()) == round(level * len(values))


@given(st.lists(st.integers(1, 60), min_size=1, max_size=5), levels, st.integers(0, 2**31 - 1))
def test_global_threshold_over_layers(sizes: list[int], level: float, seed: int) -> None:
    everything = distinct_values(sum(sizes), seed)
    layers = list(torch.split(everything, sizes))
    t = global_threshold(layers, level)
    assert t == local_threshold(everything, level) == ref_threshold(everything.numpy(), level)
    zeroed = sum(int((binary_mask(layer, t) == 0).sum()) for layer in layers)
    assert zeroed == round(level * everything.numel())


@given(st.integers(1, 200), levels, st.integers(0, 2**31 - 1))
def test_global_with_one_tensor_equals_local(n: int, level: float, seed: int) -> None:
    importance = distinct_values(n, seed).reshape(n, 1)
    assert global_threshold([importance], level) == local_threshold(importance, level)


def test_level_zero_keeps_all_and_level_one_drops_all() -> None:
    importance = torch.rand(5, 7, generator=torch.Generator().manual_seed(3))
    assert local_threshold(importance, 0.0) == -math.inf
    assert torch.equal(binary_mask(importance, local_threshold(importance, 0.0)), torch.ones(5, 7))
    assert torch.equal(binary_mask(importance, local_threshold(importance, 1.0)), torch.zeros(5, 7))
    assert global_threshold([importance, importance[0]], 0.0) == -math.inf


def test_ties_are_dropped_together() -> None:
    importance = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.5])
    t = local_threshold(importance, 0.4)  # k = 2: the 2nd smallest is a tie of three
    assert t == pytest.approx(0.2)
    assert binary_mask(importance, t).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_empty_inputs_give_minus_inf() -> None:
    assert global_threshold([], 0.5) == -math.inf
    assert local_threshold(torch.empty(0), 0.5) == -math.inf


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_threshold_in_other_dtypes(dtype: torch.dtype) -> None:
    importance = distinct_values(40, 4).to(dtype)
    t = local_threshold(importance, 0.25)
    assert int((binary_mask(importance, t) == 0).sum()) == 10


@pytest.mark.parametrize("level", [0.1 * j for j in range(1, 11)])
def test_same_threshold_as_nncf_when_counts_agree(level: float) -> None:
    # n = 10: NNCF drops floor(9 * level) + 1 == round(10 * level) elements for these levels
    importance = distinct_values(10, 5)
    assert local_threshold(importance, level) == nncf_threshold(importance.numpy(), level)


def test_documented_differences_from_nncf() -> None:
    importance = distinct_values(101, 6)
    nncf_dropped = int((importance <= nncf_threshold(importance.numpy(), 0.5)).sum())
    ours_dropped = int((binary_mask(importance, local_threshold(importance, 0.5)) == 0).sum())
    assert (nncf_dropped, ours_dropped) == (51, 50)
    # at level 0 NNCF still drops the smallest element; we drop none
    assert int((importance <= nncf_threshold(importance.numpy(), 0.0)).sum()) == 1
    assert int((binary_mask(importance, local_threshold(importance, 0.0)) == 0).sum()) == 0


# --- binary mask -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_binary_mask_values_shape_dtype(dtype: torch.dtype) -> None:
    importance = torch.tensor([[0.3, 0.1], [0.2, 0.4]], dtype=dtype)
    mask = binary_mask(importance, 0.2)
    assert mask.dtype == dtype and mask.shape == (2, 2)
    assert mask.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # strictly greater keeps


def test_binary_mask_infinite_thresholds() -> None:
    importance = torch.tensor([0.0, 1.0, math.inf])
    assert binary_mask(importance, -math.inf).tolist() == [1.0, 1.0, 1.0]
    assert binary_mask(importance, math.inf).tolist() == [0.0, 0.0, 0.0]


# --- sparsity rate -----------------------------------------------------------------------------


def test_sparsity_rate_counts_exact_zeros() -> None:
    tensors = [torch.tensor([0.0, -0.0, 1e-30, math.nan]), torch.zeros(2, 2), torch.tensor([True, False])]
    assert sparsity_rate(tensors) == 7 / 10


def test_sparsity_rate_of_nothing_is_zero() -> None:
    assert sparsity_rate([]) == 0.0
    assert sparsity_rate([torch.empty(0, 3)]) == 0.0


@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, -2.0]), max_size=30), min_size=1, max_size=4))
def test_sparsity_rate_matches_numpy(chunks: list[list[float]]) -> None:
    arrays = [np.asarray(c, dtype=np.float64) for c in chunks]
    total = sum(a.size for a in arrays)
    expected = 0.0 if total == 0 else sum(int((a == 0).sum()) for a in arrays) / total
    assert sparsity_rate([torch.from_numpy(a) for a in arrays]) == expected


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("level", [-0.1, 1.1, math.nan, math.inf])
def test_bad_level(level: float) -> None:
    importance = torch.rand(4)
    for call in (lambda: local_threshold(importance, level), lambda: global_threshold([importance], level)):
        with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]") as info:
            call()
        assert repr(level) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_bad_mode_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(InvalidArgumentError, match="'l2'") as info:
        weight_importance(torch.rand(3), "l2")
    assert "normed_abs" in str(info.value)


def test_integer_weight_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="int64"):
        weight_importance(torch.arange(4), "abs")


def test_nan_threshold_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="nan"):
        binary_mask(torch.rand(3), math.nan)


def test_docstring_examples() -> None:
    assert doctest.testmod(sparsity).failed == 0
