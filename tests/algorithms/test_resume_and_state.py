"""Checkpoint and resume: JSON state plus state_dict give bit-identical training and schedule."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import nncompress as nnc
from nncompress.errors import CompressionStateError
from nncompress.torch.runtime import get_runtime
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN

PARAMS = {"sparsity_init": 0.1, "sparsity_target": 0.7, "sparsity_target_epoch": 4, "update_per_optimizer_step": True}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]


def _train(ctrl, model, opt, epochs: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        for x, y in _batches():
            ctrl.scheduler.step()
            loss = torch.nn.functional.cross_entropy(model(x), y) + ctrl.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()


def _fresh() -> ResidualCNN:
    torch.manual_seed(0)
    return ResidualCNN()


def test_resume_is_bit_identical() -> None:
    config = sparsity_config(PARAMS)
    ctrl, model = nnc.create_compressed_model(_fresh(), config)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(ctrl, model, opt, 2)
    checkpoint = {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(opt.state_dict()),
        "compression_state": json.loads(json.dumps(ctrl.get_compression_state())),
    }
    _train(ctrl, model, opt, 3)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)

    ctrl2, model2 = nnc.create_compressed_model(_fresh(), config, compression_state=checkpoint["compression_state"])
    model2.load_state_dict(checkpoint["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(checkpoint["optimizer"])
    assert ctrl2.scheduler.get_state() == checkpoint["compression_state"]["ctrl_state"]["magnitude_sparsity"][
        "scheduler_state"
    ]
    _train(ctrl2, model2, opt2, 3)
    model2.eval()
    assert torch.equal(model2(x), expected)
    assert ctrl2.scheduler.get_state() == ctrl.scheduler.get_state()
    assert ctrl2.get_compression_state() == ctrl.get_compression_state()


def test_state_from_another_config_is_refused_and_model_untouched() -> None:
    ctrl, _ = nnc.create_compressed_model(_fresh(), sparsity_config(PARAMS))
    state = ctrl.get_compression_state()
    other = sparsity_config({**PARAMS, "sparsity_target": 0.5})
    model = _fresh()
    keys = list(model.state_dict())
    with pytest.raises(CompressionStateError, match="different magnitude_sparsity config"):
        nnc.create_compressed_model(model, other, compression_state=state)
    assert get_runtime(model) is None and list(model.state_dict()) == keys
    const = nnc.CompressionConfig.from_dict(
        {"input_info": {"sample_size": [1, 1, 8, 8]}, "compression": {"algorithm": "const_sparsity"}}
    )
    with pytest.raises(CompressionStateError, match="const_sparsity"):
        nnc.create_compressed_model(_fresh(), const, compression_state=state)
    with pytest.raises(CompressionStateError, match="builder_state"):
        nnc.create_compressed_model(_fresh(), other, compression_state={"model": 1})


def test_state_from_another_model_is_refused() -> None:
    ctrl, _ = nnc.create_compressed_model(_fresh(), sparsity_config(PARAMS))
    state = ctrl.get_compression_state()
    smaller = _fresh()
    smaller.blocks = smaller.blocks[:1]  # one residual block less: different weights
    with pytest.raises(CompressionStateError, match="different model"):
        nnc.create_compressed_model(smaller, sparsity_config(PARAMS), compression_state=state)
    assert get_runtime(smaller) is None


def test_thresholds_survive_resume() -> None:
    ctrl, model = nnc.create_compressed_model(_fresh(), sparsity_config(PARAMS))
    ctrl.scheduler.epoch_step(2)
    state = json.loads(json.dumps(ctrl.get_compression_state(), allow_nan=False))
    ctrl2, model2 = nnc.create_compressed_model(ResidualCNN(), sparsity_config(PARAMS), compression_state=state)
    model2.load_state_dict(model.state_dict())
    assert [r.threshold for r in ctrl2.sparsified_weights] == [r.threshold for r in ctrl.sparsified_weights]
