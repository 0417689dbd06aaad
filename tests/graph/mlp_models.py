"""Small models whose linears on ``[N, F]`` activations form channel groups (MLP heads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPHead(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear -> GELU -> Linear on ``(N, 8)`` inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 12), nn.GELU(),
                                 nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPBatchNorm(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d, plus a linear shortcut of the input
    added to it (one group of two producers), -> ReLU -> Linear on ``(N, 8)`` inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(8, 16), nn.BatchNorm1d(16)
        self.fc2, self.bn2 = nn.Linear(16, 10, bias=False), nn.BatchNorm1d(10)
        self.short = nn.Linear(8, 10)
        self.out = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x)))))
        return self.out(F.relu(h + self.short(x)))


class ConvMLP(nn.Module):
    """conv -> BN -> ReLU -> max pool -> flatten -> Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear,
    on ``(N, 3, 8, 8)`` inputs: the conv group spreads over 16 features per channel of ``fc1``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc1, self.bn = nn.Linear(6 * 4 * 4, 20), nn.BatchNorm1d(20)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.max_pool2d(self.conv(x), 2), 1)
        return self.fc2(self.drop(F.relu(self.bn(self.fc1(x)))))


class BertBlock(nn.Module):
    """A BERT-like encoder block on ``(N, T, 16)``: self-attention written with matmul, LayerNorm,
    a GELU feed-forward, a pooled ``[N, T, F] -> [N, F]`` mean and a linear classifier."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.cls = nn.Linear(d, 3)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, s, d = t.shape
        return t.view(n, s, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(x.shape)
        x = self.ln1(x + self.o(a))
        x = self.ln2(x + self.ff2(F.gelu(self.ff1(x))))
        return self.cls(x.mean(1))


MLP_MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "mlp_head": (MLPHead, (4, 8)),
    "mlp_batchnorm": (MLPBatchNorm, (4, 8)),
    "conv_mlp": (ConvMLP, (2, 3, 8, 8)),
}
