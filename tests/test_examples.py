"""The example scripts run and their config files load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import nncompress as nnc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in (EXAMPLES / "configs").glob("*.json")))
def test_example_configs_load(name: str) -> None:
    assert nnc.CompressionConfig.from_json(EXAMPLES / "configs" / name).algorithm_sections()


def _run_example(name: str, *args: Path) -> None:
    """Run ``examples/<name>.py``'s ``main`` with ``args`` as strings (the last one: the output folder)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(*map(str, args))


def test_qat_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_example("digits_int8_qat", tmp_path)
    assert (tmp_path / "digits_int8.onnx").exists() and (tmp_path / "checkpoint.pt").exists()
    assert "INT8 QAT accuracy" in capsys.readouterr().out


def test_ptq_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_example("digits_ptq", tmp_path)
    assert (tmp_path / "digits_ptq_int8.onnx").exists()
    out = capsys.readouterr().out
    assert "INT8 post-training accuracy" in out and "INT8 after one QAT epoch" in out


def test_filter_pruning_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_example("digits_filter_pruning", tmp_path)
    assert (tmp_path / "digits_pruned.onnx").exists() and (tmp_path / "checkpoint.pt").exists()
    out = capsys.readouterr().out
    assert "FLOPs removed" in out and "stripped: CifarResNet" in out


@pytest.mark.parametrize(("config", "algorithm"), [("digits_rb_sparsity", "rb_sparsity"),
                                                  ("digits_distillation", "knowledge_distillation"),
                                                  ("digits_mixed_precision", "quantization")])
def test_compress_example_runs_each_config(config: str, algorithm: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _run_example("digits_compress", EXAMPLES / "configs" / f"{config}.json", tmp_path)
    assert (tmp_path / f"{config}.onnx").exists()
    out = capsys.readouterr().out
    assert f"Statistics of {algorithm}" in out
    assert float(out.rsplit("onnxruntime accuracy ", 1)[1].split(";")[0]) >= 0.95
