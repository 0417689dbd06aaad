"""Quantizer range statistics against numpy float64 references, NNCF 2.x's formulas and properties."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nncompress.errors import InvalidArgumentError
from nncompress.functional import ranges
from nncompress.functional.ranges import (
    ALL_REDUCE_MODES,
    DEFAULT_MAX_PERCENTILE,
    DEFAULT_MIN_PERCENTILE,
    MAD_TO_SIGMA,
    RANGE_TYPES,
    RangeCollector,
    all_reduce_range,
    check_finite,
    min_max_range,
    percentile_range,
    threesigma_range,
)

# --- numpy references --------------------------------------------------------------------------


def as_rows(batch: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """``(C, m)`` view of a batch: one row per channel (one row for per-tensor)."""
    if channel_axis is None:
        return batch.reshape(1, -1)
    return np.moveaxis(batch, channel_axis, 0).reshape(batch.shape[channel_axis], -1)


def reference(range_type: str, batches: list[np.ndarray], channel_axis: int | None,
              pcts: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """NNCF 2.x's definitions, written plainly in float64 numpy."""
    per_batch = [as_rows(b.astype(np.float64), channel_axis) for b in batches]
    values = np.concatenate(per_batch, axis=1)
    if range_type == "min_max":
        low, high = values.min(axis=1), values.max(axis=1)
    elif range_type == "mean_min_max":
        low = np.mean([r.min(axis=1) for r in per_batch], axis=0)
        high = np.mean([r.max(axis=1) for r in per_batch], axis=0)
    elif range_type == "percentile":
        low, high = np.percentile(values, pcts, axis=1)
    elif range_type == "mean_percentile":
        low, high = np.mean([np.percentile(r, pcts, axis=1) for r in per_batch], axis=0)
    else:  # threesigma: median and MAD of the non-zero values (NNCF's discard_zeros=True)
        nonzero = [row[row != 0] if row.any() else np.zeros(1) for row in values]  # all zero: (0, 0)
        median = np.array([np.median(r) for r in nonzero])
        mad = np.array([np.median(np.abs(r - m)) for r, m in zip(nonzero, median)])
        low, high = median - 3 * 1.4826230 * mad, median + 3 * 1.4826230 * mad
    return (low[0], high[0]) if channel_axis is None else (low, high)


