"""Filter importance and pruned counts against plain float64 references and NNCF 2.x's formulas."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional import importance
from nncompress.functional.importance import (
    FILTER_IMPORTANCES,
    filter_importance,
    global_keep_masks,
    keep_lowest_pruned,
    pruned_count,
)


def ref_importance(w: np.ndarray, metric: str, dim: int, normalize: bool) -> np.ndarray:
    """Loops over filters in float64."""
    w = w.astype(np.float64)
    if normalize:
        w = w / math.sqrt(float((w**2).sum()))
    filters = [np.take(w, f, axis=dim).ravel() for f in range(w.shape[dim])]
    if metric == "L2":
        return np.array([math.sqrt(float((f**2).sum())) for f in filters])
    if metric == "L1":
        return np.array([float(np.abs(f).sum()) for f in filters])
    return np.array([sum(math.sqrt(float(((f - g) ** 2).sum())) for g in filters) for f in filters])


def test_doctests() -> None:
    assert doctest.testmod(importance).failed == 0


@pytest.mark.parametrize("metric", FILTER_IMPORTANCES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("normalize", [False, True])
def test_importance_matches_float64_reference(metric: str, dim: int, normalize: bool) -> None:
    w = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = filter_importance(w, metric, dim, normalize)
    assert got.shape == (w.shape[dim],)
    np.testing.assert_allclose(got.numpy(), ref_importance(w.numpy(), metric, dim, normalize), rtol=1e-12, atol=1e-12)


def test_importance_is_detached_and_zero_weight_is_finite() -> None:
    w = torch.zeros(4, 3, requires_grad=True)
    for metric in FILTER_IMPORTANCES:
        got = filter_importance(w, metric, normalize=True)
        assert not got.requires_grad and torch.equal(got, torch.zeros(4))


def test_geometric_median_ranks_the_central_filter_lowest() -> None:
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert int(filter_importance(w, "geometric_median").argmin()) == 0


@pytest.mark.parametrize("bad", [("L3", 0), ("L2", 2)])
def test_importance_refuses_bad_arguments(bad: tuple[str, int]) -> None:
    with pytest.raises(InvalidArgumentError, match="L3|dim 2"):
        filter_importance(torch.ones(3, 4), bad[0], bad[1])
    with pytest.raises(InvalidArgumentError, match="floating-point"):
        filter_importance(torch.ones(3, 4, dtype=torch.int64))


@given(st.integers(1, 300), st.floats(0.0, 1.0))
def test_pruned_count_is_floor_of_share_and_keeps_one(channels: int, level: float) -> None:
    n = pruned_count(channels, level)
    assert 0 <= n <= channels - 1
    exact = channels * level
    # NNCF's rounding with multiple_of=1: within float rounding of floor(channels * level)
    assert n in {min(math.floor(exact), channels - 1), min(math.floor(exact + 1e-9), channels - 1),
                 min(math.ceil(exact - 1e-9), channels - 1)}


def test_pruned_count_values_and_errors() -> None:
    assert [pruned_count(16, lv) for lv in (0.0, 0.1, 0.4, 0.5, 0.99, 1.0)] == [0, 1, 6, 8, 15, 15]
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(InvalidArgumentError, match="level"):
            pruned_count(8, bad)
    with pytest.raises(InvalidArgumentError, match="channels"):
        pruned_count(0, 0.5)


@settings(max_examples=50)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=40), st.data())
def test_keep_lowest_pruned_removes_exactly_the_lowest(values: list[float], data: st.DataObject) -> None:
    imp = torch.tensor(values, dtype=torch.float64)
    count = data.draw(st.integers(0, len(values)))
    keep = keep_lowest_pruned(imp, count)
    assert int((~keep).sum()) == count
    if 0 < count < len(values):
        assert float(imp[~keep].max()) <= float(imp[keep].min())


def test_keep_lowest_pruned_refuses_nan_and_bad_count() -> None:
    with pytest.raises(InvalidArgumentError, match="NaN"):
        keep_lowest_pruned(torch.tensor([1.0, math.nan]), 1)
    with pytest.raises(InvalidArgumentError, match="count"):
        keep_lowest_pruned(torch.tensor([1.0, 2.0]), 3)


def test_global_masks_rank_all_groups_together() -> None:
    imps = [torch.tensor([0.1, 0.9, 0.8]), torch.tensor([0.2, 0.3, 0.05, 0.7])]
    keeps = global_keep_masks(imps, 3 / 7)  # int(3/7 * 7) = 3 lowest: 0.05, 0.1, 0.2
    assert keeps[0].tolist() == [False, True, True] and keeps[1].tolist() == [False, True, False, True]


@settings(max_examples=40)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.floats(0.0, 1.0), st.integers(0, 99))
def test_global_masks_count_and_keep_one_per_group(sizes: list[int], level: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    imps = [torch.rand(n, generator=g) for n in sizes]
    keeps = global_keep_masks(imps, level)
    removed = sum(int((~k).sum()) for k in keeps)
    assert removed == min(int(level * sum(sizes)), sum(sizes) - len(sizes))
    assert all(bool(k.any()) for k in keeps)
    # every removed filter is no more important than any kept one of a group that could lose more
    kept_free = [float(i[k].min()) for i, k in zip(imps, keeps) if int(k.sum()) > 1]
    gone = [float(i[~k].max()) for i, k in zip(imps, keeps) if bool((~k).any())]
    if kept_free and gone:
        assert max(gone) <= min(kept_free)
