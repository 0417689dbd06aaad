"""HAWQ precision initialisation (NNCF 2.x's ``"type": "hawq"``): bits per weight by Hessian trace.

As ``nncf/torch/quantization/precision_init/hawq_init.py`` (HAWQ-v2, Dong et al. 2019):

1. The average Hessian trace of the loss with respect to each quantized weight ``W_i``,
   ``t_i = tr(H_ii) / |W_i|``, by Hutchinson's estimator
   (:func:`~nncompress.functional.hessian.hutchinson_traces`) on the first ``num_data_points``
   samples of ``init_data``, with at most ``iter_number`` Rademacher draws and NNCF's relative
   ``tolerance`` stopping rule (the whole batches that fit in ``num_data_points``, at least one).
   The model runs in eval mode with BatchNorm on batch statistics
   (as in training; running statistics restored), with the user's ``criterion`` (default
   cross-entropy on ``(inputs, target)`` batches).
2. The quantization noise of each weight at each candidate width, ``n_i(b) = ||Q_b(W_i) - W_i||^2``,
   with the range the weight quantizer is initialised to.
3. Candidates: along the weights sorted by ascending ``t_i``, every non-decreasing sequence of
   widths from ``bits`` (a sharper layer never gets fewer bits than a flatter one). Activation
   quantizers take the fewest bits of the weights next to them (:func:`.tie_activation_bits`); in
   ``strict`` mode candidates whose grouped weights differ are dropped.
4. The candidate with the smallest ``sum_i t_i * n_i(b_i)`` among those whose compression ratio
   (:func:`.compression_ratio`) is at least ``compression_ratio`` (the first one on ties).

Each draw is averaged over ``torch.distributed`` ranks, so every rank gets the same traces and bits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.errors import ConfigError, InitDataError
from nncompress.functional.hessian import (
    TraceEstimate,
    hessian_quadratic_forms,
    hutchinson_traces,
    non_decreasing_sequences,
)
from nncompress.functional.ranges import all_reduce_range
from nncompress.graph.capture import CapturedGraph
from nncompress.torch.bn_modes import batch_statistics
from nncompress.torch.calibration import batch_size, call_model
from nncompress.torch.inputs import split_batch

from .params import PrecisionParams, QuantizationParams
from .placement import QuantizerPlacement
from .precision import adjacency_groups, compression_ratio, input_quantizers, tie_activation_bits, weight_macs
from .quantizers import FakeQuantizer

_LOG = logging.getLogger("nncompress")
_SEED = 0  # Rademacher draws are reproducible: the same init_data gives the same bits
MAX_CANDIDATES = 1_000_000
"""At most this many bit assignments are scored (each is a Python loop over the quantizers)."""
CACHED_BATCHES = 4
"""At most this many batches keep their gradient graph for all Hutchinson draws."""

CriterionFn = Callable[[Any, Any, Any], torch.Tensor]


def default_criterion_fn(outputs: Any, target: Any, criterion: Any) -> torch.Tensor:
    """NNCF 2.x's default: ``criterion(outputs, target)``."""
    loss: torch.Tensor = criterion(outputs, target)
    return loss


class InitDataWithLoss:
    """``init_data`` with the loss NNCF 2.x's ``register_default_init_args`` took for HAWQ.

    Iterates as the data it wraps (other attributes are the data's too).

    :param data: the batches.
    :param criterion: the loss module, e.g. ``nn.CrossEntropyLoss()``; ``None``: cross-entropy.
    :param criterion_fn: ``(outputs, target, criterion) -> loss``; ``None``: ``criterion(outputs, target)``.
    """

    def __init__(self, data: Iterable[Any], criterion: Any = None, criterion_fn: CriterionFn | None = None) -> None:
        self.data = data
        self.criterion = criterion
        self.criterion_fn = criterion_fn

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "data":
            raise AttributeError(name)
        return getattr(self.data, name)


@dataclass(frozen=True)
class HawqChoice:
    """What HAWQ chose.

    :param bits: bits per quantizer (placement order), activations tied to their weights.
    :param weight_ids: placement indices of the weight quantizers.
    :param traces: average Hessian trace per weight quantizer (in ``weight_ids`` order).
    :param noise: per weight quantizer, ``||Q_b(W) - W||^2`` for each candidate width ``b``.
    :param ratio: the chosen candidate's compression ratio.
    :param candidates: candidates compared.
    :param draws: Hutchinson draws made.
    """

    bits: list[int]
    weight_ids: list[int]
    traces: list[float]
    noise: list[dict[int, float]]
    ratio: float
    candidates: int
    draws: int

    def objective(self, weight_bits: Sequence[int]) -> float:
        """HAWQ's objective ``sum_i t_i * n_i(b_i)`` of any widths of the weights (``weight_ids`` order)."""
        return sum(t * n[b] for t, n, b in zip(self.traces, self.noise, weight_bits))


