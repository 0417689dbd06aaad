"""Batch-norm adaptation from init_data after masks change the activations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nncompress as nnc
from nncompress.errors import InitDataError
from nncompress.torch.runtime import get_runtime
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN


def _config(samples: int = 64) -> nnc.CompressionConfig:
    return sparsity_config(
        {"sparsity_init": 0.6, "sparsity_target": 0.6}, initializer={"batchnorm_adaptation": {"num_bn_adaptation_samples": samples}}
    )


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=g) * 2 + 1, torch.zeros(16, dtype=torch.long)) for _ in range(4)]


def test_running_stats_fit_the_masked_weights(cnn: ResidualCNN) -> None:
    data = _data()
    ctrl, model = nnc.create_compressed_model(cnn, _config(64), init_data=data)
    assert ctrl.compression_rate == pytest.approx(0.6, abs=0.01)
    masked = model.stem[0].weight * get_runtime(model).group("magnitude_sparsity")["weight:stem/0/weight"].mask
    acts = torch.cat([F.conv2d(x, masked, padding=1) for x, _ in data])  # (64, 16, 8, 8)
    bn = model.stem[1]
    torch.testing.assert_close(bn.running_mean, acts.mean(dim=(0, 2, 3)).detach(), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and model.training  # restored


def test_uses_whole_batches_up_to_the_sample_count(cnn: ResidualCNN) -> None:
    seen = []
    data = _data()
    cnn.stem.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    nnc.create_compressed_model(cnn, _config(20), init_data=data)
    assert seen[1:] == [16, 16]  # capture ran once, then 2 batches cover 20 samples


def test_missing_or_bad_init_data(cnn: ResidualCNN) -> None:
    keys = list(cnn.state_dict())
    stats = cnn.stem[1].running_mean.clone()
    with pytest.raises(InitDataError, match="init_data"):
        nnc.create_compressed_model(cnn, _config())
    with pytest.raises(InitDataError, match="batch 0"):
        nnc.create_compressed_model(cnn, _config(), init_data=[torch.ones(2, 3, 8, 8)])
    with pytest.raises(InitDataError, match="empty"):
        nnc.create_compressed_model(cnn, _config(), init_data=[])
    assert get_runtime(cnn) is None and list(cnn.state_dict()) == keys
    assert torch.equal(cnn.stem[1].running_mean, stats)


def test_register_default_init_args(cnn: ResidualCNN) -> None:
    config = nnc.register_default_init_args(_config(16), _data())
    ctrl, _ = nnc.create_compressed_model(cnn, config)
    assert ctrl.compression_rate > 0.5
