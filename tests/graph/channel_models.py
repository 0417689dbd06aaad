"""Small CNN shapes for channel-group and surgery tests: one per dependency pattern.

Every model takes ``(N, 3, 16, 16)`` inputs unless its ``INPUT`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.demo.cnns import MobileNetV2, MobileNetV3Small, ResNet50
from nncompress.graph.channel_groups import ChannelGroup
from tests.graph.mlp_models import MLP_MODELS
from tests.model_zoo import ResidualCNN


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class InceptionNet(nn.Module):
    """Branches joined by ``torch.cat`` along the channels (one branch a pool of the input), then a BN."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.b1 = conv_bn(8, 4, 1)
        self.b3 = nn.Sequential(conv_bn(8, 6, 1), conv_bn(6, 5, 3))
        self.bp = conv_bn(8, 3, 1)
        self.bn = nn.BatchNorm2d(20)
        self.head = nn.Conv2d(20, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.b1(x), self.b3(x), self.bp(F.max_pool2d(x, 3, 1, 1)), x], dim=1)
        y = F.relu(self.head(F.relu(self.bn(y))))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class DenseNet(nn.Module):
    """DenseNet-style: each layer's output is concatenated onto everything before it."""

    def __init__(self, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.layers = nn.ModuleList()
        c = 6
        for _ in range(layers):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1)))
            c += growth
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 7, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(self.trans(x).mean((2, 3)))


class LinearSE(nn.Module):
    """Squeeze-excitation built from linears: mean, linear, relu, linear, sigmoid, view, mul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn(3, 12)
        self.fc1, self.fc2 = nn.Linear(12, 4), nn.Linear(4, 12)
        self.out = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        y = self.out(x * s.view(s.shape[0], -1, 1, 1))
        return y.sum((2, 3))


class FlattenLinear(nn.Module):
    """conv -> pool -> view(N, -1) -> linear: the linear sees each channel as H*W features."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = conv_bn(3, 6), conv_bn(6, 5, stride=2)
        self.fc = nn.Linear(5 * 4 * 4, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.c2(self.c1(x)), 2)
        return self.fc2(F.relu(self.fc(x.view(x.size(0), -1))))


class PoolLinear(nn.Module):
    """conv -> adaptive pool -> flatten -> dropout -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 10)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(self.c1(x), (1, 1)), 1)))


class TinyViT(nn.Module):
    """Conv patch embedding, then attention: the patch conv's channels go through transpose/matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.fc(self.enc(t).mean(1))


class ResNeXtBlock(nn.Module):
    """1x1 -> grouped 3x3 (groups=4) -> 1x1, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.c1, self.c2, self.c3 = conv_bn(8, 16, 1), conv_bn(16, 16, 3, groups=4), nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.c3(self.c2(self.c1(x))))
        return self.fc(x.mean((2, 3)))


class ConvOutput(nn.Module):
    """Returns a conv's output as well as the head's: those channels are the model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = conv_bn(3, 6), nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.c1(x)
        return self.c2(x), self.fc(x.mean((2, 3)))


class TwoReaders(nn.Module):
    """One conv output read by two convs and a pooled linear; one conv module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 8)
        self.a, self.b = nn.Conv2d(8, 5, 3, padding=1), nn.Conv2d(8, 5, 1)
        self.shared = nn.Conv2d(5, 6, 1)
        self.fc = nn.Linear(8 + 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        y = F.relu(self.shared(F.relu(self.a(x)))) + F.relu(self.shared(F.relu(self.b(x))))
        return self.fc(torch.cat([x.mean((2, 3)), y.amax((2, 3))], 1))


class DepthwiseMultiplier(nn.Module):
    """A depthwise conv with channel multiplier 2 (groups = in_channels, out = 2 x in)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 6)
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(12)
        self.pw = nn.Conv2d(12, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.dw(self.c1(x))))
        return self.fc(F.relu(self.pw(y)).mean((2, 3)))


class TinyUNet(nn.Module):
    """Down conv, transposed conv back up, skip connection by ``torch.cat``, interpolate, conv."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = conv_bn(3, 6)
        self.down = conv_bn(6, 8, stride=2)
        self.up = nn.ConvTranspose2d(8, 5, 2, stride=2)
        self.dec = nn.Conv2d(11, 4, 3, padding=1)
        self.side = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        d = self.down(e)
        side = F.interpolate(F.relu(self.side(d)), scale_factor=2.0, mode="bilinear")
        y = F.relu(self.dec(torch.cat([F.relu(self.up(d)), e], 1)))
        return (y[:, :3] + side).mean((2, 3))


class Conv1dNet(nn.Module):
    """1-D convs on ``(N, C, L)`` sequences with BatchNorm1d, a residual add, mean over L, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(3, 6, 3, padding=1), nn.BatchNorm1d(6)
        self.c2, self.bn2 = nn.Conv1d(6, 6, 5, padding=2, bias=False), nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.bn1(self.c1(x)))
        y = F.silu(y + self.bn2(self.c2(y)))
        return self.fc(y.mean(-1))


class BasicBlock(nn.Module):
    """ResNet-18's block: two 3x3 convs with BatchNorm, projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out, inplace=True)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (7x7 stem, max pool, 2-2-2-2 basic blocks), widths from ``base``."""

    def __init__(self, base: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base)
        layers, cin = [], base
        for i in range(4):
            cout = base * 2**i
            layers.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


def resnet() -> nn.Module:
    return ResNet50(base=4, blocks=(1, 1, 1, 1))


def mobilenet_v2() -> nn.Module:
    return MobileNetV2(width=0.25)


def mobilenet_v3() -> nn.Module:
    return MobileNetV3Small()


def residual_cnn() -> nn.Module:
    return ResidualCNN()


