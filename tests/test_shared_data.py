"""The spec and corpus tests need ../shared: they skip without it locally and fail in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["tests/config/test_config_corpus.py", "tests/api/test_compression_api.py"]


def _pytest(ci: str | None, shared: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env["NNCOMPRESS_SHARED"] = shared
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist", *MODULES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_missing_shared_fails_in_ci(tmp_path: Path, ci: str) -> None:
    result = _pytest(ci, str(tmp_path / "nonexistent"))
    assert result.returncode != 0, result.stdout
    assert "the NNCF 2.x config corpus not found" in result.stdout and "the API spec not found" in result.stdout
    assert "CI=true needs it" in result.stdout


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_missing_shared_skips_locally(tmp_path: Path, ci: str | None) -> None:
    result = _pytest(ci, str(tmp_path / "nonexistent"))
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout  # both modules skipped whole
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 2 and all("not found at" in line for line in skipped), result.stdout
    assert "passed" not in result.stdout and "CI=true needs it" not in result.stdout
