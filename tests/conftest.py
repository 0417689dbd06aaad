"""Shared fixtures: small models of the shapes nncompress must handle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.model_zoo import ControlFlowNet, FunctionalNet, ResidualCNN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

IN_CI = os.environ.get("CI", "").lower() == "true"
"""CI runs with ``CI=true`` and has ``../shared``: tests that need it fail there instead of skipping."""


def _shared_dir() -> Path:
    """``../shared`` beside the repository; ``NNCOMPRESS_SHARED``, when set, is used and nothing else."""
    override = os.environ.get("NNCOMPRESS_SHARED", "")
    if override:
        return Path(override)
    for c in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")):
        if (c / "compat").is_dir():
            return c
    return Path(__file__).resolve().parents[2] / "shared"


def require_shared(path: Path, what: str) -> None:
    """Skip the calling test module when ``path`` (under ``../shared``) is missing, or fail it in CI.

    Call at module level, before the module builds its parameter lists from the files.

    :param path: the file or folder the module reads.
    :param what: what it is, for the message (``"the NNCF 2.x config corpus"``).
    """
    if path.exists():
        return
    message = f"{what} not found at {path}: ../shared is missing (NNCOMPRESS_SHARED names another place)"
    if IN_CI:
        pytest.fail(f"{message}; CI=true needs it, so these tests fail instead of skipping", pytrace=False)
    pytest.skip(message, allow_module_level=True)


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
