"""Channel dependency groups found from captured graphs, and the shape rules they rest on."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nncompress.graph.capture import capture
from nncompress.graph.channel_groups import ChannelGroup, channel_groups
from nncompress.graph.channel_rules import concat_dim, reduction_keeps_channels, reshape_channel_factor
from tests.graph.channel_models import PROPERTY_MODELS, TinyViT, conv_bn


def groups_of(model: nn.Module, shape: tuple[int, ...] = (2, 3, 16, 16)) -> list[ChannelGroup]:
    return channel_groups(capture(model, (torch.randn(*shape),)), model)


def group_with(groups: list[ChannelGroup], module: str, role: str = "output") -> ChannelGroup:
    return next(g for g in groups if any(s.module == module and s.role == role for s in g.slots))


def slots(group: ChannelGroup) -> set[tuple[str, str, int, int]]:
    return {(s.module, s.role, s.offset, s.repeat) for s in group.slots}


MLP_HIDDEN = {"flatten_linear": {"fc"}, "mobilenet_v3_se": {"classifier.0"}}


@pytest.mark.parametrize("name", ["resnet", "resnet18", "mobilenet_v2", "mobilenet_v3_se", "residual_cnn", "inception",
                                  "densenet", "flatten_linear", "pool_linear", "two_readers",
                                  "depthwise_multiplier"])
def test_every_conv_group_of_these_cnns_is_prunable(name: str) -> None:
    factory, shape = PROPERTY_MODELS[name]
    model = factory()
    groups = groups_of(model, shape)
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
    produced = {s.module for g in groups for s in g.producers}
    # every ordinary conv produces exactly one group; so does the hidden linear of an MLP head
    assert produced == convs | MLP_HIDDEN.get(name, set())
    assert all(g.prunable for g in groups), [g.reason for g in groups if not g.prunable]
    assert [g.index for g in groups] == list(range(len(groups)))


def test_resnet18_every_conv_prunable() -> None:
    """NNCF 2.19 pruned 5 of ResNet-18's 17 convs; here all 20 (with the 3 projections) are in
    prunable groups: 12 groups, the residual chain of each stage being one."""
    groups = groups_of(PROPERTY_MODELS["resnet18"][0](), (2, 3, 32, 32))
    assert len(groups) == 12 and all(g.prunable for g in groups)
    assert sum(len(g.producers) for g in groups) == 20
    stage2 = group_with(groups, "layer2.0.conv2")
    assert {s.module for s in stage2.producers} == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}


def test_resnet_residual_adds_merge_groups() -> None:
    groups = groups_of(PROPERTY_MODELS["resnet"][0]())
    g = group_with(groups, "layers.0.0.conv3")
    assert {s.module for s in g.producers} == {"layers.0.0.conv3", "layers.0.0.downsample.0"}
    assert {s.module for s in g.channelwise} == {"layers.0.0.bn3", "layers.0.0.downsample.1"}
    assert {s.module for s in g.consumers} == {"layers.1.0.conv1", "layers.1.0.downsample.0"}
    assert group_with(groups, "conv1").first_conv and not group_with(groups, "layers.1.0.conv1").first_conv
    assert group_with(groups, "layers.1.0.conv2").downsample  # stride 2
    assert not group_with(groups, "layers.1.0.conv1").downsample
    assert all(g.prunable for g in groups) and len(groups) == 13


def test_mobilenet_v2_depthwise_follows_the_expand_conv() -> None:
    groups = groups_of(PROPERTY_MODELS["mobilenet_v2"][0]())
    g = group_with(groups, "features.2.conv.0.0")
    assert slots(g) == {("features.2.conv.0.0", "output", 0, 1), ("features.2.conv.0.1", "channelwise", 0, 1),
                        ("features.2.conv.1.0", "channelwise", 0, 1), ("features.2.conv.1.1", "channelwise", 0, 1),
                        ("features.2.conv.2.0", "input", 0, 1)}
    chain = group_with(groups, "features.4.conv.2.0")  # projections of the residual blocks 4, 5, 6
    assert {s.module for s in chain.producers} == {f"features.{i}.conv.2.0" for i in (4, 5, 6)}


def test_squeeze_excitation_ties_its_expand_conv_to_the_block() -> None:
    groups = groups_of(PROPERTY_MODELS["mobilenet_v3_se"][0]())
    g = group_with(groups, "features.4.block.0.0")
    assert {("features.4.block.2.fc2", "output"), ("features.4.block.2.fc1", "input")} <= {
        (s.module, s.role) for s in g.slots}
    assert group_with(groups, "features.4.block.2.fc1").prunable  # the squeeze width
    linear = groups_of(PROPERTY_MODELS["linear_se"][0]())
    assert {("fc2", "output"), ("fc1", "input"), ("out", "input")} <= {(s.module, s.role) for s in linear[0].slots}


def test_first_and_downsample_flags_follow_nncf() -> None:
    """First convs: a model input reaches them through no other conv (preprocessing included).
    Downsample: any non-transposed conv of the group with a stride > 1, depthwise ones too."""
    class Pre(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x * 2 - 1))).mean((2, 3), keepdim=True).flatten(1)

    pre = groups_of(Pre())
    assert [g.first_conv for g in pre] == [True, False]
    inception = groups_of(PROPERTY_MODELS["inception"][0]())
    assert [s.module for g in inception if g.first_conv for s in g.producers] == ["stem.0"]
    v2 = groups_of(PROPERTY_MODELS["mobilenet_v2"][0]())
    assert group_with(v2, "features.4.conv.0.0").downsample  # its depthwise conv has stride 2
    assert not group_with(v2, "features.3.conv.0.0").downsample
    unet = groups_of(PROPERTY_MODELS["unet"][0]())
    assert group_with(unet, "down.0").downsample and not group_with(unet, "up").downsample


def test_concat_gives_offsets() -> None:
    groups = groups_of(PROPERTY_MODELS["inception"][0]())
    head = {group_with(groups, m).index: s.offset for m in ("b1.0", "b3.1.0", "bp.0", "stem.0")
            for s in group_with(groups, m).slots if s.module == "head"}
    assert sorted(head.values()) == [0, 4, 9, 12]
    stem = group_with(groups, "stem.0")
    assert ("bn", "channelwise", 12, 1) in slots(stem) and ("b1.0", "input", 0, 1) in slots(stem)
    dense = groups_of(PROPERTY_MODELS["densenet"][0]())
    assert ("trans.2", "input", 10, 1) in slots(group_with(dense, "layers.1.2"))
    assert all(g.prunable for g in dense)


def test_flatten_into_linear_repeats_each_channel() -> None:
    groups = groups_of(PROPERTY_MODELS["flatten_linear"][0]())
    assert ("fc", "input", 0, 16) in slots(group_with(groups, "c2.0"))
    assert ("fc", "input", 0, 1) in slots(group_with(groups_of(PROPERTY_MODELS["pool_linear"][0]()), "c1.0"))


def test_depthwise_multiplier_repeats() -> None:
    g = group_with(groups_of(PROPERTY_MODELS["depthwise_multiplier"][0]()), "c1.0")
    assert {("dw", "channelwise", 0, 2), ("bn", "channelwise", 0, 2), ("pw", "input", 0, 2)} <= slots(g)


def test_a_conv_read_twice_and_a_module_called_twice() -> None:
    groups = groups_of(PROPERTY_MODELS["two_readers"][0]())
    assert {s.module for s in group_with(groups, "c1.0").consumers} == {"a", "b", "fc"}
    assert {s.module for s in group_with(groups, "a").producers} == {"a", "b"}  # both feed `shared`
    assert len(group_with(groups, "shared").producers) == 1


@pytest.mark.parametrize(
    ("name", "module", "reason"),
    [("resnext", "c2.0", r"grouped conv \(groups=4\)"), ("resnext", "c1.0", "grouped conv"),
     ("conv_output", "c2", "model output"), ("linear_se", "out", "model output")],
)
def test_unprunable_groups_say_why(name: str, module: str, reason: str) -> None:
    g = group_with(groups_of(PROPERTY_MODELS[name][0]()), module)
    assert not g.prunable and g.reason
    assert re.search(reason, g.reason), g.reason


def test_transformer_has_no_prunable_group() -> None:
    """The patch conv's channels go through a transpose; the feed-forward linears work on
    ``[N, T, F]`` (features on the last dim): their groups are listed, unprunable, saying why."""
    groups = groups_of(TinyViT())
    assert not any(g.prunable for g in groups)
    assert "transpose" in group_with(groups, "patch").reason
    assert [g.producers[0].module for g in groups[1:]] == ["enc.linear1", "enc.linear2"]
    assert all("3-D tensor" in g.reason and "last dim" in g.reason for g in groups[1:])
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    groups = channel_groups(capture(enc, (torch.randn(2, 5, 16),)), enc)
    assert len(groups) == 4 and not any(g.prunable for g in groups)


class _Custom(nn.Module):
    """One conv, then ``fn`` on its output, then a conv reading the result."""

    def __init__(self, fn: str, cout: int = 6) -> None:
        super().__init__()
        self.fn = fn
        self.c1, self.c2 = conv_bn(3, cout), nn.Conv2d(cout, 4, 1)
        self.gn = nn.GroupNorm(2, cout)
        self.shifted_tanh, self.relu6 = nn.Hardtanh(0.5, 2.0), nn.ReLU6()
        self.register_buffer("shift", torch.randn(1, cout, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        if self.fn == "sigmoid":
            y = torch.sigmoid(y)
        elif self.fn == "group_norm":
            y = self.gn(y)
        elif self.fn == "add_sigmoid":
            y = y + torch.sigmoid(y)
        elif self.fn == "mul_sigmoid":  # SiLU written out: zero times anything is zero
            y = y * torch.sigmoid(y)
        elif self.fn == "setitem":
            y[:, 0] = 0
        elif self.fn == "slice":
            y = torch.cat([y[:, :3], y[:, 3:]], 1)
        elif self.fn == "buffer":
            y = y + self.shift
        elif self.fn == "plus_one":
            y = y + 1
        elif self.fn == "times_two":
            y = y * 2
        elif self.fn == "hardtanh_module":  # hardtanh(0) = 0.5
            y = self.shifted_tanh(y)
        elif self.fn == "hardtanh_functional":  # bounds not in the capture
            y = F.hardtanh(y, 0.5, 2.0)
        elif self.fn == "relu6":  # nn.ReLU6 runs hardtanh(0, 6)
            y = self.relu6(y)
        elif self.fn == "alpha_dropout":  # training: a * 0 + b != 0
            y = F.alpha_dropout(y, 0.5, True)
        elif self.fn == "inplace_on_view":  # writes y through a view: y's removed channels become 1
            y.view(y.shape[0], -1).add_(1)
        elif self.fn == "inplace_after_view":  # the view z sees the later write into y
            z = y.view(y.shape)
            y.add_(1)
            y = z
        elif self.fn == "scale_view_in_place":  # zero stays zero: still prunable
            y.view(y.shape[0], -1).mul_(2)
        elif self.fn == "mean_ambiguous":  # (2, 16, 16, 16) -> (2, 16): dims (2, 3) or (1, 2)?
            return self.c2(y.mean((2, 3))[:, :, None, None]).flatten(1)
        elif self.fn == "mean_keepdim":
            return self.c2(y.mean((2, 3), keepdim=True)).flatten(1)
        return self.c2(y).mean((2, 3), keepdim=True).flatten(1)


@pytest.mark.parametrize(
    ("fn", "cout", "reason"),
    [("sigmoid", 6, r"sigmoid_0 turns removed \(zero\) channels into non-zero"),
     ("group_norm", 6, "group_norm"), ("setitem", 6, r"_Custom writes into a tensor by index"), ("slice", 6, "getitem"), ("buffer", 6, "per-channel tensor outside"),
     ("plus_one", 6, "add_0 turns removed"), ("add_sigmoid", 6, "sigmoid_0 turns removed"), ("mean_ambiguous", 16, r"may reduce over the channels"),
     ("hardtanh_module", 6, "hardtanh_0 turns removed"), ("hardtanh_functional", 6, "hardtanh_0 turns removed"),
     ("alpha_dropout", 6, "alpha_dropout_0 turns removed"), ("inplace_on_view", 6, "in place through a view"),
     ("inplace_after_view", 6, "in place through a view")],
)
def test_what_cannot_be_proven_is_refused(fn: str, cout: int, reason: str) -> None:
    g = group_with(groups_of(_Custom(fn, cout)), "c1.0")
    assert not g.prunable
    assert re.search(reason, g.reason), g.reason


@pytest.mark.parametrize("fn", ["times_two", "mean_keepdim", "mul_sigmoid", "relu6", "scale_view_in_place"])
def test_what_can_be_proven_is_prunable(fn: str) -> None:
    assert group_with(groups_of(_Custom(fn, 16)), "c1.0").prunable


def test_first_conv_of_a_model_with_functional_conv() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3, 3, 3))
            self.c2 = nn.Conv2d(5, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(F.conv2d(x, self.w)).mean((2, 3))

    groups = groups_of(Functional())
    assert [s.module for g in groups for s in g.producers] == ["c2"]  # F.conv2d with a bare parameter


# -- shape rules -------------------------------------------------------------------------------

shapes4 = st.tuples(*[st.integers(1, 4)] * 4)


@settings(max_examples=200, deadline=None)
@given(shapes4, st.sets(st.integers(0, 3)), st.booleans())
def test_reduction_rule_is_sound(shape: tuple[int, ...], dims: set[int], keepdim: bool) -> None:
    """If the rule says dim 1 survives, no reduction giving that shape reduced it."""
    if not dims:
        return
    out = tuple(torch.zeros(shape).sum(tuple(sorted(dims)), keepdim=keepdim).shape)
    if reduction_keeps_channels(shape, out):
        assert 1 not in dims or shape[1] == 1
        assert (keepdim or 0 not in dims) and len(out) >= 2 and out[1] == shape[1]


def test_reduction_rule_proves_the_usual_cases() -> None:
    assert reduction_keeps_channels((2, 16, 4, 4), (2, 16, 1, 1))
    assert reduction_keeps_channels((2, 16, 4, 4), (2, 16))
    assert not reduction_keeps_channels((2, 4, 4, 4), (2, 4))  # could be dims (1, 2)
    assert not reduction_keeps_channels((2, 16, 4, 4), ())


@settings(max_examples=200, deadline=None)
@given(shapes4, st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_reshape_rule_is_sound(shape: tuple[int, ...], split: list[int]) -> None:
    """When the rule gives a factor, every element of channel c lands at dim-1 indices
    c*factor .. (c+1)*factor - 1 of the reshaped tensor."""
    n = math.prod(shape[1:])
    if n % math.prod(split):
        return
    out = (shape[0], n // math.prod(split), *split)
    factor = reshape_channel_factor(shape, out)
    if factor is None:
        return
    channel = torch.arange(shape[1]).view(1, -1, 1, 1).expand(*shape)
    reshaped = channel.reshape(out)
    for j in range(out[1]):
        assert bool((reshaped[:, j] == j // factor).all())


def test_concat_dim() -> None:
    assert concat_dim([(2, 3, 4, 4), (2, 5, 4, 4)], (2, 8, 4, 4)) == 1
    assert concat_dim([(2, 3, 4, 4), None], (2, 8, 4, 4)) == 1
    assert concat_dim([(2, 3, 4, 4), (2, 3, 4, 4)], (4, 3, 4, 4)) == 0
    assert concat_dim([(2, 3, 4, 4), None, None], (2, 8, 4, 4)) is None
    assert concat_dim([(2, 3, 4, 4), (2, 5, 4, 4)], (2, 9, 4, 4)) is None
