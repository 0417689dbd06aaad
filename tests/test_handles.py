"""Model-level functions: compression_controller, strip, export_model."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import nncompress as nnc
from nncompress.errors import InvalidArgumentError
from nncompress.torch.runtime import get_runtime
from tests.model_zoo import ResidualCNN

CONFIG = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": {"algorithm": "quantization"}}


@pytest.fixture
def compressed() -> tuple[nnc.CompressionAlgorithmController[torch.nn.Module], torch.nn.Module]:
    torch.manual_seed(0)
    return nnc.create_compressed_model(ResidualCNN().eval(), CONFIG, init_data=[torch.randn(4, 1, 8, 8)])


def test_create_compressed_model_registers_its_controller(compressed) -> None:  # type: ignore[no-untyped-def]
    ctrl, model = compressed
    assert nnc.compression_controller(model) is ctrl


def test_copies_and_pickles_do_not_carry_the_controller(compressed) -> None:  # type: ignore[no-untyped-def]
    _, model = compressed
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert get_runtime(other) is not None
        with pytest.raises(InvalidArgumentError, match="no compression controller"):
            nnc.compression_controller(other)


def test_plain_models_have_no_controller() -> None:
    with pytest.raises(InvalidArgumentError, match="no compression controller"):
        nnc.compression_controller(ResidualCNN())


@pytest.mark.parametrize("fmt", list(nnc.StripFormat))
def test_strip_copies_by_default_and_removes_the_runtime(compressed, fmt: nnc.StripFormat) -> None:  # type: ignore[no-untyped-def]
    _, model = compressed
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
    stripped = nnc.strip(model, strip_format=fmt)
    assert get_runtime(model) is not None and stripped is not model
    with torch.no_grad():
        got = stripped(x)
    assert float((got - want).abs().max()) < 0.1 * float(want.abs().max())
    if fmt is nnc.StripFormat.IN_PLACE:
        assert get_runtime(stripped) is None


def test_strip_in_place_and_bad_format(compressed) -> None:  # type: ignore[no-untyped-def]
    _, model = compressed
    with pytest.raises(InvalidArgumentError, match="strip_format must be a StripFormat"):
        nnc.strip(model, strip_format="native")  # type: ignore[arg-type]
    assert nnc.strip(model, do_copy=False, strip_format=nnc.StripFormat.IN_PLACE) is model
    assert get_runtime(model) is None


def test_export_model_uses_the_registered_controller(compressed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, model = compressed
    path = tmp_path / "m.onnx"
    nnc.export_model(model, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = model.eval()(x)
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max()) + 1e-3


def test_strip_of_a_pruned_model_removes_the_channels() -> None:
    from nncompress.demo.cnns import CifarResNet

    torch.manual_seed(0)
    config = {"input_info": {"sample_size": [1, 1, 8, 8]},
              "compression": {"algorithm": "filter_pruning", "pruning_init": 0.5,
                              "params": {"prune_first_conv": True, "prune_downsample_convs": True,
                                         "channel_multiple": 1}}}
    ctrl, model = nnc.create_compressed_model(CifarResNet(widths=(16, 32), blocks=1, in_channels=1).eval(), config)
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    small = nnc.strip(model)  # a copy, through the model's controller: channels physically removed
    assert type(small) is CifarResNet and get_runtime(small) is None
    assert small.stem[0].out_channels == 8 and model.stem[0].out_channels == 16
    torch.testing.assert_close(small(x), expected, rtol=1e-5, atol=1e-5)


def test_strip_of_a_distilling_model_drops_the_teacher() -> None:
    from nncompress.algorithms.distillation.teacher import distilling

    torch.manual_seed(0)
    config = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": {"algorithm": "knowledge_distillation",
                                                                           "type": "mse"}}
    _, model = nnc.create_compressed_model(ResidualCNN(), config)
    assert distilling(model)
    stripped = nnc.strip(model)
    assert not distilling(stripped) and distilling(model)  # the copy only
    nnc.strip(model, do_copy=False)
    assert not distilling(model)
