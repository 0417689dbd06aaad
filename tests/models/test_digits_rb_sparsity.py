"""Model-level test on real data: RB sparsity of the digits CNN, from the example config.

The dense CNN of ``conftest`` is fine-tuned with ``examples/configs/digits_rb_sparsity.json``:
the loss pulls the masks to half density, then they freeze. The mask logits train with their own
Adam learning rate (NNCF's ``compression_lr_multiplier`` scales gradients, which Adam undoes).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.algorithms.sparsity.rb import RBSparsityController
from nncompress.algorithms.sparsity.rb_loss import RBMask
from nncompress.demo.digits import DigitsCNN, evaluate, train_epoch

pytest.importorskip("sklearn")

from tests.models.conftest import Loaders

CONFIG = Path(__file__).parents[2] / "examples" / "configs" / "digits_rb_sparsity.json"
Sparse = tuple[RBSparsityController, nn.Module, list[float]]


@pytest.fixture(scope="module")
def sparse(dense: DigitsCNN, loaders: Loaders) -> Sparse:
    raw: dict[str, Any] = json.loads(CONFIG.read_text())
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(dense), nnc.CompressionConfig.from_dict(raw))
    assert isinstance(ctrl, RBSparsityController)
    logits = [m.logits for m in model.modules() if isinstance(m, RBMask)]
    weights = [p for p in model.parameters() if all(p is not q for q in logits)]
    optimizer = torch.optim.Adam([{"params": weights, "lr": raw["optimizer"]["base_lr"]},
                                  {"params": logits, "lr": raw["optimizer"]["mask_lr"]}])
    levels = []
    for _ in range(raw["epochs"]):
        ctrl.scheduler.epoch_step()
        train_epoch(model, loaders[0], optimizer, ctrl)
        levels.append(ctrl.compression_rate)
    return ctrl, model, levels


def test_loss_reaches_the_target_level_and_accuracy_holds(dense: DigitsCNN, sparse: Sparse, loaders: Loaders) -> None:
    ctrl, model, levels = sparse
    target = ctrl.params.final_level
    assert target == 0.5
    assert levels[0] < levels[-1]  # the loss drove the level up from 0
    assert ctrl.frozen and float(ctrl.loss().detach()) == 0.0
    assert ctrl.compression_rate >= target - 0.02, levels
    dense_acc, sparse_acc = evaluate(dense, loaders[1]), evaluate(model, loaders[1])
    assert sparse_acc >= 0.93 and sparse_acc >= dense_acc - 0.04, (dense_acc, sparse_acc, levels)
    stats = ctrl.statistics().to_dict()
    assert stats["rb_sparsity/layers_level"] == pytest.approx(ctrl.compression_rate)
    assert 0.0 < stats["rb_sparsity/mean_sparse_prob"] < 1.0


def test_stripped_model_and_onnx_keep_the_accuracy(sparse: Sparse, loaders: Loaders, tmp_path: Path) -> None:
    ctrl, model, _ = sparse
    acc = evaluate(model, loaders[1])
    stripped = ctrl.strip(do_copy=True)
    assert type(stripped) is DigitsCNN
    weights = [stripped.get_parameter(r.weight) for r in ctrl.sparsified_weights]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(ctrl.compression_rate)
    assert evaluate(stripped, loaders[1]) == acc
    path = tmp_path / "digits_rb.onnx"
    ctrl.export_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, _ = next(iter(loaders[1]))
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(out, expected, atol=1e-4)
