"""Bad calibration data and bad calling context for ``quantize()`` / ``create_compressed_model()``:
each an ``nncompress.errors`` error that names the cause, with the model left as it was."""

from __future__ import annotations

import re
import threading

import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.errors import InitDataError, InvalidArgumentError
from nncompress.torch.runtime import get_runtime
from tests.model_zoo import ResidualCNN

QUIET = nnc.AdvancedQuantizationParameters(progress=False)
STEM = "ResidualCNN/Sequential[stem]/Conv2d[0]/conv2d_0"


def _images(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 1, 8, 8, generator=g) for _ in range(n)]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return get_runtime(model) is None and after.keys() == before.keys() and all(
        torch.equal(after[k], v) for k, v in before.items()
    )


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_in_the_first_batch_names_the_op(cnn: ResidualCNN, inplace: bool, value: float) -> None:
    """The first batch's error used to be hidden by 'no data was collected' from the cleanup."""
    data = _images()
    data[0][1, 0, 2, 3] = value
    before = _snapshot(cnn)
    adv = nnc.AdvancedQuantizationParameters(progress=False, inplace=inplace)
    with pytest.raises(InitDataError) as info:
        nnc.quantize(cnn, data, advanced_parameters=adv)
    message = str(info.value)
    assert message.startswith("calibration item 0: ") and f"quantized at {STEM} contain NaN or inf" in message
    assert "no data was collected" not in message
    assert _unchanged(cnn, before)


def test_nan_in_a_later_batch_names_item_and_op(cnn: ResidualCNN) -> None:
    data = _images(3)
    data[2][0, 0, 0, 0] = float("nan")
    with pytest.raises(InitDataError, match=rf"^calibration item 2: .*{re.escape(STEM)}"):
        nnc.quantize(cnn, data, advanced_parameters=QUIET)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float64])
def test_wrong_input_dtype_is_named_with_what_is_allowed(cnn: ResidualCNN, dtype: torch.dtype) -> None:
    data = [torch.randint(0, 255, (4, 1, 8, 8)).to(dtype)]
    name = str(dtype).replace("torch.", "")
    with pytest.raises(InitDataError) as info:
        nnc.quantize(cnn, data, advanced_parameters=QUIET)
    message = str(info.value)
    assert f"input 0 is {name}, but the model's parameters are float32" in message
    assert "must be float32" in message
    assert ("/ 255" in message) is (not dtype.is_floating_point)


def test_integer_ids_are_fine_for_an_embedding_model() -> None:
    """Token ids are integer: only a failing forward makes nncompress question an input's dtype."""
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(24, 4))
    q = nnc.quantize(model, [torch.randint(0, 20, (2, 3))], advanced_parameters=QUIET)
    assert get_runtime(q) is not None


def test_wrong_dtype_in_init_data(cnn: ResidualCNN) -> None:
    """Training-time init_data (here BatchNorm adaptation) gets the same dtype message."""
    config = {"input_info": {"sample_size": [1, 1, 8, 8]},
              "compression": {"algorithm": "magnitude_sparsity",
                              "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 4}}}}
    data = [(torch.randint(0, 255, (4, 1, 8, 8)), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(InitDataError, match=r"init_data batch 0 does not fit the model: input 0 is int64"):
        nnc.create_compressed_model(cnn, config, init_data=data)


class _Locked(ResidualCNN):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()  # copy.deepcopy cannot copy a lock


def test_model_that_cannot_be_deep_copied() -> None:
    model = _Locked()
    before = _snapshot(model)
    with pytest.raises(InvalidArgumentError, match=r"copy.deepcopy\(model\) failed: TypeError: .*inplace=True"):
        nnc.quantize(model, _images(), advanced_parameters=QUIET)
    assert _unchanged(model, before)
    # the way out the message gives works
    q = nnc.quantize(model, _images(), advanced_parameters=nnc.AdvancedQuantizationParameters(progress=False,
                                                                                              inplace=True))
    assert q is model and get_runtime(model) is not None


def test_quantize_under_inference_mode(cnn: ResidualCNN) -> None:
    before = _snapshot(cnn)
    data = _images()
    with torch.inference_mode(), pytest.raises(InvalidArgumentError, match=r"quantize\(\) was called under "
                                                                           r"torch.inference_mode\(\)"):
        nnc.quantize(cnn, data, advanced_parameters=nnc.AdvancedQuantizationParameters(progress=False, inplace=True))
    assert _unchanged(cnn, before)
    with torch.no_grad():  # no_grad is fine
        assert get_runtime(nnc.quantize(cnn, data, advanced_parameters=QUIET)) is not None


@pytest.mark.parametrize("algorithm", ["quantization", "magnitude_sparsity"])
def test_create_compressed_model_under_inference_mode(cnn: ResidualCNN, algorithm: str) -> None:
    before = _snapshot(cnn)
    config = {"input_info": {"sample_size": [1, 1, 8, 8]},
              "compression": {"algorithm": algorithm, "initializer": {"range": {"num_init_samples": 4}}}
              if algorithm == "quantization" else {"algorithm": algorithm}}
    data = [(x, torch.zeros(4, dtype=torch.long)) for x in _images()]
    with torch.inference_mode(), pytest.raises(InvalidArgumentError, match="create_compressed_model"):
        nnc.create_compressed_model(cnn, config, init_data=data)
    assert _unchanged(cnn, before)
