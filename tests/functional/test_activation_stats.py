"""Chunk-wise activation statistics against the same figures computed at once in float64."""

from __future__ import annotations

import pytest
import torch

from nncompress.errors import InvalidArgumentError
from nncompress.functional.activation_stats import ActivationStats, hessian_accumulate


def test_chunked_stats_match_whole() -> None:
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(2, n, 6, generator=g) * 3 + 1 for n in (5, 1, 9)]
    stats = ActivationStats.empty(6)
    h, count = None, 0
    for c in chunks:
        stats.update(c)
        h, count = hessian_accumulate(h, count, c)
    x = torch.cat([c.reshape(-1, 6) for c in chunks]).double()
    assert stats.count == count == x.shape[0]
    torch.testing.assert_close(stats.mean_sq, (x * x).mean(dim=0))
    torch.testing.assert_close(stats.mean_abs, x.abs().mean(dim=0))
    torch.testing.assert_close(stats.variance, x.var(dim=0, unbiased=False))
    per_chunk = torch.stack([c.reshape(-1, 6).double().var(dim=0, unbiased=False) for c in chunks])
    torch.testing.assert_close(stats.max_variance, per_chunk.amax(dim=0))
    assert h is not None
    torch.testing.assert_close(h, x.T @ x / x.shape[0], rtol=1e-6, atol=1e-6)
    assert "tokens=30" in str(stats)


def test_errors() -> None:
    stats = ActivationStats.empty(4)
    assert "no tokens" in str(stats)
    with pytest.raises(InvalidArgumentError, match="no activations"):
        _ = stats.mean_sq
    with pytest.raises(InvalidArgumentError, match="4 channels"):
        stats.update(torch.ones(3, 5))
    h, _ = hessian_accumulate(None, 0, torch.ones(2, 4))
    with pytest.raises(InvalidArgumentError, match="channels"):
        hessian_accumulate(h, 2, torch.ones(2, 3))
