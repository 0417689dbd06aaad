"""BatchNorm adaptation refuses init data that makes a statistic NaN or infinite (issue 8)."""

from __future__ import annotations

import pytest
import torch

import nncompress as nnc
from nncompress.errors import InitDataError
from nncompress.torch.bn_adaptation import adapt_batchnorm
from nncompress.torch.runtime import get_runtime
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN


def _data(bad_batch: int, value: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 1, 8, 8, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    data[bad_batch][0][5, 0, 3, 4] = value  # one pixel of one sample
    return data


def _bn_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_create_compressed_model_names_the_first_batchnorm_and_batch(cnn: ResidualCNN, value: float) -> None:
    cnn.train()
    cnn.blocks[1].eval()  # a mixed mode must come back as it was
    before = _bn_state(cnn)
    keys = list(cnn.state_dict())
    config = sparsity_config({"sparsity_init": 0.5},
                             initializer={"batchnorm_adaptation": {"num_bn_adaptation_samples": 24}})
    with pytest.raises(InitDataError) as info:
        nnc.create_compressed_model(cnn, config, init_data=_data(1, value))
    message = str(info.value)
    assert "ResidualCNN/Sequential[stem]/BatchNorm2d[1]/batch_norm_0" in message
    assert "'stem.1'" in message and "batch 1" in message
    after = _bn_state(cnn)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in cnn.modules()] == [m is not cnn.blocks[1] and not _under(m, cnn.blocks[1])
                                                   for m in cnn.modules()]
    assert get_runtime(cnn) is None and list(cnn.state_dict()) == keys


def _under(module: torch.nn.Module, parent: torch.nn.Module) -> bool:
    return any(module is m for m in parent.modules())


def test_adapt_batchnorm_restores_momentum_and_statistics(cnn: ResidualCNN) -> None:
    cnn.eval()
    cnn.stem[1].momentum = 0.3
    before = _bn_state(cnn)
    with pytest.raises(InitDataError, match="batch 2"):
        adapt_batchnorm(cnn, _data(2, float("nan")), num_samples=24, progress=False)
    after = _bn_state(cnn)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert cnn.stem[1].momentum == 0.3 and not any(m.training for m in cnn.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cnn.modules())  # the guard is gone


def test_a_later_batchnorm_is_named_when_only_it_overflows() -> None:
    # finite input; the conv's output overflows float32 only after the first BatchNorm
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        net[1].weight.fill_(3e38)
    with pytest.raises(InitDataError, match=r"Sequential/BatchNorm1d\[2\]/batch_norm_0 \(module '2'\)"):
        adapt_batchnorm(net, [torch.randn(8, 4)], num_samples=8, progress=False)
    assert torch.equal(net[2].running_mean, torch.zeros(4)) and torch.equal(net[2].running_var, torch.ones(4))


def test_finite_data_still_adapts(cnn: ResidualCNN) -> None:
    assert adapt_batchnorm(cnn, _data(0, 0.5), num_samples=24, progress=False) == 24
    assert all(bool(torch.isfinite(m.running_var).all()) for m in cnn.modules() if isinstance(m, torch.nn.BatchNorm2d))
