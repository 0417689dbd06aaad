"""Channel groups of linears on ``[N, F]`` activations (MLP heads), and linears that stay unprunable."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncompress.graph.capture import capture
from nncompress.graph.channel_groups import ChannelGroup, channel_groups
from tests.graph.mlp_models import MLP_MODELS, BertBlock


def groups_of(model: nn.Module, shape: tuple[int, ...]) -> list[ChannelGroup]:
    model.eval()
    return channel_groups(capture(model, (torch.randn(*shape),)), model)


def described(groups: list[ChannelGroup]) -> list[tuple[int, bool, bool, set[tuple[str, str, int, int]]]]:
    return [(g.channels, g.prunable, g.first_conv, {(s.module, s.role, s.offset, s.repeat) for s in g.slots})
            for g in groups]


def test_mlp_head_hidden_linears_are_groups_and_the_classifier_is_not() -> None:
    """Linear -> ReLU -> Dropout -> Linear -> GELU -> Linear: the two hidden widths are groups, the
    first one reading the model input (NNCF's first prunable node, ``prune_first_conv``); the
    classifier's outputs reach the model output and make no group."""
    factory, shape = MLP_MODELS["mlp_head"]
    assert described(groups_of(factory(), shape)) == [
        (16, True, True, {("net.0", "output", 0, 1), ("net.3", "input", 0, 1)}),
        (12, True, False, {("net.3", "output", 0, 1), ("net.5", "input", 0, 1)}),
    ]


def test_batchnorm1d_is_channelwise_and_an_add_joins_two_linears() -> None:
    factory, shape = MLP_MODELS["mlp_batchnorm"]
    assert described(groups_of(factory(), shape)) == [
        (16, True, True, {("fc1", "output", 0, 1), ("bn1", "channelwise", 0, 1), ("fc2", "input", 0, 1)}),
        (10, True, True, {("fc2", "output", 0, 1), ("bn2", "channelwise", 0, 1), ("short", "output", 0, 1),
                          ("out", "input", 0, 1)}),
    ]


def test_conv_flatten_linear_then_a_linear_group() -> None:
    factory, shape = MLP_MODELS["conv_mlp"]
    assert described(groups_of(factory(), shape)) == [
        (6, True, True, {("conv.0", "output", 0, 1), ("conv.1", "channelwise", 0, 1), ("fc1", "input", 0, 16)}),
        (20, True, False, {("fc1", "output", 0, 1), ("bn", "channelwise", 0, 1), ("fc2", "input", 0, 1)}),
    ]


def test_bert_like_block_has_no_prunable_group_and_says_why() -> None:
    """Every linear of a BERT-like block works on ``[N, T, F]``: features on the last dim, not dim 1."""
    groups = groups_of(BertBlock(), (2, 5, 16))
    assert [g.producers[0].module for g in groups] == ["q", "k", "v", "o", "ff1", "ff2"]
    for g in groups:
        assert not g.prunable and re.search(r"returns a 3-D tensor \(2, 5, \d+\).*last dim", g.reason), g.reason


class _Readers(nn.Module):
    """A hidden linear whose 2-D output goes through ``fn`` before the classifier (or beside it)."""

    def __init__(self, fn: str) -> None:
        super().__init__()
        self.fn = fn
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.ln = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.fc1(x)
        if self.fn == "output":
            return self.fc2(F.relu(h)), h
        if self.fn == "sigmoid":
            return self.fc2(torch.sigmoid(h))
        if self.fn == "layer_norm":
            return self.fc2(self.ln(h))
        if self.fn == "softmax":
            return self.fc2(torch.softmax(h, dim=1))
        if self.fn == "sum":
            return self.fc2(h) + h.sum(1, keepdim=True)
        if self.fn == "unflatten":
            return F.conv1d(h.view(-1, 2, 4), torch.ones(3, 2, 1)).flatten(1)
        return self.fc2(h.unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize(
    ("fn", "reason"),
    [("output", "model output"), ("sigmoid", "sigmoid.*non-zero"), ("layer_norm", "layer_norm"),
     ("softmax", "softmax"), ("sum", r"sum.*may reduce over the channels"), ("unflatten", "moves channels off dim 1"),
     ("unsqueeze", "unsqueeze.*moves channels off dim 1")],
)
def test_linear_groups_that_cannot_be_proven_say_why(fn: str, reason: str) -> None:
    g = next(g for g in groups_of(_Readers(fn), (4, 6)) if g.producers[0].module == "fc1")
    assert not g.prunable and re.search(reason, g.reason), g.reason