def collect(range_type: str, batches: list[torch.Tensor], axes: tuple[int, ...] | None,
            **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    collector = RangeCollector(range_type, axes, **kwargs)  # type: ignore[arg-type]
    for b in batches:
        collector.update(b)
    return collector.result()


def nchw_batches(seed: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Post-ReLU-like NCHW batches of varying batch size: many exact zeros, 3 channels."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    return [((torch.randn(n, 3, 5, 4, generator=g, dtype=torch.float64) + 0.3) * scale).relu().to(dtype)
            for n in (4, 2, 5)]


# --- each type against the reference -----------------------------------------------------------


@pytest.mark.parametrize("range_type", RANGE_TYPES)
@pytest.mark.parametrize(("axes", "channel_axis"), [(None, None), ((0, 2, 3), 1), ((0, -2, -1), 1)])
@pytest.mark.parametrize("pcts", [(DEFAULT_MIN_PERCENTILE, DEFAULT_MAX_PERCENTILE), (7.5, 62.0)])
def test_matches_numpy_float64(range_type: str, axes: tuple[int, ...] | None, channel_axis: int | None,
                               pcts: tuple[float, float]) -> None:
    batches = nchw_batches(0)
    low, high = collect(range_type, batches, axes, min_percentile=pcts[0], max_percentile=pcts[1])
    ref_low, ref_high = reference(range_type, [b.numpy() for b in batches], channel_axis, pcts)
    assert low.dtype == torch.float64 and low.shape == (() if channel_axis is None else (3,))
    np.testing.assert_allclose(low.numpy(), ref_low, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(high.numpy(), ref_high, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("range_type", RANGE_TYPES)
def test_float32_batches_match_numpy_to_float32_precision(range_type: str) -> None:
    batches = nchw_batches(1, torch.float32)
    low, high = collect(range_type, batches, (0, 2, 3))
    ref_low, ref_high = reference(range_type, [b.numpy() for b in batches], 1,
                                  (DEFAULT_MIN_PERCENTILE, DEFAULT_MAX_PERCENTILE))
    assert low.dtype == torch.float32
    np.testing.assert_allclose(low.numpy(), ref_low, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(high.numpy(), ref_high, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("range_type", ["min_max", "mean_min_max"])
def test_use_abs_max_takes_max_of_magnitudes(range_type: str) -> None:
    batches = [torch.tensor([[-5.0, 1.0], [2.0, -1.0]]), torch.tensor([[-1.0, 3.0], [0.5, -4.0]])]
    low, high = collect(range_type, batches, (0,), use_abs_max=True)
    if range_type == "min_max":
        assert torch.equal(low, torch.tensor([-5.0, -4.0])) and torch.equal(high, torch.tensor([5.0, 4.0]))
    else:
        assert torch.equal(low, torch.tensor([-3.0, -2.5])) and torch.equal(high, torch.tensor([3.0, 2.5]))


def test_threesigma_formula_and_constant() -> None:
    assert MAD_TO_SIGMA == 1.4826230  # NNCF's pt_convert_stat_to_min_max_tensor_stat
    # non-zero values 1, 2, 3, 10: median 2.5, |x - 2.5| = 1.5, 0.5, 0.5, 7.5, MAD 1.0
    low, high = collect("threesigma", [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 3.0, 10.0])], None)
    assert math.isclose(float(low), 2.5 - 3 * MAD_TO_SIGMA, rel_tol=1e-6)
    assert math.isclose(float(high), 2.5 + 3 * MAD_TO_SIGMA, rel_tol=1e-6)


def test_threesigma_of_all_zero_channel_is_zero_range() -> None:
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 4.0]])
    low, high = collect("threesigma", [x, x], (1,))
    assert low[0] == 0 and high[0] == 0 and torch.isfinite(low).all() and torch.isfinite(high).all()
    assert collect("threesigma", [torch.zeros(2, 3)], None) == (0.0, 0.0)  # nothing kept at all
    assert threesigma_range(torch.zeros(4)) == (0.0, 0.0)


def test_mean_types_over_one_batch_equal_their_plain_types() -> None:
    (x,) = nchw_batches(2)[:1]
    assert all(torch.equal(a, b) for a, b in zip(collect("mean_min_max", [x], (0, 2, 3)),
                                                 collect("min_max", [x], (0, 2, 3))))
    for a, b in zip(collect("mean_percentile", [x], (0, 2, 3)), collect("percentile", [x], (0, 2, 3))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pure_reducers_match_numpy() -> None:
    x = nchw_batches(3)[0]
    rows = as_rows(x.numpy(), 1)
    low, high = min_max_range(x, (0, 2, 3))
    assert np.array_equal(low.numpy(), rows.min(1)) and np.array_equal(high.numpy(), rows.max(1))
    low, high = percentile_range(x, (0, 2, 3), 2.0, 97.0)
    np.testing.assert_allclose(torch.stack([low, high]).numpy(), np.percentile(rows, [2.0, 97.0], axis=1),
                               rtol=1e-13)
    for got, want in zip(threesigma_range(x), reference("threesigma", [x.numpy()], None, (0, 100))):
        assert math.isclose(float(got), float(want), rel_tol=1e-12)
    assert min_max_range(x)[0].shape == () and min_max_range(torch.tensor(3.0)) == (3.0, 3.0)


def test_result_shape_keeps_all_kept_axes_and_empty_axes_is_elementwise() -> None:
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4))
    assert collect("min_max", [x], (1,))[0].shape == (2, 4)
    low, high = collect("percentile", [x, x], ())
    assert torch.equal(low, x) and torch.equal(high, x)


def test_half_input_gives_float32_detached_result_and_collecting_continues() -> None:
    x = torch.randn(8, 4, requires_grad=True)
    collector = RangeCollector("mean_percentile", (0,))
    collector.update(x.half())
    first = collector.result()
    assert first[0].dtype == torch.float32 and not first[0].requires_grad
    collector.update(x.detach().double())
    assert collector.num_batches == 2 and collector.result()[0].dtype == torch.float32
    collector.reset()
    with pytest.raises(InvalidArgumentError, match="no data was collected"):
        collector.result()


