"""RB (L0) sparsity math against float64 references of NNCF 2.x's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional.sparsity import (
    RB_INITIAL_KEEP_PROBABILITY,
    RB_LOSS_P,
    RB_NOISE_EPS,
    logistic_noise_,
    rb_initial_logits,
    rb_kept_count,
    rb_masked_weight,
    rb_sparsity_loss,
)


class _NNCFThreshold(torch.autograd.Function):
    """Reference: NNCF 2.x's ``STThreshold`` (``x > 0.5``, gradient passed straight through)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (x > 0.5).to(x.dtype)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def nncf_masked_weight(w: torch.Tensor, m: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """NNCF 2.x's training-time mask, in plain autograd: ``w * STThreshold(sigmoid(m + noise))``."""
    z = m if noise is None else m + noise
    return w * _NNCFThreshold.apply(torch.sigmoid(z))


def test_initial_logits_are_logit_of_099() -> None:
    logits = rb_initial_logits(torch.zeros(3, 4, dtype=torch.float16))
    assert logits.dtype == torch.float32 and logits.shape == (3, 4)
    expected = math.log(0.99 / 0.01)
    assert np.allclose(logits.numpy(), expected, rtol=0, atol=1e-6)
    assert torch.allclose(torch.sigmoid(logits.double()), torch.tensor(RB_INITIAL_KEEP_PROBABILITY, dtype=torch.float64))


def test_logistic_noise_is_in_place_bounded_and_logistic() -> None:
    torch.manual_seed(0)
    buf = torch.empty(200_000)
    ptr = buf.data_ptr()
    out = logistic_noise_(buf)
    assert out is buf and buf.data_ptr() == ptr
    bound = math.log((1 - RB_NOISE_EPS) / RB_NOISE_EPS)
    assert float(buf.abs().max()) <= bound + 1e-4
    # logistic(0, 1): mean 0, variance pi^2 / 3, P(noise > -m) = sigmoid(m)
    x = buf.double()
    assert abs(float(x.mean())) < 0.02
    assert abs(float(x.var()) - math.pi**2 / 3) < 0.05
    for m in (-2.0, 0.0, 1.0, 4.595):
        assert abs(float((x > -m).double().mean()) - 1 / (1 + math.exp(-m))) < 0.005
    with pytest.raises(InvalidArgumentError, match="eps"):
        logistic_noise_(buf, eps=0.5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.sampled_from([1.0, 0.1, 3.0]), st.booleans())
def test_masked_weight_and_gradients_match_float64(n: int, seed: int, mult: float, noisy: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    m = torch.randn(n, generator=g) * 3
    noise = logistic_noise_(torch.empty(n)) if noisy else None
    upstream = torch.randn(n, generator=g)
    z64 = m.double() + (noise.double() if noise is not None else 0.0)
    w_ = w.clone().requires_grad_()
    m_ = m.clone().requires_grad_()
    out = rb_masked_weight(w_, m_, None if noise is None else noise.clone(), mult)
    out.backward(upstream)
    keep = (z64 > 0).double()
    s = torch.sigmoid(z64)
    assert torch.equal(out.detach().double(), w.double() * keep)
    assert torch.allclose(w_.grad.double(), upstream.double() * keep, rtol=0, atol=0)
    expected = upstream.double() * w.double() * s * (1 - s) * mult
    assert torch.allclose(m_.grad.double(), expected, rtol=1e-5, atol=1e-6)


def test_gradients_equal_nncf_straight_through_threshold() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64)
    m = torch.randn(4, 5, generator=g, dtype=torch.float64) * 2
    noise = logistic_noise_(torch.empty(4, 5, dtype=torch.float64))
    grads = []
    for fn in (lambda a, b: rb_masked_weight(a, b, noise.clone()), lambda a, b: nncf_masked_weight(a, b, noise)):
        a, b = w.clone().requires_grad_(), m.clone().requires_grad_()
        out = fn(a, b)
        (out * torch.arange(20, dtype=torch.float64).reshape(4, 5)).sum().backward()
        grads.append((out.detach(), a.grad, b.grad))
    for ours, ref in zip(*grads):
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_shapes_must_agree() -> None:
    with pytest.raises(InvalidArgumentError, match=r"\(2, 3\)"):
        rb_masked_weight(torch.zeros(2, 3), torch.zeros(3, 2))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=4), st.integers(0, 2**31 - 1),
       st.floats(0.0, 0.99), st.sampled_from([1.0, 0.5]))
def test_kept_count_and_loss_match_float64(sizes: list[int], seed: int, level: float, mult: float) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = [(torch.randn(n, generator=g) * 3).requires_grad_() for n in sizes]
    total = sum(sizes)
    kept = rb_kept_count(logits, mult)
    kept64 = sum(float((m.detach().double() > 0).sum()) for m in logits)
    assert float(kept.detach()) == kept64
    loss = rb_sparsity_loss(kept, total, level)
    density = kept64 / total
    expected = ((density - (1 - level)) / RB_LOSS_P) ** 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    loss.backward()
    dloss_dkept = 2 * (density - (1 - level)) / RB_LOSS_P**2 / total
    for m in logits:
        s = torch.sigmoid(m.detach().double())
        # float32 s (1 - s) loses digits as s nears 1: an absolute bound on the factor
        assert torch.allclose(m.grad.double(), dloss_dkept * s * (1 - s) * mult, rtol=1e-4,
                              atol=abs(dloss_dkept) * mult * 1e-6 + 1e-12)


def test_loss_and_count_refuse_bad_input() -> None:
    with pytest.raises(InvalidArgumentError, match="at least one"):
        rb_kept_count([])
    with pytest.raises(InvalidArgumentError, match="total"):
        rb_sparsity_loss(torch.tensor(1.0), 0, 0.5)
    with pytest.raises(InvalidArgumentError, match="level"):
        rb_sparsity_loss(torch.tensor(1.0), 4, float("nan"))
