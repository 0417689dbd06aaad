"""Shared fixtures: small models of the shapes nncompress must handle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.model_zoo import ControlFlowNet, FunctionalNet, ResidualCNN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

def _shared_dir() -> Path:
    """``../shared`` beside the repository (``NNCOMPRESS_SHARED`` overrides it)."""
    candidates = [os.environ.get("NNCOMPRESS_SHARED", ""), Path(__file__).resolve().parents[2] / "shared",
                  "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "compat").is_dir():
            return Path(c)
    return Path(__file__).resolve().parents[2] / "shared"


SHARED = _shared_dir()


@pytest.fixture
def cnn() -> ResidualCNN:
    torch.manual_seed(0)
    return ResidualCNN()


@pytest.fixture
def control_flow_net() -> ControlFlowNet:
    torch.manual_seed(0)
    return ControlFlowNet()


@pytest.fixture
def functional_net() -> FunctionalNet:
    torch.manual_seed(0)
    return FunctionalNet()
