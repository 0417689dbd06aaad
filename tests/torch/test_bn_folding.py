"""BatchNorm folding: the folded model computes the same function in inference mode."""

from __future__ import annotations

import copy

import torch
from torch import nn

from nncompress.graph.capture import capture
from nncompress.torch.bn_folding import fold_batchnorms
from tests.model_zoo import ResidualCNN


def test_folded_cnn_matches_and_has_no_batchnorm(cnn: ResidualCNN) -> None:
    cnn.train()
    for _ in range(3):  # non-trivial running statistics
        cnn(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    with torch.no_grad():
        for m in cnn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-2, 2)  # negative factors too
                m.bias.uniform_(-1, 1)
    cnn.eval()
    x = torch.randn(4, 1, 8, 8)
    expected = cnn(x)
    folded_model = copy.deepcopy(cnn)
    pairs = fold_batchnorms(folded_model, capture(folded_model, (x,)))
    assert len(pairs) == 5  # stem + 2 x (dw, pw)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded_model.modules())
    torch.testing.assert_close(folded_model(x), expected, rtol=1e-4, atol=1e-5)


def test_conv_feeding_two_consumers_is_not_folded() -> None:
    class TwoUses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = TwoUses().eval()
    assert fold_batchnorms(model, capture(model, (torch.randn(1, 1, 5, 5),))) == []
