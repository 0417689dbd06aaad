"""The hook runtime: inserted modules run at their points; the model stays the user's module."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from nncompress.api.compression import StripFormat
from nncompress.errors import InvalidArgumentError
from nncompress.graph.capture import capture
from nncompress.graph.layout import InsertionCommand, Priority, TargetPoint, TargetType, TransformationLayout
from nncompress.torch.insertion import apply_layout, strip_runtime
from nncompress.torch.runtime import RUNTIME_ATTR, get_runtime
from tests.model_zoo import FunctionalNet, ResidualCNN


class Affine(nn.Module):
    def __init__(self, scale: float, shift: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale))
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class BakeableScale(Affine):
    def bake_(self, weight: torch.Tensor, strip_format: StripFormat) -> bool:
        weight.data.mul_(self.scale)
        return True


def _cmd(point: TargetPoint, module: nn.Module, group: str = "test", prio: int = Priority.QUANTIZATION) -> InsertionCommand:
    return InsertionCommand(point, module, group, prio)


def test_pre_and_post_op_points(functional_net: FunctionalNet) -> None:
    x = torch.randn(2, 3, 8)
    ref = functional_net(x)
    layout = TransformationLayout()
    # doubling the input of the first matmul doubles h; softmax then differs, so compare by recomputing
    layout.register(_cmd(TargetPoint(TargetType.OPERATION_INPUT, "FunctionalNet/matmul_0", port=0), Affine(2.0)))
    layout.register(_cmd(TargetPoint(TargetType.OPERATION_OUTPUT, "FunctionalNet/linear_0"), Affine(1.0, 1.0)))
    apply_layout(functional_net, layout)
    m = functional_net
    h = torch.matmul(2 * x, m.w_in)
    attn = torch.softmax(torch.matmul(h, h.transpose(-1, -2)), dim=-1)
    expected = torch.nn.functional.linear(torch.matmul(attn, h), m.w_out, m.bias) + 1
    assert torch.allclose(m(x), expected, atol=1e-6)
    assert not torch.allclose(m(x), ref)


def test_weight_point_on_functional_matmul_and_priority_order(functional_net: FunctionalNet) -> None:
    x = torch.randn(2, 3, 8)
    w = functional_net.w_in.detach().clone()
    layout = TransformationLayout()
    point = TargetPoint(TargetType.WEIGHT, "", param="w_in")
    layout.register(_cmd(point, Affine(1.0, 1.0), group="late", prio=Priority.QUANTIZATION))
    layout.register(_cmd(point, Affine(3.0), group="early", prio=Priority.SPARSIFICATION))
    apply_layout(functional_net, layout)
    seen = []
    functional_net.register_forward_hook(lambda m, a, o: seen.append(o))
    functional_net(x)
    ref = FunctionalNet()
    ref.load_state_dict({k: v for k, v in functional_net.state_dict().items() if not k.startswith(RUNTIME_ATTR)})
    with torch.no_grad():
        ref.w_in.copy_(w * 3 + 1)  # early (x3) runs before late (+1)
    assert torch.allclose(seen[0], ref(x), atol=1e-6)
    assert torch.equal(functional_net.w_in.detach(), w)  # the parameter itself is untouched


def test_keys_class_deepcopy_and_strip(cnn: ResidualCNN) -> None:
    keys = list(cnn.state_dict())
    layout = TransformationLayout()
    layout.register(_cmd(TargetPoint(TargetType.WEIGHT, "fc"), BakeableScale(0.0)))
    apply_layout(cnn, layout)
    assert type(cnn) is ResidualCNN
    new_keys = list(cnn.state_dict())
    assert new_keys[: len(keys)] == keys
    assert all(k.startswith(RUNTIME_ATTR + ".") for k in new_keys[len(keys) :])
    x = torch.randn(2, 1, 8, 8)
    cnn.eval()
    out = cnn(x)
    assert torch.allclose(out, cnn.fc.bias.expand_as(out))  # fc weight scaled to 0
    clone = copy.deepcopy(cnn)
    assert torch.equal(clone(x), out)
    assert get_runtime(clone) is not get_runtime(cnn)
    stripped = strip_runtime(clone, StripFormat.IN_PLACE)
    assert list(stripped.state_dict()) == keys
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in stripped.modules())
    assert torch.equal(stripped(x), out)
    assert torch.count_nonzero(stripped.fc.weight) == 0
    assert get_runtime(cnn) is not None  # the original keeps its runtime


def test_mode_is_active_only_during_forward(cnn: ResidualCNN) -> None:
    layout = TransformationLayout()
    layout.register(_cmd(TargetPoint(TargetType.WEIGHT, "fc"), Affine(0.5)))
    apply_layout(cnn, layout)
    cnn(torch.randn(1, 1, 8, 8))
    assert _get_current_function_mode_stack() == []
    other = nn.Linear(16, 10)
    other.weight = cnn.fc.weight  # shares the parameter but is not the compressed model
    x = torch.randn(3, 16)
    assert torch.allclose(other(x), torch.nn.functional.linear(x, cnn.fc.weight, other.bias))


def test_exception_in_forward_pops_the_mode(cnn: ResidualCNN) -> None:
    layout = TransformationLayout()
    layout.register(_cmd(TargetPoint(TargetType.WEIGHT, "fc"), Affine(0.5)))
    apply_layout(cnn, layout)
    with pytest.raises(RuntimeError):
        cnn(torch.randn(1, 3, 8, 8))  # wrong channel count
    assert _get_current_function_mode_stack() == []
    cnn(torch.randn(1, 1, 8, 8))  # still works


def test_sequential_root_still_runs() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    ref = model(x)
    layout = TransformationLayout()
    layout.register(_cmd(TargetPoint(TargetType.WEIGHT, "2"), Affine(1.0)))
    apply_layout(model, layout)
    assert torch.allclose(model(x), ref)


def test_op_points_match_capture_names_in_nested_modules(cnn: ResidualCNN) -> None:
    graph = capture(cnn, (torch.randn(1, 1, 8, 8),))
    add = "ResidualCNN/Sequential[blocks]/ResidualBlock[1]/add_0"
    assert add in graph.nodes
    calls = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return x

    layout = TransformationLayout()
    layout.register(_cmd(TargetPoint(TargetType.OPERATION_OUTPUT, add), Spy()))
    apply_layout(cnn, layout)
    cnn(torch.randn(2, 1, 8, 8))
    assert calls == [(2, 16, 8, 8)]


def test_bad_weight_point_leaves_model_unchanged(cnn: ResidualCNN) -> None:
    layout = TransformationLayout()
    layout.register(_cmd(TargetPoint(TargetType.WEIGHT, "nope"), Affine(1.0)))
    with pytest.raises(InvalidArgumentError, match="nope.weight"):
        apply_layout(cnn, layout)
    assert get_runtime(cnn) is None and not hasattr(cnn, RUNTIME_ATTR)


def test_duplicate_command_in_one_group_is_refused() -> None:
    layout = TransformationLayout()
    point = TargetPoint(TargetType.WEIGHT, "fc")
    layout.register(_cmd(point, Affine(1.0)))
    with pytest.raises(InvalidArgumentError):
        layout.register(_cmd(point, Affine(2.0)))


def _mask_of(model: nn.Module, weight: str) -> torch.Tensor:
    rt = get_runtime(model)
    assert rt is not None
    return rt.group("magnitude_sparsity")["weight:" + weight.replace(".", "/")].mask


def _sparsify(model: nn.Module, example: torch.Tensor) -> None:
    import nncompress as nnc

    config = {"compression": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5,
                              "params": {"sparsity_target": 0.5}}}
    nnc.create_compressed_model(model, config, example_input=example)


def test_owner_local_weights_are_swapped_and_restored(functional_net: FunctionalNet) -> None:
    x = torch.randn(2, 3, 8)
    _sparsify(functional_net, x)
    rt = get_runtime(functional_net)
    assert rt is not None and rt.owner_local == {"w_in", "w_out"}
    m = functional_net
    w_in = m.w_in * _mask_of(m, "w_in")
    h = torch.matmul(x, w_in)
    attn = torch.softmax(torch.matmul(h, h.transpose(-1, -2)), dim=-1)
    expected = torch.nn.functional.linear(torch.matmul(attn, h), m.w_out * _mask_of(m, "w_out"), m.bias)
    assert torch.allclose(m(x), expected, atol=1e-6)
    assert isinstance(m._parameters["w_in"], nn.Parameter) and isinstance(m.w_out, nn.Parameter)
    assert m.w_in.grad is None
    m(x).sum().backward()
    assert m.w_in.grad is not None and torch.all(m.w_in.grad[_mask_of(m, "w_in") == 0] == 0)


def test_tied_weight_read_by_two_modules_is_masked_everywhere() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(ids))

    torch.manual_seed(0)
    model = Tied()
    ids = torch.arange(10).view(2, 5)
    _sparsify(model, ids)
    rt = get_runtime(model)
    assert rt is not None and rt.owner_local == set()  # read in two modules: intercepted per op
    w = model.emb.weight * _mask_of(model, "emb.weight")
    assert torch.allclose(model(ids), torch.nn.functional.embedding(ids, w) @ w.t(), atol=1e-6)


def test_parameters_are_restored_when_the_forward_raises(cnn: ResidualCNN) -> None:
    _sparsify(cnn, torch.randn(1, 1, 8, 8))
    with pytest.raises(RuntimeError):
        cnn(torch.randn(1, 3, 8, 8))
    assert all(isinstance(m._parameters.get("weight"), (nn.Parameter, type(None))) for m in cnn.modules())
    assert all(isinstance(p, nn.Parameter) for p in cnn.parameters())
