"""Physical channel removal: the defining property, attributes, runtime modules, ONNX, bad masks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nncompress.errors import InvalidArgumentError
from nncompress.graph.capture import capture
from nncompress.graph.channel_groups import ChannelGroup, channel_groups
from nncompress.graph.layout import InsertionCommand, TargetPoint, TargetType, TransformationLayout
from nncompress.torch.channel_surgery import axis_tensors, remove_channels
from nncompress.torch.insertion import apply_layout
from nncompress.torch.runtime import get_runtime
from tests.graph.channel_models import PROPERTY_MODELS, RandomNet, random_keep, randomize_bn


def zero_removed(model: nn.Module, groups: list[ChannelGroup], keep: dict[int, torch.Tensor]) -> nn.Module:
    """A copy with the removed channels zeroed in every output / channelwise slot (weights, bias,
    BatchNorm weight and bias; running statistics untouched): the masked reference."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for index, mask in keep.items():
            for slot in groups[index].slots:
                if slot.role == "input":
                    continue
                module = model.get_submodule(slot.module)
                for attr, dim in axis_tensors(module, "out"):
                    if attr.startswith("running"):
                        continue
                    tensor = getattr(module, attr)
                    for c in (~mask).nonzero().flatten().tolist():
                        tensor.narrow(dim, slot.offset + c * slot.repeat, slot.repeat).zero_()
    return model


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, tuple) else [out]


def _check_attributes(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels and m.weight.shape[1] * m.groups == m.in_channels, name
        elif isinstance(m, nn.Linear):
            assert tuple(m.weight.shape) == (m.out_features, m.in_features), name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean.shape[0] == m.weight.shape[0] == m.num_features, name


@pytest.mark.parametrize("name", sorted(PROPERTY_MODELS))
def test_removal_equals_zeroing(name: str) -> None:
    """The defining property, for random keep masks (3 per model): zeroing the removed channels in
    the output/channelwise slots gives the physically pruned model's output."""
    factory, shape = PROPERTY_MODELS[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    model = randomize_bn(factory())
    x = torch.randn(*shape, generator=gen)
    groups = channel_groups(capture(model, (x,)), model)
    assert any(g.prunable for g in groups)
    dense_params = sum(p.numel() for p in model.parameters())
    for _ in range(3):
        keep = random_keep(groups, gen)
        expected = _outputs(zero_removed(model, groups, keep), x)
        pruned = copy.deepcopy(model)
        remove_channels(pruned, groups, keep)
        assert type(pruned) is type(model)
        _check_attributes(pruned)
        for got, want in zip(_outputs(pruned, x), expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        removed = sum(int((~m).sum()) for m in keep.values())
        assert removed == 0 or sum(p.numel() for p in pruned.parameters()) < dense_params


def test_pruned_model_trains_and_state_dict_round_trips() -> None:
    factory, shape = PROPERTY_MODELS["resnet"]
    model = randomize_bn(factory())
    x = torch.randn(*shape)
    groups = channel_groups(capture(model, (x,)), model)
    keep = random_keep(groups, torch.Generator().manual_seed(1))
    remove_channels(model, groups, keep)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model(x).sum().backward()
    opt.step()
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))


class _MaskAndScale(nn.Module):
    """An inserted weight module like the library's: a full-shape mask (sparsity), a 1-D
    per-channel scale along ``axis`` (a quantizer's scale, a filter mask) and a broadcast scale."""

    def __init__(self, weight: torch.Tensor, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("mask", (torch.rand_like(weight) > 0.3).float())
        self.vec = nn.Parameter(torch.rand(weight.shape[axis]) + 0.5)
        shape = [1] * weight.dim()
        shape[axis] = -1
        self.register_buffer("bcast", torch.rand(weight.shape[axis]).view(shape) + 0.5)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shape = [1] * w.dim()
        shape[self.axis] = -1
        return w * self.mask * self.vec.view(shape) * self.bcast


@pytest.mark.parametrize("name", ["inception", "unet"])
def test_inserted_weight_modules_are_sliced(name: str) -> None:
    """Modules inserted at a sliced weight follow the weight: the pruned model with its runtime
    equals the masked reference of the plain model with the inserted modules' effect baked in."""
    factory, shape = PROPERTY_MODELS[name]
    model = randomize_bn(factory())
    x = torch.randn(*shape)
    groups = channel_groups(capture(model, (x,)), model)
    reference = copy.deepcopy(model)
    layout = TransformationLayout()
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0  # the output channels' dim
            layout.register(InsertionCommand(TargetPoint(TargetType.WEIGHT, mname), _MaskAndScale(m.weight, axis), "t"))
    rt = apply_layout(model, layout)
    assert rt is not None
    with torch.no_grad():
        for key, entries in rt.weight_points.items():
            reference.get_parameter(key).copy_(rt.module_at(entries[0])(model.get_parameter(key)))
    keep = random_keep(groups, torch.Generator().manual_seed(2))
    for mask in keep.values():  # every group loses a channel (or more) where it can
        if mask[1:].any():
            mask[0] = False
    expected = _outputs(zero_removed(reference, groups, keep), x)[0]
    remove_channels(model, groups, keep)
    assert get_runtime(model) is rt
    for key, entries in rt.weight_points.items():
        inserted = rt.module_at(entries[0])
        assert isinstance(inserted, _MaskAndScale)
        weight = model.get_parameter(key)
        assert inserted.mask.shape == weight.shape
        assert inserted.vec.shape[0] == inserted.bcast.shape[inserted.axis] == weight.shape[inserted.axis]
    torch.testing.assert_close(_outputs(model, x)[0], expected, atol=1e-5, rtol=1e-4)


def test_pruned_resnet_onnx_matches_pytorch(tmp_path: Path) -> None:
    factory, shape = PROPERTY_MODELS["resnet"]
    model = randomize_bn(factory())
    x = torch.randn(*shape)
    groups = channel_groups(capture(model, (x,)), model)
    keep = random_keep(groups, torch.Generator().manual_seed(3))
    remove_channels(model, groups, keep)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5, rtol=1e-4)
    import onnx

    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())


