"""Fixtures shared by the model-level tests on scikit-learn's digits."""

from __future__ import annotations

from typing import Any

import pytest
from torch.utils.data import DataLoader

from nncompress.demo.digits import DigitsCNN, digits_loaders, train_dense

Loaders = tuple[DataLoader[Any], DataLoader[Any]]


@pytest.fixture(scope="module")
def loaders() -> Loaders:
    """The fixed digits split (batch 64)."""
    return digits_loaders(seed=0)


@pytest.fixture(scope="module")
def dense(loaders: Loaders) -> DigitsCNN:
    """The dense CNN trained on it (the tests copy it before compressing)."""
    return train_dense(seed=0, loaders=loaders)
