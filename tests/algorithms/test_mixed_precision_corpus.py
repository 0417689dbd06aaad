"""Every NNCF 2.x corpus config with ``initializer.precision`` builds (AutoQ: a clear error).

The manual configs name NNCF's quantizers of torchvision's ResNet-18/50, MobileNetV2 and
SqueezeNet 1.1, so the models here have torchvision's module names and forward code at tiny
widths; HAWQ configs run with a few samples and draws.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.errors import UnsupportedAlgorithmError
from nncompress.graph.scopes import scope_name_matches
from tests.conftest import SHARED, require_shared

CORPUS = SHARED / "compat" / "nncf2-configs"
require_shared(CORPUS, "the NNCF 2.x config corpus")
BAD_DIR = CORPUS / "schema_validation" / "schema_validation_bad_configs"
PRECISION_CONFIGS = sorted(p for p in CORPUS.rglob("*.json") if '"precision"' in p.read_text() and BAD_DIR not in p.parents)


# -- torchvision-named models at tiny widths ---------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                           if stride != 1 or cin != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or cin != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet; ``layers`` (2, 2, 2, 2) with BasicBlock is ResNet-18."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...], width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, n in enumerate(layers):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width * 2**i, 2 if i > 0 and j == 0 else 1))
                cin = width * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ConvBNActivation(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNActivation(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNActivation(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision 0.9's MobileNetV2 (``ConvBNActivation``) at 1/8 width."""

    def __init__(self) -> None:
        super().__init__()
        setting = [(1, 2, 1, 1), (6, 3, 2, 2), (6, 4, 3, 2), (6, 8, 4, 2), (6, 12, 3, 1), (6, 20, 3, 2), (6, 40, 1, 1)]
        features: list[nn.Module] = [ConvBNActivation(3, 4, stride=2)]
        cin = 4
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNActivation(cin, 160, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(160, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1 at 1/16 width."""

    def __init__(self) -> None:
        super().__init__()
        pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, 2), nn.ReLU(inplace=True), pool, Fire(4, 1, 4, 4), Fire(8, 1, 4, 4), pool,
            Fire(8, 2, 8, 8), Fire(16, 2, 8, 8), pool, Fire(16, 3, 12, 12), Fire(24, 3, 12, 12),
            Fire(24, 4, 16, 16), Fire(32, 4, 16, 16),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# -- the configs --------------------------------------------------------------------------------


def _model_for(name: str) -> nn.Module:
    if "resnet50" in name:
        return ResNet(Bottleneck, (3, 4, 6, 3), width=2)
    if "resnet18" in name:
        return ResNet(BasicBlock, (2, 2, 2, 2))
    if "squeezenet" in name:
        return SqueezeNet()
    if "mobilenet_v2" in name:
        return MobileNetV2()
    return ResNet(BasicBlock, (1, 1, 1, 1))  # the HAWQ tests' other models: any CNN will do


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]


def _small(config: dict[str, Any]) -> dict[str, Any]:
    """The config on 32x32 inputs, with few samples and Hutchinson draws."""
    config = copy.deepcopy(config)
    config["input_info"] = {"sample_size": [1, 3, 32, 32]}
    sections = config["compression"] if isinstance(config["compression"], list) else [config["compression"]]
    for section in sections:
        init = section.setdefault("initializer", {})
        init.setdefault("range", {})
        if isinstance(init["range"], dict):
            init["range"]["num_init_samples"] = min(init["range"].get("num_init_samples", 8), 8)
        init["batchnorm_adaptation"] = {"num_bn_adaptation_samples": 0}
        precision = init.get("precision", {})
        if precision.get("type") == "hawq":
            precision["num_data_points"] = 4
            precision["iter_number"] = min(precision.get("iter_number", 3), 3)
    return config


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def test_the_corpus_has_precision_configs() -> None:
    assert len(PRECISION_CONFIGS) == 18  # and one bad config, rejected by the schema


@pytest.mark.parametrize("path", PRECISION_CONFIGS, ids=_id)
def test_precision_config_builds(path: Path) -> None:
    raw = json.loads(path.read_text())
    config = _small(raw)
    section = config["compression"] if isinstance(config["compression"], dict) else config["compression"][0]
    precision = section["initializer"]["precision"]
    model = _model_for(path.name)
    if precision.get("type") == "autoq":
        with pytest.raises(UnsupportedAlgorithmError, match=r"compression.initializer.precision.type: 'autoq' .*not planned"):
            nnc.create_compressed_model(model, config, init_data=_data())
        return
    ctrl, model = nnc.create_compressed_model(model, config, init_data=_data())
    stats = ctrl.statistics().quantization
    chosen = {qid: b for qid, _, b in stats.per_quantizer}
    assert chosen and set(chosen.values()) <= {2, 4, 8}
    if precision.get("type", "manual") == "manual":
        # every entry naming one of our quantizers directly lands there with its bits
        direct = 0
        for bits, scope in precision["bitwidth_per_scope"]:
            op, _, kind = scope.rpartition("|")
            hits = [q for q in chosen if q.endswith("|" + kind) and scope_name_matches(q.rpartition("|")[0], op)]
            assert len(hits) <= 1, scope
            if hits:
                assert chosen[hits[0]] == bits, scope
                direct += 1
            else:  # NNCF put it where nncompress has none: an op above ours (flatten, max pool, cat)
                assert kind == "OUTPUT", scope
        assert direct >= 0.6 * len(precision["bitwidth_per_scope"])  # SqueezeNet: 35 of 53 (the rest: cat branches)
    else:
        assert len(set(chosen.values())) >= 1 and stats.compression_ratio is not None
        assert stats.compression_ratio >= precision.get("compression_ratio", 1.5) - 1e-9
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