# --- Hypothesis properties ---------------------------------------------------------------------

finite32 = st.floats(-1e6, 1e6, width=32)
batch_lists = st.integers(1, 4).flatmap(
    lambda c: st.lists(hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.just(c)), elements=finite32),
                       min_size=1, max_size=4))
axes_choice = st.sampled_from([None, (0,)])


@settings(max_examples=60, deadline=None)
@given(batch_lists, axes_choice, st.sampled_from(RANGE_TYPES), st.integers(1, 12))
def test_min_le_max_and_within_min_max(batches: list[np.ndarray], axes: tuple[int, ...] | None,
                                       range_type: str, cap: int) -> None:
    tensors = [torch.from_numpy(b) for b in batches]
    low, high = collect(range_type, tensors, axes, max_samples_kept=cap)
    assert bool((low <= high).all())
    if range_type != "threesigma":  # the others never leave the data's hull
        glob_low, glob_high = collect("min_max", tensors, axes)
        assert bool((glob_low <= low).all()) and bool((high <= glob_high).all())


@settings(max_examples=60, deadline=None)
@given(batch_lists, axes_choice)
def test_min_max_contains_every_value_and_percentile_0_100_equals_it(batches: list[np.ndarray],
                                                                     axes: tuple[int, ...] | None) -> None:
    tensors = [torch.from_numpy(b) for b in batches]
    low, high = collect("min_max", tensors, axes)
    for t in tensors:
        assert bool((t >= low).all()) and bool((t <= high).all())
    p_low, p_high = collect("percentile", tensors, axes, min_percentile=0, max_percentile=100)
    assert torch.equal(p_low, low) and torch.equal(p_high, high)


