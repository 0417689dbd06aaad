"""filter_pruning: resume from state, strip, ONNX export, and with magnitude sparsity + quantization."""

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
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.demo.cnns import CifarResNet
from nncompress.errors import CompressionStateError, InvalidArgumentError
from nncompress.torch.runtime import get_runtime
from tests.algorithms.test_filter_pruning import ALL, pruning_config, resnet

SCHEDULE = {**ALL, "schedule": "exponential", "pruning_target": 0.5, "pruning_steps": 4}


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]


def train(ctrl: Any, model: nn.Module, opt: torch.optim.Optimizer, epochs: int) -> None:
    model.train()
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        for x, y in batches():
            ctrl.scheduler.step()
            loss = F.cross_entropy(model(x), y) + ctrl.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_resume_gives_identical_masks_outputs_and_schedule() -> None:
    config = pruning_config(SCHEDULE, pruning_init=0.1)
    ctrl, model = nnc.create_compressed_model(resnet(), config)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(ctrl, model, opt, 2)
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(opt.state_dict())
    train(ctrl, model, opt, 3)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)

    ctrl2, model2 = nnc.create_compressed_model(resnet(seed=5), config, compression_state=state)
    model2.load_state_dict(weights)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(opt_state)
    assert ctrl2.get_state() == state["ctrl_state"]
    train(ctrl2, model2, opt2, 3)
    model2.eval()
    torch.testing.assert_close(model2(x), expected, rtol=0, atol=0)
    assert all(torch.equal(a.keep(), b.keep()) for a, b in zip(ctrl.pruned_groups, ctrl2.pruned_groups))
    assert ctrl2.get_state() == ctrl.get_state() and ctrl2.frozen and ctrl2.pruning_level == 0.5


@pytest.mark.parametrize("field,value", [("pruning_level", 1.5), ("pruning_level", "0.5"), ("frozen", 1)])
def test_bad_state_fields_are_refused_naming_the_path(field: str, value: Any) -> None:
    config = pruning_config(SCHEDULE)
    ctrl, _ = nnc.create_compressed_model(resnet(), config)
    state = ctrl.get_compression_state()
    state["ctrl_state"]["filter_pruning"][field] = value
    with pytest.raises(CompressionStateError, match=f"ctrl_state.filter_pruning.{field}"):
        nnc.create_compressed_model(resnet(), config, compression_state=state)


def test_state_of_another_config_is_refused() -> None:
    ctrl, _ = nnc.create_compressed_model(resnet(), pruning_config(SCHEDULE))
    with pytest.raises(CompressionStateError, match="different filter_pruning config"):
        nnc.create_compressed_model(resnet(), pruning_config({**SCHEDULE, "pruning_target": 0.3}),
                                    compression_state=ctrl.get_compression_state())


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def conv_out_channels(path: Path) -> list[int]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    return [inits[n.input[1]].dims[0] for n in graph.node if n.op_type == "Conv" and n.input[1] in inits]


def test_strip_in_place_and_export_a_smaller_onnx(tmp_path: Path) -> None:
    ctrl, model = nnc.create_compressed_model(resnet(), pruning_config(ALL, pruning_init=0.5))
    x = torch.randn(3, 1, 8, 8)
    expected = model(x).detach()
    ctrl.export_model(str(tmp_path / "pruned.onnx"))
    dense = tmp_path / "dense.onnx"
    torch.onnx.export(resnet(), (x,), str(dense), dynamo=False)
    assert sum(conv_out_channels(tmp_path / "pruned.onnx")) < sum(conv_out_channels(dense))
    np.testing.assert_allclose(run_onnx(tmp_path / "pruned.onnx", x), expected.numpy(), rtol=1e-4, atol=1e-4)
    stripped = ctrl.strip(do_copy=False)  # in place: the compressed model itself becomes the small one
    assert stripped is model and type(model) is CifarResNet and get_runtime(model) is None
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # the controller's masks and groups no longer fit the model: a clear error, not a shape mismatch
    for use in (ctrl.scheduler.epoch_step, lambda: setattr(ctrl, "compression_rate", 0.2),
                lambda: ctrl.strip(do_copy=True), lambda: ctrl.export_model(str(tmp_path / "again.onnx"))):
        with pytest.raises(InvalidArgumentError, match="stripped in place"):
            use()
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def composite_config(order: list[str]) -> nnc.CompressionConfig:
    sections = {
        "filter_pruning": {"algorithm": "filter_pruning", "pruning_init": 0.4, "params": ALL},
        "magnitude_sparsity": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.3},
        "quantization": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8},
                                                                      "batchnorm_adaptation": {
                                                                          "num_bn_adaptation_samples": 0}}},
    }
    return nnc.CompressionConfig.from_dict({"input_info": {"sample_size": [2, 1, 8, 8]},
                                            "compression": [sections[name] for name in order]})


@pytest.mark.parametrize("order", [["filter_pruning", "magnitude_sparsity", "quantization"],
                                   ["quantization", "magnitude_sparsity", "filter_pruning"]])
def test_with_sparsity_and_quantization(order: list[str], tmp_path: Path) -> None:
    data = [(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    ctrl, model = nnc.create_compressed_model(resnet(), composite_config(order), init_data=data)
    runtime = get_runtime(model)
    assert runtime is not None
    chain = [entry[1] for entry in runtime.weight_points["layers.0.conv1.weight"]]
    assert chain == ["filter_pruning", "magnitude_sparsity", "quantization"]  # pruning masks apply first
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    expected = model(x).detach()
    stripped = ctrl.strip(do_copy=True)
    assert type(stripped) is CifarResNet
    assert stripped.layers[0].conv1.out_channels < 16
    torch.testing.assert_close(stripped(x), expected, rtol=1e-4, atol=1e-4)
    ctrl.export_model(str(tmp_path / "all.onnx"))
    got = run_onnx(tmp_path / "all.onnx", x)
    assert np.abs(got - expected.numpy()).max() < 0.05 * float(expected.abs().max()) + 1e-3
    stats = ctrl.statistics()
    assert stats.filter_pruning.current_filters < stats.filter_pruning.full_filters