# name -> (factory, input shape); every one has prunable groups and obeys the defining property
PROPERTY_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet": (resnet, (2, 3, 16, 16)),
    "resnet18": (ResNet18, (2, 3, 32, 32)),
    "mobilenet_v2": (mobilenet_v2, (2, 3, 16, 16)),
    "mobilenet_v3_se": (mobilenet_v3, (2, 3, 16, 16)),
    "residual_cnn": (residual_cnn, (2, 1, 8, 8)),
    "inception": (InceptionNet, (2, 3, 16, 16)),
    "densenet": (DenseNet, (2, 3, 16, 16)),
    "linear_se": (LinearSE, (2, 3, 16, 16)),
    "flatten_linear": (FlattenLinear, (2, 3, 16, 16)),
    "pool_linear": (PoolLinear, (2, 3, 16, 16)),
    "resnext": (ResNeXtBlock, (2, 3, 16, 16)),
    "conv_output": (ConvOutput, (2, 3, 16, 16)),
    "two_readers": (TwoReaders, (2, 3, 16, 16)),
    "depthwise_multiplier": (DepthwiseMultiplier, (2, 3, 16, 16)),
    "unet": (TinyUNet, (2, 3, 16, 16)),
    "conv1d": (Conv1dNet, (2, 3, 11)),
    **MLP_MODELS,
}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def random_keep(groups: list[ChannelGroup], gen: torch.Generator) -> dict[int, torch.Tensor]:
    """A random keep mask per prunable group (random density, at least one channel kept)."""
    keep = {}
    for g in groups:
        if g.prunable:
            mask = torch.rand(g.channels, generator=gen) < torch.rand(1, generator=gen).item()
            mask[torch.randint(g.channels, (1,), generator=gen)] = True
            keep[g.index] = mask
    return keep


class RandomNet(nn.Module):
    """A random DAG of convs (ordinary, depthwise, with BatchNorm and an activation), residual add
    and mul, concat, squeeze-excitation and scalar ops on ``(N, 3, 8, 8)`` inputs, then a random MLP
    head (linears, BatchNorm1d, activations, dropout) on the flattened or pooled result, from a seed.

    Every tensor keeps the 8x8 spatial size, so any two with equal channels can be added.
    """

    ACTS = ("relu", "sigmoid", "hardswish", "none")

    def __init__(self, seed: int, steps: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def pick(n: int) -> int:
            return int(torch.randint(n, (1,), generator=g))

        self.program: list[tuple[str, tuple[int, ...], str]] = []
        self.mods = nn.ModuleList()
        channels = [3]
        for _ in range(steps):
            kind = ("conv", "conv", "dw", "add", "mul", "cat", "se", "scalar")[pick(8)]
            src = pick(len(channels))
            same = [i for i, c in enumerate(channels) if c == channels[src] and i != src]
            if kind in ("add", "mul") and not same:
                kind = "conv"
            if kind == "conv":
                cout = 2 + pick(5)
                self.mods.append(nn.Sequential(nn.Conv2d(channels[src], cout, 1 + 2 * pick(2), padding="same"),
                                               nn.BatchNorm2d(cout)))
                self.program.append(("mod", (src, len(self.mods) - 1), self.ACTS[pick(4)]))
                channels.append(cout)
            elif kind == "dw" and channels[src] > 1:
                mult = 1 + pick(2)
                c = channels[src]
                self.mods.append(nn.Sequential(nn.Conv2d(c, c * mult, 3, padding=1, groups=c), nn.BatchNorm2d(c * mult)))
                self.program.append(("mod", (src, len(self.mods) - 1), self.ACTS[pick(4)]))
                channels.append(c * mult)
            elif kind in ("add", "mul"):
                self.program.append((kind, (src, same[pick(len(same))]), ""))
                channels.append(channels[src])
            elif kind == "cat":
                other = pick(len(channels))
                self.program.append(("cat", (src, other), ""))
                channels.append(channels[src] + channels[other])
            elif kind == "se" and channels[src] > 1:
                c = channels[src]
                self.mods.append(nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1), nn.Hardsigmoid()))
                self.program.append(("se", (src, len(self.mods) - 1), ""))
                channels.append(c)
            else:
                self.program.append(("scalar", (src,), ("plus", "times")[pick(2)]))
                channels.append(channels[src])
        self.flatten = bool(pick(2))  # the head reads C x 8 x 8 features, or the C channel means
        c, head = channels[-1] * (64 if self.flatten else 1), []
        for _ in range(pick(3)):  # an MLP head: linear groups, with or without BatchNorm1d
            cout = 2 + pick(5)
            act = (nn.ReLU, nn.Sigmoid, nn.Hardswish, nn.Identity)[pick(4)]()
            head += [nn.Linear(c, cout), *([nn.BatchNorm1d(cout)] if pick(2) else []), act, nn.Dropout(0.1)]
            c = cout
        self.head = nn.Sequential(*head)
        self.fc = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ts = [x]
        for kind, args, extra in self.program:
            a = ts[args[0]]
            if kind == "mod":
                y = self.mods[args[1]](a)
                y = {"relu": F.relu, "sigmoid": torch.sigmoid, "hardswish": F.hardswish}.get(extra, lambda t: t)(y)
            elif kind == "add":
                y = a + ts[args[1]]
            elif kind == "mul":
                y = a * ts[args[1]]
            elif kind == "cat":
                y = torch.cat([a, ts[args[1]]], 1)
            elif kind == "se":
                y = a * self.mods[args[1]](F.adaptive_avg_pool2d(a, 1))
            else:
                y = a + 1 if extra == "plus" else a * 2
            ts.append(y)
        return self.fc(self.head(ts[-1].flatten(1) if self.flatten else ts[-1].mean((2, 3))))
