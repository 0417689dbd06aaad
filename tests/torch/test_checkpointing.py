"""Activation checkpointing (torch.utils.checkpoint, Hugging Face ``gradient_checkpointing_enable``)
with QAT and magnitude sparsity: backward re-runs checkpointed modules outside the model's forward,
and gets the same inserted modules, so gradients equal those without checkpointing (issue 8)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode
from torch.utils.checkpoint import checkpoint

import nncompress as nnc
from nncompress.torch.runtime import get_runtime
from tests.model_zoo import ResidualBlock

ALGORITHMS = {
    "quantization": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}},
    "magnitude_sparsity": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5},
}


class CheckpointedCNN(nn.Module):
    """Conv stem, residual blocks (the second one called twice, sharing its weights), linear head.
    ``reentrant`` ``None``: plain calls; else each block runs under ``checkpoint(use_reentrant=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList([ResidualBlock(8), ResidualBlock(8)])
        self.fc = nn.Linear(8, 10)
        self.reentrant: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in (self.blocks[0], self.blocks[1], self.blocks[1]):
            x = block(x) if self.reentrant is None else checkpoint(block, x, use_reentrant=self.reentrant)
        return self.fc(x.mean(dim=(2, 3)))


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(plain: nn.Module, checkpointed: nn.Module) -> None:
    expected, got = _grads(plain), _grads(checkpointed)
    assert set(got) == set(expected) and any("nncompress." in n for n in got) == any("nncompress." in n for n in expected)
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_cnn_gradients_with_checkpointed_blocks_equal_plain_ones(algorithm: str, reentrant: bool) -> None:
    torch.manual_seed(0)
    config = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": ALGORITHMS[algorithm]}
    _, model = nnc.create_compressed_model(CheckpointedCNN(), config, init_data=_batches())
    model.train()
    plain = copy.deepcopy(model)
    x, y = _batches(1)[0]
    F.cross_entropy(plain(x), y).backward()
    model.reentrant = reentrant
    F.cross_entropy(model(x), y).backward()
    assert _get_current_function_mode() is None  # the recomputation left no mode behind
    _assert_same_grads(plain, model)
    if algorithm == "quantization":
        assert any("nncompress." in n for n in _grads(model))  # the quantizers' steps learn too


def test_cnn_trains_with_checkpointing() -> None:
    torch.manual_seed(0)
    config = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": ALGORITHMS["quantization"]}
    _, model = nnc.create_compressed_model(CheckpointedCNN(), config, init_data=_batches())
    model.train()
    model.reentrant = False
    x, y = _batches(1)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_direct_call_of_a_sub_module_outside_backward_still_bypasses_hooks() -> None:
    torch.manual_seed(0)
    config = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": ALGORITHMS["magnitude_sparsity"]}
    _, model = nnc.create_compressed_model(CheckpointedCNN(), config)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()  # there is a last forward with gradients to recompute from
    conv = model.stem[0]
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))  # documented limitation


def _transformer(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64))


@pytest.mark.parametrize(("kind", "algorithm", "reentrant"), [
    ("bert", "quantization", True), ("bert", "magnitude_sparsity", False),
    ("llama", "quantization", False), ("llama", "magnitude_sparsity", True),
])
def test_transformers_gradient_checkpointing(kind: str, algorithm: str, reentrant: bool) -> None:
    ids = torch.randint(0, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1, 0]) if kind == "bert" else ids
    config = {"input_info": [{"sample_size": [2, 6], "type": "long", "keyword": "input_ids"}],
              "compression": ALGORITHMS[algorithm]}
    _, model = nnc.create_compressed_model(_transformer(kind), config, init_data=[{"input_ids": ids}])
    model.train()
    plain = copy.deepcopy(model)

    def loss(m: Any) -> torch.Tensor:
        return m(input_ids=ids, labels=labels).loss

    loss(plain).backward()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    loss(model).backward()
    assert _get_current_function_mode() is None
    _assert_same_grads(plain, model)
    assert get_runtime(model) is not None

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        value = loss(model)
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < losses[0]


class TiedLM(nn.Module):
    """Embedding, two blocks, and a head whose linear layer reads the embedding's (tied) weight.
    ``reentrant`` as in :class:`CheckpointedCNN`; the head is checkpointed too."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(2)])
        self.head = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 50, bias=False))
        self.head[1].weight = self.emb.weight
        self.reentrant: bool | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for module in (*self.blocks, self.head):
            x = module(x) if self.reentrant is None else checkpoint(module, x, use_reentrant=self.reentrant)
        return x


@pytest.mark.parametrize("reentrant", [False, True])
def test_tied_weight_is_masked_in_recomputation_with_scope_hooks_only_on_its_readers(reentrant: bool) -> None:
    torch.manual_seed(0)
    config = {"input_info": {"sample_size": [2, 5], "type": "long"}, "compression": ALGORITHMS["magnitude_sparsity"]}
    _, model = nnc.create_compressed_model(TiedLM(), config)
    rt = get_runtime(model)
    assert rt is not None and not rt.op_points and "emb.weight" not in rt.owner_local
    # weight points only: the scope hooks just start recomputation where the tied weight is read
    assert rt.scope_hooked == {"emb", "head.1"}
    hooked = [name for name, m in model.named_modules() if any(
        getattr(h, "__func__", None) is type(rt).push_scope for h in m._forward_pre_hooks.values())]
    assert sorted(hooked) == ["emb", "head.1"]
    model.train()
    plain = copy.deepcopy(model)
    ids = torch.randint(0, 50, (4, 5), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 50, (4 * 5,), generator=torch.Generator().manual_seed(2))
    F.cross_entropy(plain(ids).flatten(0, 1), target).backward()
    model.reentrant = reentrant
    F.cross_entropy(model(ids).flatten(0, 1), target).backward()
    assert _get_current_function_mode() is None
    _assert_same_grads(plain, model)
