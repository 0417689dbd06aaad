"""Small models with the features capture must handle (the CNN, control flow, functional ops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.dw(x)))
        return F.relu(x + self.bn2(self.pw(y)))


class ResidualCNN(nn.Module):
    """Conv stem, two residual blocks with depthwise convs, linear head. Input (N, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(ResidualBlock(16), ResidualBlock(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


class ControlFlowNet(nn.Module):
    """Takes a different branch depending on the data: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = self.b(torch.relu(h))
        else:
            h = -h
        for _ in range(int(x.shape[0] > 1) + 1):
            h = h * 0.5
        return self.head(h)


class FunctionalNet(nn.Module):
    """Uses its parameters through torch.matmul and F.linear directly (like attention code)."""

    def __init__(self) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(8, 16) * 0.3)
        self.w_out = nn.Parameter(torch.randn(4, 16) * 0.3)
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.matmul(x, self.w_in)
        attn = torch.softmax(torch.matmul(h, h.transpose(-1, -2)), dim=-1)
        h = torch.matmul(attn, h)
        return F.linear(h, self.w_out, self.bias)
