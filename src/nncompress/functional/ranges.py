"""Quantizer range initialisation: streaming statistics of a tensor, reduced to ``(min, max)``.

Tensor in, tensor out; nothing here knows about modules. A quantizer's range initialiser feeds
each calibration batch to a :class:`RangeCollector` and reads ``(min, max)`` once at the end::

    collector = RangeCollector("mean_min_max", reduction_axes=(0, 2, 3))  # per channel of NCHW
    for batch in batches:
        collector.update(batch)
    low, high = all_reduce_range(*collector.result())  # (C,), (C,)

``reduction_axes`` are the axes reduced away (``None``: all of them, one per-tensor range as
0-d tensors); the kept axes give the result's shape (for per-channel ranges keep the channel
axis only). The range types are NNCF 2.x's ``initializer.range.type`` values, defined as in
``nncf/common/tensor_statistics/collectors.py`` (``MinMaxStatisticCollector``,
``MeanMinMaxStatisticCollector``, ``MedianMADStatisticCollector``,
``PercentileStatisticCollector``, ``MeanPercentileStatisticCollector``), their torch versions in
``nncf/torch/tensor_statistics/`` and the choice in ``nncf/torch/quantization/init_range.py``.
With ``X`` all values of one channel over all batches and ``X_b`` those of batch ``b``
(``B`` batches), ``P_p`` the ``p``-th percentile with linear interpolation (numpy's default):

=================== ====================================== ========================================
type                ``min``                                ``max``
=================== ====================================== ========================================
``min_max``         ``min X``                              ``max X`` (``max |X|`` if ``use_abs_max``)
``mean_min_max``    ``1/B sum_b min X_b``                  ``1/B sum_b max X_b`` (or ``max |X_b|``)
``threesigma``      ``med - 3 * 1.4826230 * MAD``          ``med + 3 * 1.4826230 * MAD``
``percentile``      ``P_min_percentile(X)``                ``P_max_percentile(X)``
``mean_percentile`` ``1/B sum_b P_min_percentile(X_b)``    ``1/B sum_b P_max_percentile(X_b)``
=================== ====================================== ========================================

For ``threesigma``, ``med = median(X')`` and ``MAD = median(|X' - med|)`` over the non-zero
values ``X'`` (NNCF discards exact zeros, which dominate after a ReLU); 1.4826230 is NNCF's
constant (:data:`MAD_TO_SIGMA`, for normal data ``sigma ~ 1.4826 * MAD``). A channel without
non-zero values gets ``(0, 0)`` where NNCF would get NaN. NNCF defaults: ``min_percentile`` 0.1,
``max_percentile`` 99.9 (``nncf/config/schemata/defaults.py``). ``use_abs_max`` is what NNCF
sets for symmetric quantizers. NNCF's default type, ``mixed_min_max``, needs to know whether
the tensor is a weight and the quantizer's mode, so it is left to the caller.

Differences from NNCF 2.x, all about memory or precision:

- ``threesigma`` and ``percentile`` need every value; NNCF kept all batches in host memory.
  Here each channel keeps a uniform random sample of at most ``max_samples_kept`` values
  (Vitter's reservoir "algorithm R", seeded, so results repeat); with no more values than that,
  nothing is dropped and the result is exact.
- ``mean_percentile`` takes each batch's percentile over all of a channel's values together;
  NNCF (``np_percentile_reduce_like``) took percentiles of percentiles axis by axis for
  per-channel ranges (per-tensor ranges are the same).
- Means are accumulated in float64. Results have the first batch's device and dtype, promoted to
  at least float32.
- Stopping after ``num_init_samples`` is the caller's job: every batch given is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from nncompress.errors import InvalidArgumentError

RANGE_TYPES: tuple[str, ...] = ("min_max", "mean_min_max", "threesigma", "percentile", "mean_percentile")
DEFAULT_MIN_PERCENTILE: float = 0.1
DEFAULT_MAX_PERCENTILE: float = 99.9
DEFAULT_MAX_SAMPLES_KEPT: int = 2**18
MAD_TO_SIGMA: float = 1.4826230
ALL_REDUCE_MODES: tuple[str, ...] = ("extremes", "mean")
_RESERVOIR_CHUNK: int = 2**22  # elements of a batch processed at once when sampling


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise unless every element of ``x`` is finite.

    :param x: any tensor.
    :param what: how the message names ``x``, e.g. ``"the batch"``.
    :raises InvalidArgumentError: ``"<what> contains NaN/inf values (k of n are not finite)"``.
    """
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = x.numel() - int(finite.sum())
        raise InvalidArgumentError(
            f"{what} contains NaN/inf values ({bad} of {x.numel()} are not finite); "
            "range statistics need finite values"
        )