@settings(max_examples=80, deadline=None)
@given(batch_lists, axes_choice, st.sampled_from(RANGE_TYPES), st.floats(0, 100), st.floats(0, 100))
def test_any_type_matches_numpy_when_nothing_is_dropped(batches: list[np.ndarray], axes: tuple[int, ...] | None,
                                                        range_type: str, p: float, q: float) -> None:
    pcts = (min(p, q), max(p, q))
    low, high = collect(range_type, [torch.from_numpy(b) for b in batches], axes,
                        min_percentile=pcts[0], max_percentile=pcts[1])
    ref_low, ref_high = reference(range_type, batches, 1 if axes else None, pcts)
    atol = 1e-6 * (1 + max(float(np.abs(b).max()) for b in batches))  # float32 rounding of the result
    np.testing.assert_allclose(low.numpy(), ref_low, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(high.numpy(), ref_high, rtol=1e-6, atol=atol)


# --- the memory bound and the reservoir --------------------------------------------------------


@pytest.mark.parametrize("range_type", ["percentile", "threesigma"])
def test_kept_values_never_exceed_the_cap(range_type: str) -> None:
    g = torch.Generator().manual_seed(5)
    collector = RangeCollector(range_type, (0, 2), 10.0, 90.0, max_samples_kept=200)
    exact = RangeCollector(range_type, (0, 2), 10.0, 90.0, max_samples_kept=10**6)
    batches = [torch.randn(6, 2, 7, generator=g) for _ in range(20)]
    for b in batches:
        collector.update(b)
        exact.update(b)
        assert collector.num_kept <= 200 and collector._kept.shape == (2, collector.num_kept)
    assert collector.num_kept == 200 and exact.num_kept == 20 * 6 * 7
    kept = collector._kept
    assert bool(torch.isin(kept, torch.cat([b.flatten() for b in batches])).all())  # a sample, not made up
    again = collect(range_type, batches, (0, 2), min_percentile=10.0, max_percentile=90.0, max_samples_kept=200)
    assert torch.equal(collector.result()[0], again[0])
    for got, want in zip(collector.result(), exact.result()):  # 200 of 840 N(0, 1) values: sd ~0.12
        assert bool(((got - want).abs() < 0.6).all()), (got, want)
    assert RangeCollector("min_max", None).num_kept == 0


@pytest.mark.parametrize("with_zeros", [False, True])
def test_reservoir_keeps_every_value_with_equal_probability(with_zeros: bool) -> None:
    # 3000 rows see the same 24 values in 5 batches; each row samples independently, so how
    # often each value is kept estimates its inclusion probability, which must be cap / 24.
    rows, cap = 3000, 6
    stream = torch.arange(1, 25, dtype=torch.float32)
    if with_zeros:  # threesigma samples non-zero values only
        stream = torch.stack([stream, torch.zeros(24)], dim=1).flatten()
    collector = RangeCollector("threesigma" if with_zeros else "percentile", (1,), max_samples_kept=cap)
    for chunk in torch.tensor_split(stream, 5):
        collector.update(chunk.expand(rows, -1))
    kept = collector._kept
    assert kept.shape == (rows, cap) and not bool(torch.isnan(kept).any())
    assert all(len(set(r.tolist())) == cap for r in kept[:50])  # no value kept twice
    freq = torch.stack([(kept == v).sum() for v in range(1, 25)]).double() / rows
    sd = math.sqrt(0.25 * 0.75 / rows)
    assert bool(((freq - cap / 24).abs() < 5 * sd).all()), freq


def test_reservoir_is_seeded() -> None:
    batches = [torch.randn(100, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    a = collect("percentile", batches, None, max_samples_kept=40)
    b = collect("percentile", batches, None, max_samples_kept=40)
    c = collect("percentile", batches, None, max_samples_kept=40, seed=1)
    assert a == b and a != c


def test_large_batch_is_sampled_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranges, "_RESERVOIR_CHUNK", 64)  # slices of 64 // 2 = 32 columns
    x = torch.randn(2, 1000, generator=torch.Generator().manual_seed(6))
    low, high = collect("percentile", [x], (1,), min_percentile=0, max_percentile=100, max_samples_kept=1000)
    assert torch.equal(low, x.amin(1)) and torch.equal(high, x.amax(1))
    collector = RangeCollector("percentile", (1,), max_samples_kept=100)
    collector.update(x)
    assert collector.num_kept == 100 and bool(torch.isin(collector._kept, x).all())


# --- bad inputs --------------------------------------------------------------------------------


def test_unknown_range_type_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidArgumentError, match="mixed_min_max") as info:
        RangeCollector("mixed_min_max", None)
    assert all(t in str(info.value) for t in RANGE_TYPES)


@pytest.mark.parametrize(("low", "high", "match"), [
    (-0.1, 99.9, "min_percentile must be in \\[0, 100\\], got -0.1"),
    (0.1, 100.5, "max_percentile must be in \\[0, 100\\], got 100.5"),
    (math.nan, 99.9, "min_percentile must be in"),
    (60.0, 40.0, "min_percentile must be <= max_percentile, got 60.0 > 40.0"),
])
def test_bad_percentiles(low: float, high: float, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        RangeCollector("percentile", None, low, high)
    with pytest.raises(InvalidArgumentError, match=match):
        percentile_range(torch.ones(3), None, low, high)


@pytest.mark.parametrize("cap", [0, -3, True, 2.5])
def test_bad_max_samples_kept(cap: object) -> None:
    with pytest.raises(InvalidArgumentError, match="max_samples_kept must be an integer >= 1"):
        RangeCollector("percentile", None, max_samples_kept=cap)  # type: ignore[arg-type]


@pytest.mark.parametrize("range_type", RANGE_TYPES)
def test_result_before_update_says_no_data(range_type: str) -> None:
    with pytest.raises(InvalidArgumentError, match="no data was collected"):
        RangeCollector(range_type, None).result()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_batch_is_refused(bad: float) -> None:
    x = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(InvalidArgumentError, match="the batch contains NaN/inf values \\(1 of 3"):
        RangeCollector("min_max", None).update(x)
    with pytest.raises(InvalidArgumentError, match="weight of conv1 contains NaN/inf"):
        check_finite(x, "weight of conv1")
    with pytest.raises(InvalidArgumentError, match="NaN/inf"):
        threesigma_range(x)
    check_finite(torch.ones(2), "fine")


@pytest.mark.parametrize("range_type", RANGE_TYPES)
@pytest.mark.parametrize("use_abs_max", [False, True])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_batch_leaves_the_collector_as_it_was(range_type: str, use_abs_max: bool, bad: float) -> None:
    c = RangeCollector(range_type, (1,), use_abs_max=use_abs_max)
    good = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])
    c.update(good)
    before = c.result()
    with pytest.raises(InvalidArgumentError, match="the batch contains NaN/inf values \\(1 of 6"):
        c.update(torch.tensor([[1.0, bad, 3.0], [0.5, 0.25, -1.0]]))
    assert c.num_batches == 1
    after = c.result()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


