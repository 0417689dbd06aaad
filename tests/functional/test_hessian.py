"""Hutchinson's Hessian trace estimator against exact float64 Hessians and known curvature."""

from __future__ import annotations

import math
from itertools import product

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional.hessian import (
    hessian_quadratic_forms,
    hutchinson_traces,
    non_decreasing_sequences,
    rademacher_like,
)


def _mlp_loss(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """A tiny two-layer tanh network with cross-entropy on fixed data (float64)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0, 2, 1])
    return torch.nn.functional.cross_entropy(torch.tanh(x @ w1.T) @ w2.T, y)


def _params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)]


def _exact_hessian(params: list[torch.Tensor]) -> torch.Tensor:
    sizes = [p.numel() for p in params]

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        w1, w2 = flat.split(sizes)
        return _mlp_loss(w1.view_as(params[0]), w2.view_as(params[1]))

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    hessian: torch.Tensor = torch.autograd.functional.hessian(flat_loss, flat)
    return hessian


def _forms_for(params: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    grads = torch.autograd.grad(_mlp_loss(*params), params, create_graph=True)
    return lambda v: hessian_quadratic_forms(grads, params, v, retain_graph=True)


def test_quadratic_forms_equal_the_exact_hessian_blocks() -> None:
    params = _params()
    h = _exact_hessian(params)  # (35, 35)
    v = rademacher_like(params, torch.Generator().manual_seed(5))
    flat_v = torch.cat([t.reshape(-1) for t in v])
    hv = h @ flat_v
    n1 = params[0].numel()
    expected = torch.stack([flat_v[:n1] @ hv[:n1], flat_v[n1:] @ hv[n1:]])
    got = _forms_for(params)(v)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_trace_estimate_converges_to_the_exact_block_traces() -> None:
    params = _params()
    h = _exact_hessian(params)
    n1 = params[0].numel()
    blocks = [slice(0, n1), slice(n1, h.shape[0])]
    exact = torch.stack([h[b, b].diagonal().sum() for b in blocks])
    draws = 2000
    est = hutchinson_traces(_forms_for(params), params, max_iter=draws, tolerance=0.0,
                            generator=torch.Generator().manual_seed(0))
    assert est.draws == draws and not est.converged
    for i, b in enumerate(blocks):
        # v^T S v with S the block's rows of H, symmetrised: Var = 2 (||S||_F^2 - sum diag(S)^2)
        a = torch.zeros_like(h)
        a[b] = h[b]
        s = (a + a.T) / 2
        std = math.sqrt(2 * float((s**2).sum() - (s.diagonal() ** 2).sum()) / draws)
        assert abs(float(est.traces[i] - exact[i])) < 5 * std + 1e-12, (float(est.traces[i]), float(exact[i]), std)


def test_linear_least_squares_trace_is_known() -> None:
    # L = 1/2 ||W X^T - Y^T||_F^2 / N: the Hessian in W is I_out (x) X^T X / N, trace = out * ||X||_F^2 / N
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    w = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(0.5 * ((x @ w.T - y) ** 2).sum() / 50, [w], create_graph=True)
    exact = 3 * float((x**2).sum()) / 50
    est = hutchinson_traces(lambda v: hessian_quadratic_forms(grads, [w], v, retain_graph=True), [w],
                            max_iter=3000, tolerance=0.0, generator=torch.Generator().manual_seed(1))
    assert float(est.traces[0]) == pytest.approx(exact, rel=0.03)


def test_diagonal_curvature_is_exact_in_one_draw_and_stops() -> None:
    # L = sum_i a_i / 2 * ||W_i||^2: H_ii = a_i I, so every draw gives a_i * |W_i| exactly
    ws = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.randn(7, dtype=torch.float64, requires_grad=True)]
    loss = 2.5 * (ws[0] ** 2).sum() / 2 + 0.25 * (ws[1] ** 2).sum() / 2 + (ws[0].sum() * 3.0)
    grads = torch.autograd.grad(loss, ws, create_graph=True)
    est = hutchinson_traces(lambda v: hessian_quadratic_forms(grads, ws, v, retain_graph=True), ws,
                            max_iter=50, tolerance=1e-4)
    assert est.converged and est.draws == 2  # the second draw changes nothing
    torch.testing.assert_close(est.traces, torch.tensor([2.5 * 12, 0.25 * 7], dtype=torch.float64))


def test_block_without_second_derivative_has_zero_trace() -> None:
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    grads = torch.autograd.grad((a**2).sum() + b.sum(), [a, b], create_graph=True)  # dL/db is constant
    forms = hessian_quadratic_forms(grads, [a, b], rademacher_like([a, b]))
    assert float(forms[1]) == 0.0 and float(forms[0]) == pytest.approx(6.0)


def test_rademacher_entries_and_bad_arguments() -> None:
    v = rademacher_like([torch.zeros(1000), torch.zeros(2, 3, dtype=torch.float64)], torch.Generator().manual_seed(0))
    assert set(v[0].unique().tolist()) == {-1.0, 1.0} and v[1].dtype == torch.float64
    assert abs(float(v[0].mean())) < 0.15
    with pytest.raises(InvalidArgumentError, match="max_iter"):
        hutchinson_traces(lambda v: torch.zeros(1), [torch.zeros(1)], max_iter=0, tolerance=0.1)
    with pytest.raises(InvalidArgumentError, match="one length"):
        hessian_quadratic_forms([None], [torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])


@settings(max_examples=30, deadline=None)
@given(length=st.integers(0, 6), options=st.sets(st.sampled_from([2, 3, 4, 6, 8]), min_size=1, max_size=4))
def test_non_decreasing_sequences_are_all_of_them(length: int, options: set[int]) -> None:
    seqs = non_decreasing_sequences(length, sorted(options))
    brute = {s for s in product(sorted(options), repeat=length) if list(s) == sorted(s)} if length else set()
    assert len(seqs) == len(set(seqs)) and set(seqs) == brute
    if length:
        assert len(seqs) == math.comb(length + len(options) - 1, length)


def test_stopping_rule_sums_per_element_average_traces_as_nncf() -> None:
    # NNCF 2.x stops on the relative change of sum_i tr(H_ii) / |W_i| (its "average traces"): a
    # 1000-element block whose total trace moves 5% moves that sum by 0.45% only
    draws = iter([torch.tensor([10.0, 1000.0]), *[torch.tensor([10.0, 1100.0])] * 9])
    est = hutchinson_traces(lambda v: next(draws), [torch.zeros(1), torch.zeros(1000)], max_iter=10, tolerance=0.01)
    assert est.converged and est.draws == 2
    torch.testing.assert_close(est.traces, torch.tensor([10.0, 1050.0], dtype=torch.float64))


def test_stopping_rule_with_a_negative_total_still_needs_the_tolerance() -> None:
    # NNCF divided by the signed previous total: any negative total stopped at the second draw
    draws = iter([torch.tensor([-1.0]), torch.tensor([-3.0]), *[torch.tensor([-2.0])] * 8])
    est = hutchinson_traces(lambda v: next(draws), [torch.zeros(1)], max_iter=10, tolerance=0.01)
    assert est.draws > 2
