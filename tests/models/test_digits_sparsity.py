"""Model-level test on real data: 70% magnitude sparsity of a small CNN on scikit-learn's digits.

One dense model is trained per module (about 2 s) and sparsified once with fine-tuning; the
tests then check accuracy, the measured sparsity, the ONNX export in onnxruntime, resume from a
checkpoint, the end-to-end demo and the ``nncompress demo`` command.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress import cli
from nncompress.api.compression import CompressionAlgorithmController
from nncompress.demo import run as demo_run
from nncompress.demo.digits import DigitsCNN, digits_loaders, evaluate, predict
from nncompress.demo.run import compressed_weights, run_demo, sparsify, sparsity_config

pytest.importorskip("sklearn")

from tests.models.conftest import Loaders

Sparse = tuple[CompressionAlgorithmController[nn.Module], nn.Module]




@pytest.fixture(scope="module")
def sparse(dense: DigitsCNN, loaders: Loaders) -> Sparse:
    torch.manual_seed(0)
    return sparsify(copy.deepcopy(dense), loaders[0], sparsity_config(target=0.7), epochs=8)


def test_digits_split_is_fixed_stratified_and_standardised(loaders: Loaders) -> None:
    train, test = loaders
    x_train, y_train = (torch.cat(t) for t in zip(*train))
    x_test, y_test = (torch.cat(t) for t in zip(*test))
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-3
    assert torch.bincount(y_test, minlength=10).min() >= 35  # stratified: 35-37 per class
    again = torch.cat([x for x, _ in digits_loaders(seed=1)[1]])
    assert torch.equal(again, x_test)  # the split does not depend on the seed


def test_dense_model_is_small_and_accurate(dense: DigitsCNN, loaders: Loaders) -> None:
    assert 10_000 <= sum(p.numel() for p in dense.parameters()) <= 30_000
    assert dense.training  # evaluate restores the mode
    assert evaluate(dense, loaders[1]) >= 0.97
    assert dense.training


def test_sparse_accuracy_within_one_point_of_dense(dense: DigitsCNN, sparse: Sparse, loaders: Loaders) -> None:
    ctrl, model = sparse
    dense_acc, sparse_acc = evaluate(dense, loaders[1]), evaluate(model, loaders[1])
    assert sparse_acc >= dense_acc - 0.01, (dense_acc, sparse_acc)
    assert evaluate(ctrl.strip(do_copy=True), loaders[1]) == sparse_acc


def test_sparsified_layers_reach_the_target(sparse: Sparse) -> None:
    ctrl, _ = sparse
    names = compressed_weights(ctrl)
    assert names == ["stem.0.weight", "block.depthwise.weight", "block.pointwise.weight",
                     "down.0.weight", "classifier.weight"]
    stripped = ctrl.strip(do_copy=True)
    weights = [stripped.get_parameter(n) for n in names]
    measured = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert measured >= 0.69
    assert ctrl.compression_stage() == nnc.CompressionStage.FULLY_COMPRESSED
    assert ctrl.statistics().to_dict()["magnitude_sparsity/layers_level"] == pytest.approx(measured, abs=1e-6)


def test_onnx_export_agrees_with_pytorch(sparse: Sparse, loaders: Loaders, tmp_path: Path) -> None:
    ctrl, _ = sparse
    path = tmp_path / "sparse.onnx"
    ctrl.export_model(str(path), input_names=["images"], output_names=["logits"])
    torch_logits, _ = predict(ctrl.strip(do_copy=True), loaders[1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.cat([x for x, _ in loaders[1]]).numpy()
    ort_logits = np.concatenate([session.run(None, {"images": images[i : i + 1]})[0] for i in range(len(images))])
    agreement = float((ort_logits.argmax(1) == torch_logits.argmax(1).numpy()).mean())
    assert agreement >= 0.99
    np.testing.assert_allclose(ort_logits, torch_logits.numpy(), rtol=1e-4, atol=1e-4)
    initializers = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    weights = [w for w in initializers if w.ndim > 1]
    assert sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights) >= 0.69


def test_resume_from_checkpoint_gives_identical_outputs(sparse: Sparse, loaders: Loaders, tmp_path: Path) -> None:
    ctrl, model = sparse
    torch.save({"model": model.state_dict(), "compression_state": ctrl.get_compression_state()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    json.dumps(ck["compression_state"])  # state is data
    config = nnc.CompressionConfig.from_dict(sparsity_config(target=0.7))
    ctrl2, model2 = nnc.create_compressed_model(DigitsCNN(), config, compression_state=ck["compression_state"])
    model2.load_state_dict(ck["model"])
    assert ctrl2.get_state() == ctrl.get_state()
    assert torch.equal(predict(model2, loaders[1])[0], predict(model, loaders[1])[0])


def test_run_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fig = run_demo(str(tmp_path / "demo"), epochs=4, finetune_epochs=4, progress=False)
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {"dense.onnx", "sparse.onnx", "int8.onnx", "ptq.onnx",
                                                                 "summary.json"}
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == fig
    assert fig["onnx_agrees"] and min(fig["dense_ort_argmax_agreement"], fig["sparse_ort_argmax_agreement"]) >= 0.99
    assert fig["sparse_sparsity_layers"] >= 0.69 and fig["sparse_onnx_weight_sparsity"] >= 0.69
    assert fig["dense_sparsity_layers"] == 0.0 and fig["dense_onnx_weight_sparsity"] < 0.01
    assert fig["stripped_acc"] == fig["sparse_acc"] and fig["ort_sparse_acc"] >= 0.9
    assert fig["sparse_onnx_gzip_bytes"] < 0.6 * fig["dense_onnx_gzip_bytes"]
    printed = capsys.readouterr().out
    assert "Statistics of magnitude_sparsity" in printed and "5 of 9 weighted ops compressed" in printed
    assert "Summary (onnxruntime and PyTorch agree" in printed
    assert "Statistics of quantization" in printed
    assert fig["int8_ort_argmax_agreement"] >= 0.99 and fig["int8_onnx_bytes"] < 0.6 * fig["dense_onnx_bytes"]
    assert fig["ptq_acc"] >= fig["dense_acc"] - 0.01 and fig["ptq_ort_argmax_agreement"] >= 0.99


def test_cli_demo_passes_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append((args, kwargs))
        return {"onnx_agrees": len(calls) == 1}

    monkeypatch.setattr(demo_run, "run_demo", fake)
    assert cli.main(["demo", "--out-dir", "x", "--epochs", "2", "--no-progress"]) == 0
    assert calls[0] == (("x",), {"seed": 0, "progress": False, "epochs": 2})
    assert cli.main(["demo"]) == 1  # the onnxruntime check failed
    assert calls[1] == (("runs/demo",), {"seed": 0, "progress": True})
    with pytest.raises(SystemExit):
        cli.main(["demo", "--epochs", "0"])