def choose_hawq_bits(
    model: nn.Module, graph: CapturedGraph, placements: Sequence[QuantizerPlacement], params: QuantizationParams,
    precision: PrecisionParams, init_data: Iterable[Any] | None,
) -> HawqChoice:
    """Run HAWQ on the (not yet compressed) model and return the bits of every quantizer.

    :raises InitDataError: without ``init_data``, or batches the loss cannot use.
    :raises ConfigError: if no candidate reaches ``compression_ratio`` (naming the reachable range).
    """
    if init_data is None:
        raise InitDataError(f"{precision.json_path}: HAWQ estimates Hessian traces of the loss on init_data; pass "
                            "init_data (batches of (inputs, target)) to create_compressed_model or "
                            "register_default_init_args")
    widx = [i for i, p in enumerate(placements) if p.group == "weights"]
    if not widx:  # nothing to choose (NNCF 2.x kept the setup as it was)
        return HawqChoice([p.params.bits for p in placements], [], [], [], 1.0, 0, 0)
    _check_candidate_count(len(widx), precision)
    names = [f"{placements[i].point.target}.{placements[i].point.param}".lstrip(".") for i in widx]
    weights = [model.get_parameter(n) for n in names]
    estimate = estimate_average_traces(model, weights, init_data, precision)
    traces = [float(t) / max(w.numel(), 1) for t, w in zip(estimate.traces, weights)]
    if not all(math.isfinite(t) for t in traces):
        bad = [n for n, t in zip(names, traces) if not math.isfinite(t)][:3]
        raise InitDataError(f"{precision.json_path}: HAWQ's Hessian traces are not finite (NaN or inf) for {bad}: the "
                            "loss on init_data is not finite or overflows; check the init_data, the model and the "
                            "criterion")
    noise = {(k, b): quantization_noise(params, placements[i], weights[k], b)
             for k, i in enumerate(widx) for b in precision.bits}
    order = sorted(range(len(widx)), key=lambda k: traces[k])  # ascending trace
    macs = [weight_macs(graph, placements[i]) for i in widx]
    feeding = input_quantizers(placements, widx)
    groups = adjacency_groups(placements)
    base = [p.params.bits for p in placements]
    scored: list[tuple[float, float, list[int]]] = []  # (metric, ratio, bits)
    for seq in non_decreasing_sequences(len(widx), precision.bits):
        bits = list(base)
        for pos, k in enumerate(order):
            bits[widx[k]] = seq[pos]
        if precision.assignment_mode == "strict" and not _groups_agree(groups, widx, bits):
            continue
        bits = tie_activation_bits(placements, bits, groups)
        ratio = compression_ratio(macs, [bits[i] for i in widx], [max((bits[a] for a in f), default=None)
                                                                   for f in feeding])
        metric = sum(traces[k] * noise[(k, bits[i])] for k, i in enumerate(widx))
        scored.append((metric, ratio, bits))
    table = [{b: noise[(k, b)] for b in precision.bits} for k in range(len(widx))]
    return _pick(scored, precision, widx, traces, table, estimate)


def _check_candidate_count(n_weights: int, precision: PrecisionParams) -> None:
    """:raises ConfigError: when the candidates are too many to score (before any trace is estimated)."""
    count = math.comb(n_weights + len(precision.bits) - 1, len(precision.bits) - 1)
    if count > MAX_CANDIDATES:
        raise ConfigError(f"{precision.json_path}.bits",
                          f"{list(precision.bits)} on {n_weights} quantized weights gives {count} candidates (every "
                          f"non-decreasing assignment in trace order), more than HAWQ scores ({MAX_CANDIDATES}); "
                          "allowed: fewer widths, e.g. [2, 4, 8] or [4, 8]", list(precision.bits))


def _pick(scored: list[tuple[float, float, list[int]]], precision: PrecisionParams, widx: list[int],
          traces: list[float], noise: list[dict[int, float]], estimate: TraceEstimate) -> HawqChoice:
    ratios = [r for _, r, _ in scored]
    target = precision.compression_ratio
    feasible = [s for s in scored if s[1] >= target - 1e-9]
    if not scored or not feasible or target < min(ratios) - 1e-9:
        reach = f"[{min(ratios):.3f}, {max(ratios):.3f}]" if ratios else "none (no candidate)"
        raise ConfigError(f"{precision.json_path}.compression_ratio",
                          f"{target} cannot be reached with bits {list(precision.bits)} on this model; allowed: "
                          f"{reach} (the bit complexity of INT8 over the mixed model's)", target)
    best = min(feasible, key=lambda s: s[0])  # min() keeps the first of equal metrics
    choice = HawqChoice(best[2], widx, traces, noise, best[1], len(scored), estimate.draws)
    if precision.dump:
        _LOG.info("HAWQ: %d draws, average traces per weight %s; %d candidates; chosen ratio %.3f, bits %s",
                  estimate.draws, [f"{t:.3g}" for t in traces], len(scored), best[1], best[2])
    return choice


def _groups_agree(groups: list[int], widx: list[int], bits: list[int]) -> bool:
    seen: dict[int, int] = {}
    return all(seen.setdefault(groups[i], bits[i]) == bits[i] for i in widx)


