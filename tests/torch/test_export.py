"""ONNX export: runs in onnxruntime and agrees with PyTorch; written atomically; formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import nncompress as nnc
from nncompress.errors import ExportError, InvalidArgumentError
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ControlFlowNet, ResidualCNN


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_sparse_cnn_export_matches_pytorch(cnn: ResidualCNN, tmp_path: Path) -> None:
    ctrl, model = nnc.create_compressed_model(cnn, sparsity_config({"sparsity_target": 0.7, "sparsity_target_epoch": 0}))
    ctrl.scheduler.epoch_step()
    path = tmp_path / "sparse.onnx"
    ctrl.export_model(str(path), input_names=["image"], output_names=["logits"])
    onnx.checker.check_model(str(path))
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    expected = model(x).detach().numpy()
    got = _run(path, {"image": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    graph = onnx.load(str(path)).graph
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    zero_share = sum(int((w == 0).sum()) for w in weights.values() if w.ndim >= 2) / sum(
        w.size for w in weights.values() if w.ndim >= 2
    )
    assert zero_share >= 0.6  # the masks are baked into the exported weights


def test_export_with_opset_and_model_args(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ControlFlowNet()
    ctrl, model = nnc.create_compressed_model(net, sparsity_config(sample_size=(2, 8)))
    x = torch.ones(2, 8)
    path = tmp_path / "cf.onnx"
    ctrl.export_model(str(path), save_format="onnx_13", model_args=(x, {}), input_names=["x"])
    assert onnx.load(str(path)).opset_import[0].version == 13
    np.testing.assert_allclose(_run(path, {"x": x.numpy()}), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_bad_format_and_failed_export_leave_no_file(cnn: ResidualCNN, tmp_path: Path) -> None:
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config())
    with pytest.raises(InvalidArgumentError, match="'pb'"):
        ctrl.export_model(str(tmp_path / "m.pb"), save_format="pb")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ExportError, match="m.onnx"):
        ctrl.export_model(str(path), model_args=(torch.ones(1, 3, 8, 8), {}))  # wrong channels
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bert_sparsity_export_runs_in_onnxruntime(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    config = nnc.CompressionConfig.from_dict(
        {
            "input_info": [{"sample_size": [1, 6], "type": "long", "keyword": "input_ids"},
                           {"sample_size": [1, 6], "type": "long", "keyword": "attention_mask", "filler": "ones"}],
            "compression": {"algorithm": "magnitude_sparsity", "ignored_scopes": ["{re}.*pooler.*"],
                            "params": {"sparsity_target": 0.5, "sparsity_target_epoch": 0}},
        }
    )
    ctrl, model = nnc.create_compressed_model(bert, config)
    ctrl.scheduler.epoch_step()
    assert len(ctrl.sparsified_weights) == 15  # 6 linear layers x 2 and 3 embedding tables (as NNCF), pooler ignored
    ids = torch.randint(0, 100, (1, 6))
    mask = torch.ones(1, 6, dtype=torch.long)
    path = tmp_path / "bert.onnx"
    ctrl.export_model(str(path), model_args=({"input_ids": ids, "attention_mask": mask},),
                      input_names=["input_ids", "attention_mask"])
    expected = model(input_ids=ids, attention_mask=mask).last_hidden_state.detach().numpy()
    got = _run(path, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