@pytest.mark.parametrize(("x", "axes", "match"), [
    (torch.arange(4), None, "floating-point"),
    (torch.empty(0, 3), None, "no values"),
    (torch.ones(2, 3), (2,), "axes of the 2-d batch"),
    (torch.ones(2, 3), (1, -1), "repeat"),
    (torch.ones(2, 3), (0.5,), "axes of the 2-d batch"),
])
def test_bad_batches_and_axes(x: torch.Tensor, axes: tuple[int, ...] | None, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        RangeCollector("min_max", axes).update(x)


def test_repeated_axis_refused_at_construction_and_shape_change_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="must not repeat"):
        RangeCollector("min_max", (1, 1))
    collector = RangeCollector("min_max", (0, 2, 3))
    collector.update(torch.ones(2, 3, 4, 4))
    collector.update(torch.ones(5, 3, 2, 2))  # other reduced sizes are fine
    with pytest.raises(InvalidArgumentError, match="kept sizes \\(3,\\)"):
        collector.update(torch.ones(2, 4, 4, 4))
    with pytest.raises(InvalidArgumentError, match="3-d batch"):
        collector.update(torch.ones(2, 3, 4))


# --- distributed -------------------------------------------------------------------------------


def test_all_reduce_range_is_identity_without_distributed() -> None:
    assert not dist.is_initialized()
    low, high = torch.tensor([1.0]), torch.tensor([2.0])
    out = all_reduce_range(low, high)
    assert out[0] is low and out[1] is high
    with pytest.raises(InvalidArgumentError, match="mode must be one of \\['extremes', 'mean'\\]"):
        all_reduce_range(low, high, mode="max")
    with pytest.raises(InvalidArgumentError, match="one shape"):
        all_reduce_range(low, torch.ones(2))
    assert ALL_REDUCE_MODES == ("extremes", "mean")


def _all_reduce_worker(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rdv", rank=rank, world_size=world)
    low, high = torch.tensor([-1.0, 2.0]) * (rank + 1), torch.tensor([3.0, 1.0 + 4 * rank])
    mine = (low.clone(), high.clone())
    results = {mode: all_reduce_range(low, high, mode=mode) for mode in ALL_REDUCE_MODES}
    scalar = all_reduce_range(torch.tensor(float(rank)), torch.tensor(float(rank + 1)))
    assert torch.equal(low, mine[0]) and torch.equal(high, mine[1])  # inputs untouched
    torch.save({"results": results, "scalar": scalar}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_all_reduce_range_two_gloo_ranks_agree(tmp_path: Path) -> None:
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for mode in ALL_REDUCE_MODES:
        for a, b in zip(r0["results"][mode], r1["results"][mode]):
            assert torch.equal(a, b), mode
    ext_low, ext_high = r0["results"]["extremes"]
    assert torch.equal(ext_low, torch.tensor([-2.0, 2.0])) and torch.equal(ext_high, torch.tensor([3.0, 5.0]))
    mean_low, mean_high = r0["results"]["mean"]
    assert torch.equal(mean_low, torch.tensor([-1.5, 3.0])) and torch.equal(mean_high, torch.tensor([3.0, 3.0]))
    assert r0["scalar"] == r1["scalar"] == (torch.tensor(0.0), torch.tensor(2.0))


def test_docstring_examples() -> None:
    assert doctest.testmod(ranges).failed == 0