def quantization_noise(params: QuantizationParams, placement: QuantizerPlacement, weight: torch.Tensor,
                       bits: int) -> float:
    """``||Q_b(W) - W||^2`` with the range the weight quantizer gets at ``bits`` (its range init)."""
    qp = params.with_bits(placement.params, "weights", bits)
    q = FakeQuantizer(qp, placement.consumers[0], "weights", placement.channel_axis, placement.num_channels)
    w = weight.detach().float()
    r = params.range_init_for(q.name, "weights")
    if r is not None and r.num_init_samples > 0:
        q.start_collecting(r.type_for("weights"), r.min_percentile, r.max_percentile)
        q(w)
        q.finish_collecting()
    with torch.no_grad():
        return float(((q.quantized(w) - w) ** 2).sum())


def estimate_average_traces(model: nn.Module, weights: Sequence[torch.Tensor], init_data: Iterable[Any],
                            precision: PrecisionParams) -> TraceEstimate:
    """Hutchinson estimate of ``tr(H_ii)`` for each weight, on ``num_data_points`` samples.

    The loss of a batch of ``n`` samples counts ``n`` times (NNCF's weighting). Each draw's forms
    are averaged over ``torch.distributed`` ranks when it is up, so all ranks stop together.
    """
    fn: CriterionFn = getattr(init_data, "criterion_fn", None) or default_criterion_fn
    crit = getattr(init_data, "criterion", None)
    if crit is None and fn is default_criterion_fn:
        crit = nn.CrossEntropyLoss()
    batches = _loss_batches(init_data, precision, fn is default_criterion_fn)
    total = sum(n for *_, n in batches)
    flags = [w.requires_grad for w in weights]
    gen = torch.Generator().manual_seed(_SEED)
    device = weights[0].device if weights else torch.device("cpu")  # nccl reduces device tensors only
    try:
        for w in weights:
            w.requires_grad_(True)
        with batch_statistics(model), torch.enable_grad():
            def grads_of(k: int) -> tuple[torch.Tensor | None, ...]:
                args, kwargs, target, _ = batches[k]
                loss = _loss(model, args, kwargs, target, crit, fn, k)
                return torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)

            # up to CACHED_BATCHES batches: their gradient graphs serve every draw (memory of a
            # training step on num_data_points samples, a few times over); more: recomputed per draw
            cached = [grads_of(k) for k in range(len(batches))] if len(batches) <= CACHED_BATCHES else None

            def forms(v: list[torch.Tensor]) -> torch.Tensor:
                acc = torch.zeros(len(weights), dtype=torch.float64)
                for k, (*_, n) in enumerate(batches):
                    g = cached[k] if cached is not None else grads_of(k)
                    acc += hessian_quadratic_forms(g, weights, v, retain_graph=cached is not None) * n
                # the ranks' mean each draw: every rank sees the same estimate and stops at the same draw
                mean, _ = all_reduce_range(acc.to(device) / total, acc.to(device) / total, mode="mean")
                return mean.cpu()

            estimate = hutchinson_traces(forms, weights, precision.iter_number, precision.tolerance, gen)
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    return estimate


def _loss_batches(init_data: Iterable[Any], precision: PrecisionParams, need_target: bool
                  ) -> list[tuple[tuple[Any, ...], dict[str, Any], Any, int]]:
    out: list[tuple[tuple[Any, ...], dict[str, Any], Any, int]] = []
    seen = 0
    for i, batch in enumerate(init_data):
        args, kwargs = split_batch(batch)
        target = batch[1] if isinstance(batch, (list, tuple)) and len(batch) >= 2 else None
        if target is None and need_target:
            raise InitDataError(
                f"{precision.json_path}: HAWQ needs a loss, and init_data batch {i} ({type(batch).__name__}"
                f"{'' if not isinstance(batch, Mapping) else ' of keys ' + str(sorted(batch))}) carries no target for "
                "the default cross-entropy; give (inputs, target) batches, or register a criterion_fn "
                "(outputs, target, criterion) -> loss with register_default_init_args"
            )
        n = batch_size(args, kwargs)
        if out and seen + n > precision.num_data_points:
            break  # NNCF 2.x: num_data_points // batch_size whole batches, at least one
        out.append((args, kwargs, target, n))
        seen += n
        if seen >= precision.num_data_points:
            break
    if not out:
        raise InitDataError(f"{precision.json_path}: init_data is empty; HAWQ needs batches to estimate traces")
    return out


def _loss(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], target: Any, criterion: Any,
          fn: CriterionFn, k: int) -> torch.Tensor:
    outputs = call_model(model, args, kwargs, f"init_data batch {k}")
    try:
        loss = fn(outputs, target, criterion)
    except Exception as exc:
        raise InitDataError(
            f"HAWQ: the loss failed on init_data batch {k} ({type(exc).__name__}: {exc}); register a criterion "
            "(and a criterion_fn(outputs, target, criterion)) that fits the model with register_default_init_args"
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise InitDataError(f"HAWQ: the loss of init_data batch {k} must be a scalar tensor, got "
                            f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
    return loss.reshape(())