def _resnet_groups() -> tuple[nn.Module, list[ChannelGroup]]:
    factory, shape = PROPERTY_MODELS["resnet"]
    model = randomize_bn(factory())
    return model, channel_groups(capture(model, (torch.randn(*shape),)), model)


@pytest.mark.parametrize(
    ("make_keep", "match"),
    [
        (lambda g: {g[0].index: torch.ones(g[0].channels + 1, dtype=torch.bool)}, r"group 0 .*shape"),
        (lambda g: {g[1].index: torch.zeros(g[1].channels, dtype=torch.bool)}, r"group 1 .*removes all"),
        (lambda g: {99: torch.ones(4, dtype=torch.bool)}, r"group 99"),
        (lambda g: {g[0].index: torch.ones(g[0].channels)}, r"group 0 .*bool"),
        (lambda g: {g[2].index: torch.ones(g[2].channels, dtype=torch.bool),
                    g[0].index: torch.ones(3, dtype=torch.bool)}, r"group 0"),
    ],
)
def test_bad_keep_masks_are_refused_and_leave_the_model(
    make_keep: Callable[[list[ChannelGroup]], dict[int, torch.Tensor]], match: str
) -> None:
    model, groups = _resnet_groups()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match=match):
        remove_channels(model, groups, make_keep(groups))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_unprunable_group_is_refused_with_its_reason() -> None:
    factory, shape = PROPERTY_MODELS["conv_output"]
    model = factory()
    groups = channel_groups(capture(model, (torch.randn(*shape),)), model)
    bad = next(g for g in groups if not g.prunable)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    keep = {bad.index: torch.ones(bad.channels, dtype=torch.bool)}
    with pytest.raises(InvalidArgumentError, match=rf"group {bad.index} \(c2\).*not prunable.*model output"):
        remove_channels(model, groups, keep)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_groups_of_another_model_are_refused() -> None:
    model, groups = _resnet_groups()
    other = PROPERTY_MODELS["resnet"][0]()
    other.conv1 = nn.Conv2d(3, 2, 3, 1, 1, bias=False)  # fewer channels than group 0 has
    keep = {0: torch.ones(groups[0].channels, dtype=torch.bool)}
    with pytest.raises(InvalidArgumentError, match="group 0 .*another model"):
        remove_channels(other, groups, keep)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1))
def test_removal_equals_zeroing_on_random_graphs(seed: int) -> None:
    """Random DAGs of convs, depthwise convs, adds, muls, concats, SE blocks and scalar ops, with a
    random MLP head: every group called prunable obeys the defining property."""
    model = randomize_bn(RandomNet(seed), seed)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    groups = channel_groups(capture(model, (x,)), model)
    keep = random_keep(groups, torch.Generator().manual_seed(seed + 1))
    expected = _outputs(zero_removed(model, groups, keep), x)
    remove_channels(model, groups, keep)
    torch.testing.assert_close(_outputs(model, x)[0], expected[0], atol=1e-4, rtol=1e-4)