def _check_percentiles(min_percentile: float, max_percentile: float) -> None:
    for name, p in (("min_percentile", min_percentile), ("max_percentile", max_percentile)):
        if not 0.0 <= p <= 100.0:  # NaN fails too
            raise InvalidArgumentError(f"{name} must be in [0, 100], got {p!r}")
    if min_percentile > max_percentile:
        raise InvalidArgumentError(
            f"min_percentile must be <= max_percentile, got {min_percentile!r} > {max_percentile!r}"
        )


def _to_rows(
    x: torch.Tensor, reduction_axes: Sequence[int] | None, finite: bool = True
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Validate ``x`` and view it as ``(C, m)``: one row per kept position, reduced values in it.

    ``finite=False`` skips the finiteness check, for callers whose results reveal NaN/inf anyway.
    """
    if not x.is_floating_point():
        raise InvalidArgumentError(f"the batch must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise InvalidArgumentError(f"the batch has no values (shape {tuple(x.shape)})")
    if finite:
        check_finite(x, "the batch")
    ndim = x.dim()
    axes = list(range(ndim) if reduction_axes is None else reduction_axes)
    span = max(ndim, 1)  # a 0-d tensor has axes 0 and -1, as in torch
    if any(isinstance(a, bool) or not isinstance(a, int) or not -span <= a < span for a in axes):
        raise InvalidArgumentError(
            f"reduction_axes must be distinct axes of the {ndim}-d batch, in [{-span}, {span - 1}], "
            f"got {reduction_axes!r}"
        )
    reduced = sorted({a % span for a in axes}) if ndim else []
    if len(reduced) != len(axes) and ndim:
        raise InvalidArgumentError(f"reduction_axes must not repeat an axis, got {reduction_axes!r}")
    kept = [d for d in range(ndim) if d not in reduced]
    kept_shape = tuple(x.shape[d] for d in kept)
    rows = x.detach().permute((*kept, *reduced)).reshape(math.prod(kept_shape), -1)
    return rows, kept_shape


def _lerp(lo: torch.Tensor, hi: torch.Tensor, frac: torch.Tensor | float) -> torch.Tensor:
    """numpy's ``_lerp``: ``lo + (hi - lo) * f``, from the upper end when ``f >= 0.5``."""
    diff = hi - lo
    if isinstance(frac, float):
        return hi - diff * (1 - frac) if frac >= 0.5 else lo + diff * frac
    return torch.where(frac >= 0.5, hi - diff * (1 - frac), lo + diff * frac)


def _quantiles(rows: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """``np.nanquantile(rows, qs, axis=1)`` (linear) in float64, shape ``(len(qs), C)``.

    NaN marks an empty slot; a row with no values gives 0. Rows without NaN use ``kthvalue``
    (partial selection); rows with NaN are sorted (NaN sorts last).
    """
    if rows.shape[1] == 0:
        return rows.new_zeros((len(qs), rows.shape[0]), dtype=torch.float64)
    if not bool(torch.isnan(rows).any()):
        last = rows.shape[1] - 1
        out = []
        for q in qs:
            virtual = q * last  # numpy's virtual index
            k = math.floor(virtual)
            below = torch.kthvalue(rows, k + 1, dim=1).values.double()
            above = torch.kthvalue(rows, min(k + 2, last + 1), dim=1).values.double()
            out.append(_lerp(below, above, virtual - k))
        return torch.stack(out)
    ordered = torch.sort(rows, dim=1).values
    count = (~torch.isnan(rows)).sum(dim=1)  # (C,)
    probs = torch.tensor(list(qs), dtype=torch.float64, device=rows.device)[:, None]
    pos = probs * (count - 1).clamp_min(0).double()  # (Q, C)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (count - 1).clamp_min(0))
    v_lo = ordered.gather(1, lo.T).T.double()
    v_hi = ordered.gather(1, hi.T).T.double()
    return torch.where(count > 0, _lerp(v_lo, v_hi, pos - lo), 0.0)


def _threesigma(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``median -+ 3 * MAD_TO_SIGMA * MAD`` per row of ``rows`` (NaN = no value), in float64."""
    median = _quantiles(rows, (0.5,))[0]
    mad = _quantiles((rows.double() - median[:, None]).abs(), (0.5,))[0]
    return median - 3 * MAD_TO_SIGMA * mad, median + 3 * MAD_TO_SIGMA * mad


def min_max_range(
    x: torch.Tensor, reduction_axes: Sequence[int] | None = None, use_abs_max: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min x, max x)`` over ``reduction_axes`` of one tensor (``max |x|`` if ``use_abs_max``).

    >>> min_max_range(torch.tensor([[1.0, -2.0], [3.0, 0.5]]), reduction_axes=(1,))
    (tensor([-2.0000,  0.5000]), tensor([1., 3.]))

    :param x: a finite floating-point tensor.
    :param reduction_axes: axes reduced away; ``None`` for all (0-d results).
    :param use_abs_max: take the maximum of ``|x|`` (NNCF does for symmetric quantizers).
    :return: ``(min, max)``, shaped as ``x``'s kept axes, ``x``'s dtype.
    :raises InvalidArgumentError: for a bad axis, an empty, non-float or non-finite ``x``.
    """
    rows, kept_shape = _to_rows(x, reduction_axes)
    high = (rows.abs() if use_abs_max else rows).amax(dim=1)
    return rows.amin(dim=1).reshape(kept_shape), high.reshape(kept_shape)


def percentile_range(
    x: torch.Tensor,
    reduction_axes: Sequence[int] | None = None,
    min_percentile: float = DEFAULT_MIN_PERCENTILE,
    max_percentile: float = DEFAULT_MAX_PERCENTILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentiles ``(P_min_percentile(x), P_max_percentile(x))`` over ``reduction_axes``.

    Linear interpolation, as ``np.percentile``; computed by partial selection (no size limit,
    unlike ``torch.quantile``).

    >>> percentile_range(torch.arange(101.0), min_percentile=10, max_percentile=90)
    (tensor(10.), tensor(90.))

    :param x: a finite floating-point tensor.
    :param reduction_axes: axes reduced away; ``None`` for all (0-d results).
    :param min_percentile: in ``[0, 100]``, at most ``max_percentile`` (NNCF default 0.1).
    :param max_percentile: in ``[0, 100]`` (NNCF default 99.9).
    :return: ``(min, max)``, shaped as ``x``'s kept axes, ``x``'s dtype.
    :raises InvalidArgumentError: for bad percentiles or axes, an empty, non-float or non-finite ``x``.
    """
    _check_percentiles(min_percentile, max_percentile)
    rows, kept_shape = _to_rows(x, reduction_axes)
    low, high = _quantiles(rows, (min_percentile / 100, max_percentile / 100)).to(x.dtype)
    return low.reshape(kept_shape), high.reshape(kept_shape)


def threesigma_range(
    x: torch.Tensor, reduction_axes: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``median -+ 3 * 1.4826230 * MAD`` of the non-zero values, over ``reduction_axes``.

    See the module docstring for the formula; all-zero rows give ``(0, 0)``.

    >>> threesigma_range(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    (tensor(-2.4479), tensor(6.4479))

    :param x: a finite floating-point tensor.
    :param reduction_axes: axes reduced away; ``None`` for all (0-d results).
    :return: ``(min, max)``, shaped as ``x``'s kept axes, ``x``'s dtype.
    :raises InvalidArgumentError: for a bad axis, an empty, non-float or non-finite ``x``.
    """
    rows, kept_shape = _to_rows(x, reduction_axes)
    low, high = _threesigma(rows.masked_fill(rows == 0, math.nan))
    return low.to(x.dtype).reshape(kept_shape), high.to(x.dtype).reshape(kept_shape)


class RangeCollector:
    """Streaming ``(min, max)`` statistics of one tensor over calibration batches.

    Memory: ``min_max``, ``mean_min_max`` and ``mean_percentile`` keep two numbers per kept
    position; ``threesigma`` and ``percentile`` keep a seeded uniform sample (reservoir) of at
    most ``max_samples_kept`` values per kept position, stored as ``C x max_samples_kept``
    values of the result dtype (``threesigma`` samples the non-zero values only). Each batch is
    sampled in slices of about 4M elements, so sampling needs little more memory than the batch.

    >>> c = RangeCollector("mean_min_max", reduction_axes=None)
    >>> c.update(torch.tensor([0.0, 2.0])); c.update(torch.tensor([-2.0, 1.0]))
    >>> c.result()
    (tensor(-1.), tensor(1.5000))

    :param range_type: one of :data:`RANGE_TYPES` (see the module docstring).
    :param reduction_axes: axes of each batch reduced away; ``None`` for all (per-tensor, 0-d
        results); for per-channel ranges all axes but the channel axis. Negative axes count
        from the end. Every batch must have the same number of axes and the same kept sizes.
    :param min_percentile: for the percentile types, in ``[0, 100]`` (NNCF default 0.1).
    :param max_percentile: for the percentile types, in ``[0, 100]``, at least
        ``min_percentile`` (NNCF default 99.9).
    :param max_samples_kept: cap on values kept per kept position, at least 1.
    :param use_abs_max: for the min-max types, the maximum is taken of ``|x|``.
    :param seed: seed of the reservoir's random numbers.
    :raises InvalidArgumentError: for any argument outside what is listed.
    """

    def __init__(
        self,
        range_type: str,
        reduction_axes: tuple[int, ...] | None,
        min_percentile: float = DEFAULT_MIN_PERCENTILE,
        max_percentile: float = DEFAULT_MAX_PERCENTILE,
        max_samples_kept: int = DEFAULT_MAX_SAMPLES_KEPT,
        *,
        use_abs_max: bool = False,
        seed: int = 0,
    ) -> None:
        if range_type not in RANGE_TYPES:
            raise InvalidArgumentError(f"range_type must be one of {list(RANGE_TYPES)}, got {range_type!r}")
        if reduction_axes is not None and len(set(reduction_axes)) != len(reduction_axes):
            raise InvalidArgumentError(f"reduction_axes must not repeat an axis, got {reduction_axes!r}")
        _check_percentiles(min_percentile, max_percentile)
        if isinstance(max_samples_kept, bool) or not isinstance(max_samples_kept, int) or max_samples_kept < 1:
            raise InvalidArgumentError(f"max_samples_kept must be an integer >= 1, got {max_samples_kept!r}")
        self.range_type = range_type
        self.reduction_axes = reduction_axes
        self.percentiles = (min_percentile, max_percentile)
        self.max_samples_kept = max_samples_kept
        self.use_abs_max = use_abs_max
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.num_batches = 0
        self._kept_shape: tuple[int, ...] = ()
        self._ndim = 0
        self._dtype = torch.float32
        self._device = torch.device("cpu")
        self._low = torch.empty(0)  # (C,) running min, or float64 sum for the mean types
        self._high = torch.empty(0)
        self._kept = torch.empty(0, 0)  # (C, W <= max_samples_kept), NaN = empty slot
        self._seen = torch.empty(0, dtype=torch.long)  # (C,) values offered to the reservoir
        self._generator = torch.Generator()

    @property
    def num_kept(self) -> int:
        """Width of the reservoir: the most values kept for one position (0 if none kept)."""
        return self._kept.shape[1]

    def update(self, x: torch.Tensor) -> None:
        """Add one batch.

        :param x: a finite floating-point tensor (detached here; no autograd).
        :raises InvalidArgumentError: for a non-float, empty or non-finite batch (NaN/inf), a bad
            axis, or a batch whose rank or kept sizes differ from the first batch's.
        """
        min_max = self.range_type in ("min_max", "mean_min_max")
        rows, kept_shape = _to_rows(x, self.reduction_axes, finite=not min_max)  # extremes show NaN/inf
        first = self.num_batches == 0
        if first:
            self._ndim, self._kept_shape = x.dim(), kept_shape
            self._dtype = torch.promote_types(x.dtype, torch.float32)
            self._device = x.device
        elif (self._ndim, self._kept_shape) != (x.dim(), kept_shape):
            raise InvalidArgumentError(
                f"the batch has shape {tuple(x.shape)}; with reduction_axes={self.reduction_axes!r} "
                f"batches must be {self._ndim}-d with kept sizes {self._kept_shape}"
            )
        rows = rows.to(device=self._device, dtype=self._dtype)
        if self.range_type in ("threesigma", "percentile"):
            self._sample(rows, rows != 0 if self.range_type == "threesigma" else None)
        elif min_max:
            if self.use_abs_max:
                low, high = rows.amin(dim=1), rows.abs().amax(dim=1)
            else:
                low, high = torch.aminmax(rows, dim=1)
            if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
                check_finite(x, "the batch")  # raises, counting the bad values
            if self.range_type == "min_max":
                self._low = low if first else torch.minimum(self._low, low)
                self._high = high if first else torch.maximum(self._high, high)
            else:
                self._low = low.double() if first else self._low + low.double()
                self._high = high.double() if first else self._high + high.double()
        else:
            pair = _quantiles(rows, [p / 100 for p in self.percentiles])
            self._low = pair[0] if first else self._low + pair[0]
            self._high = pair[1] if first else self._high + pair[1]
        self.num_batches += 1

    def _sample(self, rows: torch.Tensor, eligible: torch.Tensor | None) -> None:
        """Offer the ``eligible`` values of ``rows`` (C, m) to each row's reservoir (algorithm R).

        The ``t``-th value offered to a row (from 0) takes slot ``t`` while ``t < K``, then
        slot ``j ~ U{0..t}`` if ``j < K``; when several values of a slice land on one slot the
        latest wins, exactly as one value at a time would.
        """
        cap = self.max_samples_kept
        if self.num_batches == 0:
            self._kept = rows.new_empty((rows.shape[0], 0))
            self._seen = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
            self._generator = torch.Generator(device=rows.device).manual_seed(self.seed)
        step = max(1, _RESERVOIR_CHUNK // rows.shape[0])
        for start in range(0, rows.shape[1], step):  # slices of the batch, not elements
            values = rows[:, start : start + step]
            mask = None if eligible is None else eligible[:, start : start + step]
            offered = torch.ones_like(values, dtype=torch.long) if mask is None else mask.long()
            t = self._seen[:, None] + offered.cumsum(dim=1) - 1  # (C, s) index among offered
            self._seen = self._seen + offered.sum(dim=1)
            width = min(cap, int(self._seen.max()))
            if width > self._kept.shape[1]:
                pad = self._kept.new_full((values.shape[0], width - self._kept.shape[1]), math.nan)
                self._kept = torch.cat([self._kept, pad], dim=1)
            slot = t
            if int(self._seen.max()) > cap:
                u = torch.rand(values.shape, generator=self._generator, dtype=torch.float64, device=values.device)
                slot = torch.where(t < cap, t, (u * (t + 1)).long())
            accept = slot < cap if mask is None else (slot < cap) & mask
            row, col = accept.nonzero(as_tuple=True)
            winner = torch.full((values.shape[0] * width,), -1, dtype=torch.long, device=values.device)
            winner.scatter_reduce_(0, row * width + slot[row, col], col, reduce="amax")
            (target,) = (winner >= 0).nonzero(as_tuple=True)
            self._kept.view(-1)[target] = values[target // width, winner[target]]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range from all batches so far; collecting can go on afterwards.

        :return: ``(min, max)``: 0-d for per-tensor, else shaped as the kept axes; dtype of the
            first batch promoted to at least float32, on its device.
        :raises InvalidArgumentError: if no batch was given (no data was collected).
        """
        if self.num_batches == 0:
            raise InvalidArgumentError(
                f"no data was collected for the {self.range_type!r} range: call update() with a batch first"
            )
        if self.range_type == "percentile":
            low, high = _quantiles(self._kept, [p / 100 for p in self.percentiles])
        elif self.range_type == "threesigma":
            low, high = _threesigma(self._kept)
        elif self.range_type == "min_max":
            low, high = self._low, self._high
        else:
            low, high = self._low / self.num_batches, self._high / self.num_batches
        shape = self._kept_shape
        return low.to(self._dtype).reshape(shape), high.to(self._dtype).reshape(shape)


def all_reduce_range(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    mode: str = "extremes",
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Agree on one range across the ranks of ``torch.distributed``; identity when it is not up.

    - ``"extremes"``: element-wise ``min`` of the mins and ``max`` of the maxes (``all_reduce``
      with ``MIN`` / ``MAX``): exact for ``min_max``, the union of the ranks' ranges otherwise.
    - ``"mean"``: the ranks' mean (``all_reduce`` ``SUM`` / world size): for ``mean_min_max``
      and ``mean_percentile`` this is the mean over all batches when every rank saw as many.

    NNCF 2.x did neither: each rank collected its own statistics and the controller's
    ``distributed()`` then broadcast rank 0's quantizer parameters (``broadcast_initialized_params``)
    so the other ranks' data was ignored. Every rank must call this with tensors of equal shape
    (a collective call); the backend must support the tensors' device (gloo: CPU, nccl: CUDA).

    :param min_val: this rank's minimum, any shape.
    :param max_val: this rank's maximum, same shape.
    :param mode: one of :data:`ALL_REDUCE_MODES`.
    :param group: process group (``None``: the default group).
    :return: new tensors ``(min, max)``, the same on every rank; the inputs themselves when
        ``torch.distributed`` is unavailable or not initialised.
    :raises InvalidArgumentError: for an unknown ``mode`` or differing shapes.
    """
    if mode not in ALL_REDUCE_MODES:
        raise InvalidArgumentError(f"mode must be one of {list(ALL_REDUCE_MODES)}, got {mode!r}")
    if min_val.shape != max_val.shape:
        raise InvalidArgumentError(
            f"min_val and max_val must have one shape, got {tuple(min_val.shape)} and {tuple(max_val.shape)}"
        )
    if not (dist.is_available() and dist.is_initialized()):
        return min_val, max_val
    low, high = min_val.detach().clone(), max_val.detach().clone()
    if mode == "extremes":
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    else:
        dist.all_reduce(low, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(high, op=dist.ReduceOp.SUM, group=group)
        world = dist.get_world_size(group)
        low, high = low / world, high / world
    return low, high


__all__ = [
    "ALL_REDUCE_MODES",
    "DEFAULT_MAX_PERCENTILE",
    "DEFAULT_MAX_SAMPLES_KEPT",
    "DEFAULT_MIN_PERCENTILE",
    "MAD_TO_SIGMA",
    "RANGE_TYPES",
    "RangeCollector",
    "all_reduce_range",
    "check_finite",
    "min_max_range",
    "percentile_range",
    "threesigma_range",
]
