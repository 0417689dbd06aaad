"""FLOPs and parameter counts, dense and with channels kept per group."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nncompress.graph.capture import capture
from nncompress.graph.channel_groups import channel_groups
from nncompress.graph.flops import layer_costs, total_flops, total_params
from nncompress.torch.channel_surgery import remove_channels
from tests.graph.channel_models import PROPERTY_MODELS, random_keep
from tests.graph.mlp_models import ConvMLP


class _Small(nn.Module):
    """conv 3->8 (8x8), BN, conv 8->16 stride 2 (4x4), depthwise 16, BN, flatten, linear 256->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.dw(torch.relu(self.conv2(x)))))
        return self.fc(x.view(x.shape[0], -1))


def _reference(c1: float, c2: float, batch: float) -> tuple[float, float]:
    """FLOPs (2 x MACs) and weight+bias counts of _Small with c1 / c2 channels, in float64."""
    flops = 2.0 * batch * (
        c1 * 8 * 8 * 3 * 3 * 3  # conv1: every output element reads 3 x 3x3 inputs
        + c2 * 4 * 4 * c1 * 3 * 3  # conv2
        + c2 * 4 * 4 * 1 * 3 * 3  # depthwise: one input channel per output
        + 10 * c2 * 4 * 4  # linear on c2 x 4 x 4 features
    )
    params = (c1 * 27 + c1) + (c2 * c1 * 9) + (c2 * 9 + c2) + (10 * c2 * 16 + 10)
    return flops, params


@pytest.mark.parametrize(("k1", "k2"), [(8, 16), (5, 10), (1, 1), (8, 3)])
def test_small_net_against_hand_reference(k1: int, k2: int) -> None:
    model = _Small().eval()
    graph = capture(model, (torch.randn(2, 3, 8, 8),))
    groups = channel_groups(graph, model)
    assert [(g.channels, g.prunable) for g in groups] == [(8, True), (16, True)]
    costs = layer_costs(graph, groups)
    assert [(c.module, c.in_group, c.out_group) for c in costs] == [
        ("conv1", None, 0), ("conv2", 0, 1), ("dw", 1, 1), ("fc", 1, None)]  # fc: 16 features per channel
    flops, params = _reference(k1, k2, 2)
    kept = {0: k1, 1: k2}
    assert total_flops(costs, kept) == flops
    assert total_params(costs, kept) == params
    if (k1, k2) == (8, 16):
        assert total_flops(costs) == flops and total_params(costs) == params


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "inception", "densenet", "flatten_linear",
                                  "two_readers", "depthwise_multiplier", "unet", "linear_se", "mlp_head",
                                  "mlp_batchnorm", "conv_mlp"])
def test_kept_counts_match_the_physically_pruned_model(name: str) -> None:
    """total_flops / total_params with kept counts equal the dense counts of the pruned model."""
    factory, shape = PROPERTY_MODELS[name]
    model = factory().eval()
    x = torch.randn(*shape)
    graph = capture(model, (x,))
    groups = channel_groups(graph, model)
    costs = layer_costs(graph, groups)
    keep = random_keep(groups, torch.Generator().manual_seed(7))
    pruned = copy.deepcopy(model)
    remove_channels(pruned, groups, keep)
    after = layer_costs(capture(pruned, (x,)), [])
    kept = {i: int(m.sum()) for i, m in keep.items()}
    assert total_flops(costs, kept) == total_flops(after)
    assert total_params(costs, kept) == total_params(after) == sum(
        p.numel() for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
        for p in m.parameters(recurse=False))
    assert total_flops(costs, kept) < total_flops(costs)


@pytest.mark.parametrize(("k1", "k2"), [(6, 20), (2, 7), (1, 1)])
def test_conv_mlp_against_hand_reference(k1: int, k2: int) -> None:
    """ConvMLP: conv 3->c1 (8x8), flatten of c1 x 4 x 4 into fc1 (->c2), fc2 (c2->3), in float64."""
    model = ConvMLP().eval()
    graph = capture(model, (torch.randn(2, 3, 8, 8),))
    groups = channel_groups(graph, model)
    costs = layer_costs(graph, groups)
    assert [(c.module, c.in_group, c.out_group) for c in costs] == [("conv.0", None, 0), ("fc1", 0, 1), ("fc2", 1, None)]
    flops = 2.0 * 2 * (k1 * 8 * 8 * 3 * 9 + k2 * k1 * 16 + 3 * k2)
    params = (k1 * 27 + k1) + (k2 * k1 * 16 + k2) + (3 * k2 + 3)
    assert total_flops(costs, {0: k1, 1: k2}) == flops
    assert total_params(costs, {0: k1, 1: k2}) == params
