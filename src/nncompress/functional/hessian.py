"""Hessian traces by Hutchinson's estimator: ``tr(H) = E[v^T H v]`` for Rademacher ``v``.

Tensor in, tensor out: the loss is built by the caller; nothing here knows about modules.
For a loss ``L`` of parameter blocks ``W_1..W_n`` (the weights of the quantized layers) and
independent Rademacher vectors ``v_1..v_n`` (entries +1 / -1 with probability 1/2), one
double backward gives ``Hv``, the product of the full Hessian with the concatenated ``v``;
its block ``i`` is ``(Hv)_i = sum_j H_ij v_j``, so ``v_i^T (Hv)_i`` has expectation
``tr(H_ii)``: the ``E[v_i^T H_ij v_j]`` of ``j != i`` vanish as ``v_i`` and ``v_j`` are
independent with zero mean. Averaging over ``m`` draws estimates each block's trace
(Hutchinson 1990; HAWQ-v2, Dong et al. 2019, uses it to rank layers)::

    tr(H_ii) ~ 1/m sum_k v_ik^T (H v_k)_i

:func:`hutchinson_traces` draws until the estimate of the total trace settles, with NNCF 2.x's
stopping rule (``nncf/torch/quantization/hessian_trace.py``): stop once
``|T_k - T_{k-1}| / (T_{k-1} + 1e-6) < tolerance``, ``T_k`` being the sum over blocks of the
running means after ``k`` draws divided by each block's size (NNCF's average traces), or after
``max_iter`` draws. NNCF divided by ``T_{k-1} + 1e-6`` without the absolute value, so a negative
total (an untrained network) stopped it at the second draw whatever the tolerance; here
``|T_{k-1}|``. NNCF started each draw's
accumulator from Gaussian noise; here it starts from zero, so the estimate is unbiased.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from nncompress.errors import InvalidArgumentError

STOP_EPS = 1e-6
"""Added to the previous total trace in the relative-change stopping rule (NNCF 2.x's value)."""


def rademacher_like(tensors: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Random +1 / -1 tensors shaped like ``tensors`` (each entry independent, probability 1/2).

    :param tensors: the shapes, dtypes and devices to copy.
    :param generator: a CPU generator for reproducible draws (the draws are moved to each device).
    :return: one tensor per input.
    """
    out = []
    for t in tensors:
        bits = torch.randint(0, 2, tuple(t.shape), generator=generator, dtype=torch.int8)
        out.append((bits.to(t.dtype) * 2 - 1).to(t.device))
    return out


def hessian_quadratic_forms(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor],
    retain_graph: bool = False,
) -> torch.Tensor:
    """``v_i^T (H v)_i`` for every block ``i``, by one backward through the gradients.

    :param grads: ``dL/dW_i``, computed with ``create_graph=True`` (``None`` or a constant for a
        block the loss does not depend on twice: its form is 0).
    :param params: the blocks ``W_i`` (same order).
    :param vectors: ``v_i``, shaped like the blocks.
    :param retain_graph: keep the graph of ``grads`` for another product.
    :return: a 1-d tensor of ``len(params)`` values (float64 sums).
    :raises InvalidArgumentError: if the three sequences differ in length.
    """
    if not len(grads) == len(params) == len(vectors):
        raise InvalidArgumentError(
            f"grads, params and vectors must have one length, got {len(grads)}, {len(params)}, {len(vectors)}"
        )
    used = [(g, vectors[i]) for i, g in enumerate(grads) if g is not None and g.requires_grad]
    hv: list[torch.Tensor | None] = [None] * len(params)
    if used:
        found = torch.autograd.grad([g for g, _ in used], list(params), grad_outputs=[v for _, v in used],
                                    retain_graph=retain_graph, allow_unused=True)
        hv = list(found)
    forms = [torch.zeros((), dtype=torch.float64) if h is None else (h.double() * v.double()).sum().cpu()
             for h, v in zip(hv, vectors)]
    return torch.stack(forms)


@dataclass(frozen=True)
class TraceEstimate:
    """The result of :func:`hutchinson_traces`.

    :param traces: the estimated ``tr(H_ii)`` per block (float64).
    :param draws: how many Rademacher draws were averaged.
    :param converged: whether the stopping rule ended the loop before ``max_iter``.
    """

    traces: torch.Tensor
    draws: int
    converged: bool


def hutchinson_traces(
    quadratic_forms: Callable[[list[torch.Tensor]], torch.Tensor],
    like: Sequence[torch.Tensor],
    max_iter: int,
    tolerance: float,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """Estimate the trace of each diagonal Hessian block by averaging Rademacher quadratic forms.

    :param quadratic_forms: ``v -> [v_i^T (H v)_i]_i`` (e.g. :func:`hessian_quadratic_forms`
        on the gradients of a loss), a 1-d tensor with one value per block.
    :param like: tensors shaped like the blocks (the parameters).
    :param max_iter: most draws, ``>= 1``.
    :param tolerance: relative change of the summed average traces (``tr(H_ii) / |W_i|``) that
        stops the loop, ``>= 0``.
    :param generator: CPU generator of the draws (reproducible estimates).
    :return: the estimate.
    :raises InvalidArgumentError: for ``max_iter < 1`` or a negative ``tolerance``.
    """
    if max_iter < 1 or tolerance < 0:
        raise InvalidArgumentError(f"max_iter must be >= 1 and tolerance >= 0, got {max_iter} and {tolerance}")
    total = torch.zeros(len(like), dtype=torch.float64)
    numels = torch.tensor([max(t.numel(), 1) for t in like], dtype=torch.float64)
    previous = 0.0
    for k in range(1, max_iter + 1):
        total = total + quadratic_forms(rademacher_like(like, generator)).double().cpu()
        current = float((total / numels).sum()) / k  # NNCF: the sum of the average (per-element) traces
        if abs(current - previous) / (abs(previous) + STOP_EPS) < tolerance:  # NNCF: no abs (see above)
            return TraceEstimate(total / k, k, True)
        previous = current
    return TraceEstimate(total / max_iter, max_iter, False)


def non_decreasing_sequences(length: int, options: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-decreasing sequence of ``length`` values from ``options`` (sorted ascending).

    HAWQ assigns bits along the layers sorted by ascending average Hessian trace, so that a layer
    never gets fewer bits than a flatter one: ``C(length + m - 1, m - 1)`` sequences for ``m``
    options instead of ``m ** length``. Listed as NNCF 2.x does: by the number of distinct values
    used, then the values, then where they change.

    :param length: the number of layers.
    :param options: the allowed values (bit widths).
    :return: the sequences; ``[]`` for ``length == 0``.
    """
    values = sorted(set(options))
    if length <= 0:
        return []
    out: list[tuple[int, ...]] = []
    for used in range(1, len(values) + 1):
        for chosen in combinations(values, used):
            for cuts in combinations(range(1, length), used - 1):
                seq: list[int] = []
                bounds = (0, *cuts, length)
                for value, lo, hi in zip(chosen, bounds[:-1], bounds[1:]):
                    seq += [value] * (hi - lo)
                out.append(tuple(seq))
    return out
