"""Distillation losses against plain float64 references, NNCF 2.x's formula and the known gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.errors import InvalidArgumentError
from nncompress.functional.distillation import mse_distillation_loss, softmax_distillation_loss


def ref_softmax_loss(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """float64 numpy: T^2 * mean over rows of -sum_c p_t log p_s, from exp/log written out."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z / temperature
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p_t = np.exp(log_softmax(t))
    return float(-(p_t * log_softmax(s)).sum(axis=1).mean() * temperature**2)


def logits(seed: int, n: int, c: int, spread: float) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * spread


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 8), c=st.integers(2, 12), temperature=st.floats(0.25, 8.0),
       spread=st.floats(0.1, 20.0), seed=st.integers(0, 10_000))
def test_softmax_loss_matches_float64_reference_and_nncf_formula(
    n: int, c: int, temperature: float, spread: float, seed: int
) -> None:
    s, t = logits(seed, n, c, spread), logits(seed + 1, n, c, spread)
    got = softmax_distillation_loss(s, t, temperature)
    ref = ref_softmax_loss(s.double().numpy(), t.double().numpy(), temperature)
    assert got.shape == ()
    assert float(got) == pytest.approx(ref, rel=1e-5, abs=1e-5 * temperature**2)
    # NNCF 2.x writes the same value as a mean over all N*C elements times C * T^2
    nncf = -(torch.log_softmax(s / temperature, 1) * torch.softmax(t / temperature, 1)).mean() * c * temperature**2
    assert float(got) == pytest.approx(float(nncf), rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 10), temperature=st.floats(0.5, 6.0), seed=st.integers(0, 10_000))
def test_softmax_loss_gradient_is_t_times_probability_difference(n: int, c: int, temperature: float, seed: int) -> None:
    """d/ds of T^2 * CE(softmax(t/T), softmax(s/T)) averaged over N is T * (p_s - p_t) / N."""
    s = logits(seed, n, c, 3.0).double().requires_grad_()
    t = logits(seed + 1, n, c, 3.0).double()
    softmax_distillation_loss(s, t, temperature).backward()
    expected = temperature * (torch.softmax(s.detach() / temperature, 1) - torch.softmax(t / temperature, 1)) / n
    assert s.grad is not None
    torch.testing.assert_close(s.grad, expected, rtol=1e-9, atol=1e-12)


def test_softmax_loss_is_teacher_entropy_at_equal_logits_and_gives_no_teacher_gradient() -> None:
    t = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    s = t.detach().clone().requires_grad_()
    loss = softmax_distillation_loss(s, t, 1.0)
    p = torch.softmax(t.detach().double(), 1)
    assert float(loss.detach()) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)  # cross-entropy, not KL
    loss.backward()
    assert t.grad is None
    torch.testing.assert_close(s.grad, torch.zeros_like(s))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 10_000))
def test_mse_loss_matches_float64_reference(shape: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ref = float(((s.double().numpy() - t.double().numpy()) ** 2).mean())
    assert float(mse_distillation_loss(s, t)) == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_bad_inputs_raise_naming_the_value() -> None:
    with pytest.raises(InvalidArgumentError, match=r"same shape.*\(2, 3\).*\(2, 4\)"):
        mse_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(InvalidArgumentError, match=r"2-D logits.*\(2, 3, 4\)"):
        softmax_distillation_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="temperature"):
            softmax_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), bad)
