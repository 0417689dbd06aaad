"""NNCF 2.x operator names in ignored_scopes / target_scopes match the same ops as ours."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.errors import ScopeMatchError
from nncompress.graph.capture import CapturedGraph, capture
from nncompress.graph.scopes import NNCF_MAGIC_OP_NAMES, normalize_scope_pattern, scope_matches
from nncompress.ptq.params import IgnoredScope


class Inception3(nn.Module):
    """torchvision's Inception3 input transform (``transform_input=True``) and a stem conv."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return self.fc(self.Conv2d_1a_3x3(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one in-place ReLU module called twice and ``out += identity``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(4), BasicBlock(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.layer1(self.conv1(x)).mean(dim=(2, 3)), 1))


class NNCFBackbone(nn.Module):
    """A user class whose name starts with NNCF: its name must stay as written."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.emb(ids))


def _names(model: nn.Module, *args: torch.Tensor) -> list[str]:
    graph: CapturedGraph = capture(model.eval(), args)
    return list(graph.nodes)


@pytest.fixture(scope="module")
def inception_names() -> list[str]:
    return _names(Inception3(), torch.randn(1, 3, 8, 8))


@pytest.fixture(scope="module")
def resnet_names() -> list[str]:
    return _names(ResNet(), torch.randn(1, 3, 8, 8))


def _matches(names: list[str], pattern: str) -> list[str]:
    return [n for n in names if scope_matches(n, pattern)]


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("Inception3/__add___0", ["Inception3/add_0"]),
        ("Inception3/__add___2", ["Inception3/add_2"]),
        ("Inception3/__mul___1", ["Inception3/mul_1"]),
        ("Inception3/__getitem___2", ["Inception3/getitem_2"]),
        ("Inception3/cat_0", ["Inception3/cat_0"]),
        ("Inception3/NNCFConv2d[Conv2d_1a_3x3]/conv2d_0", ["Inception3/Conv2d[Conv2d_1a_3x3]/conv2d_0"]),
        ("Inception3/NNCFLinear[fc]", ["Inception3/Linear[fc]/linear_0"]),
        ("{re}.*__mul__.*", ["Inception3/mul_0", "Inception3/mul_1", "Inception3/mul_2"]),
        ("{re}Inception3/__add___[12]$", ["Inception3/add_1", "Inception3/add_2"]),
        ("{re}.*NNCFConv2d\\[Conv2d_1a_3x3\\].*", ["Inception3/Conv2d[Conv2d_1a_3x3]/conv2d_0"]),
        # our own names keep working
        ("Inception3/add_1", ["Inception3/add_1"]),
        ("{re}.*/mul_0$", ["Inception3/mul_0"]),
    ],
)
def test_inception_scopes_in_nncf_names(inception_names: list[str], pattern: str, expected: list[str]) -> None:
    assert _matches(inception_names, pattern) == expected


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("ResNet/Sequential[layer1]/BasicBlock[0]/__iadd___0", ["ResNet/Sequential[layer1]/BasicBlock[0]/add__0"]),
        ("ResNet/Sequential[layer1]/BasicBlock[1]/ReLU[relu]/relu__1",
         ["ResNet/Sequential[layer1]/BasicBlock[1]/ReLU[relu]/relu_1"]),
        ("ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv2]/conv2d_0",
         ["ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv2]/conv2d_0"]),
        ("ResNet/Sequential[layer1]/BasicBlock[1]/NNCFBatchNorm2d[bn1]/batch_norm_0",
         ["ResNet/Sequential[layer1]/BasicBlock[1]/BatchNorm2d[bn1]/batch_norm_0"]),
        ("{re}.*__iadd__.*", ["ResNet/Sequential[layer1]/BasicBlock[0]/add__0",
                              "ResNet/Sequential[layer1]/BasicBlock[1]/add__0"]),
        ("{re}.*BasicBlock\\[0\\]/ReLU\\[relu\\]/relu__\\d", ["ResNet/Sequential[layer1]/BasicBlock[0]/ReLU[relu]/relu_0",
                                                          "ResNet/Sequential[layer1]/BasicBlock[0]/ReLU[relu]/relu_1"]),
        ("ResNet/NNCFLinear[fc]/linear_0", ["ResNet/Linear[fc]/linear_0"]),
        ("ResNet/Sequential[layer1]/BasicBlock[0]/add__0", ["ResNet/Sequential[layer1]/BasicBlock[0]/add__0"]),
    ],
)
def test_resnet_scopes_in_nncf_names(resnet_names: list[str], pattern: str, expected: list[str]) -> None:
    assert _matches(resnet_names, pattern) == expected


def test_user_class_named_nncf_is_kept() -> None:
    names = _names(NNCFBackbone(), torch.tensor([[1, 2, 3]]))
    assert _matches(names, "NNCFBackbone/NNCFEmbedding[emb]/embedding_0") == ["NNCFBackbone/Embedding[emb]/embedding_0"]
    assert _matches(names, "NNCFBackbone/NNCFLinear[proj]") == ["NNCFBackbone/Linear[proj]/linear_0"]
    assert normalize_scope_pattern("NNCFBackbone/NNCFLinearHead[x]") == "NNCFBackbone/NNCFLinearHead[x]"
    assert normalize_scope_pattern("Net/NNCFUserMyBlock[b]/add_0") == "Net/MyBlock[b]/add_0"


_OPERATORS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]] = {
    "__abs__": lambda x, y, b: abs(x), "__add__": lambda x, y, b: x + y, "__and__": lambda x, y, b: b & b,
    "__eq__": lambda x, y, b: x == y, "__floordiv__": lambda x, y, b: x // y, "__ge__": lambda x, y, b: x >= y,
    "__getitem__": lambda x, y, b: x[0], "__gt__": lambda x, y, b: x > y, "__iadd__": lambda x, y, b: x.__iadd__(y),
    "__ifloordiv__": lambda x, y, b: x.__ifloordiv__(y), "__imul__": lambda x, y, b: x.__imul__(2),
    "__invert__": lambda x, y, b: ~b, "__ipow__": lambda x, y, b: x.__ipow__(1),
    "__isub__": lambda x, y, b: x.__isub__(y), "__itruediv__": lambda x, y, b: x.__itruediv__(2),
    "__le__": lambda x, y, b: x <= y, "__lt__": lambda x, y, b: x < y, "__matmul__": lambda x, y, b: x @ y,
    "__mod__": lambda x, y, b: x % y, "__mul__": lambda x, y, b: x * y, "__ne__": lambda x, y, b: x != y,
    "__neg__": lambda x, y, b: -x, "__or__": lambda x, y, b: b | b, "__pow__": lambda x, y, b: x**2,
    "__radd__": lambda x, y, b: 1 + x, "__rand__": lambda x, y, b: b.__rand__(b),
    "__rfloordiv__": lambda x, y, b: 1 // x, "__rmul__": lambda x, y, b: 2 * x,
    "__ror__": lambda x, y, b: b.__ror__(b), "__rpow__": lambda x, y, b: 2**x, "__rsub__": lambda x, y, b: 1 - x,
    "__rtruediv__": lambda x, y, b: 1 / x, "__rxor__": lambda x, y, b: b.__rxor__(b),
    "__sub__": lambda x, y, b: x - y, "__truediv__": lambda x, y, b: x / y, "__xor__": lambda x, y, b: b ^ b,
}  # fmt: skip


class _OneOp(nn.Module):
    def __init__(self, op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> object:
        x = x.clone()  # the in-place operators then do not touch the input; clone_0 is ours
        return self.op(x, x.flip(0), x > 0)


@pytest.mark.parametrize("magic", sorted(_OPERATORS))
def test_every_nncf_magic_name_matches_the_captured_op(magic: str) -> None:
    """Each operator NNCF 2.x named ``__magic__`` is found under its NNCF name, as call 0."""
    names = _names(_OneOp(_OPERATORS[magic]), torch.rand(3, 3) + 1)
    hits = [n for n in _matches(names, f"_OneOp/{magic}_0") if n not in ("_OneOp/clone_0", "_OneOp/flip_0", "_OneOp/gt_0")]
    if magic == "__gt__":  # x > y is the same op as the mask x > 0 the harness builds first
        assert _matches(names, "_OneOp/__gt___1") == ["_OneOp/gt_1"]
        return
    assert len(hits) == 1, (magic, names)
    assert hits[0].split("/")[-1] == NNCF_MAGIC_OP_NAMES.get(magic, magic[2:-2]) + "_0"


def test_ignored_scopes_in_nncf_names_end_to_end() -> None:
    """NNCF 2.x config lines (as in its ResNet and Inception-v3 INT8 configs) select the same ops."""
    config = {
        "input_info": {"sample_size": [1, 3, 8, 8]},
        "compression": {
            "algorithm": "quantization",
            "initializer": {"range": {"num_init_samples": 2}},
            "ignored_scopes": ["ResNet/NNCFConv2d[conv1]/conv2d_0",
                               "ResNet/Sequential[layer1]/BasicBlock[0]/__iadd___0",
                               "ResNet/Sequential[layer1]/BasicBlock[1]/ReLU[relu]/relu__1"],
        },
    }
    data = [(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))]
    ctrl, _ = nnc.create_compressed_model(ResNet(), config, init_data=data)
    ignored = {r.op: r.reason for r in ctrl.capture_report.rows if not r.compressed}
    # the in-place residual add is quantized as NNCF 2.x does (its inputs), so its entry applies too
    assert ignored == {
        "ResNet/Conv2d[conv1]/conv2d_0": "matches ignored_scopes entry 'ResNet/NNCFConv2d[conv1]/conv2d_0'",
        "ResNet/Sequential[layer1]/BasicBlock[0]/add__0":
            "matches ignored_scopes entry 'ResNet/Sequential[layer1]/BasicBlock[0]/__iadd___0'",
    }


def test_target_scopes_in_nncf_names_end_to_end() -> None:
    config = {
        "input_info": {"sample_size": [1, 3, 8, 8]},
        "compression": {"algorithm": "magnitude_sparsity",
                        "target_scopes": ["{re}.*BasicBlock\\[1\\]/NNCFConv2d\\[conv[12]\\].*", "ResNet/NNCFLinear[fc]"]},
    }
    ctrl, _ = nnc.create_compressed_model(ResNet(), config)
    chosen = sorted(r.weight for r in ctrl.capture_report.rows if r.compressed)
    assert chosen == ["fc.weight", "layer1.1.conv1.weight", "layer1.1.conv2.weight"]


@pytest.mark.parametrize("pattern", ["Inception3/__add___3", "Inception3/__sub___0", "{re}.*__truediv__.*",
                                     "Inception3/NNCFConv2d[fc]"])
def test_nncf_names_that_match_nothing_still_raise(pattern: str) -> None:
    config = {"input_info": {"sample_size": [1, 3, 8, 8]},
              "compression": {"algorithm": "magnitude_sparsity", "ignored_scopes": [pattern]}}
    with pytest.raises(ScopeMatchError, match="matches no operation"):
        nnc.create_compressed_model(Inception3(), config)


def test_ptq_ignored_scope_takes_nncf_names(inception_names: list[str]) -> None:
    graph = capture(Inception3().eval(), (torch.randn(1, 3, 8, 8),))
    scope = IgnoredScope(names=["Inception3/__add___0"], patterns=[".*__mul___[01]"])
    scope.check(graph)
    ignored = [n.name for n in graph if scope.reason(n)]
    assert ignored == ["Inception3/mul_0", "Inception3/add_0", "Inception3/mul_1"]
    with pytest.raises(ScopeMatchError):
        IgnoredScope(names=["Inception3/__add___9"]).check(graph)
