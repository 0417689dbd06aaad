"""The block-by-block runner on a tiny random Llama: all layers returned, the model untouched,
and AWQ / GPTQ / scale estimation closer to the float logits than round-to-nearest."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import WeightQuantSpec, dequantize_weight
from nncompress.weight_compression import data_aware
from nncompress.weight_compression.data_aware import (
    CompressedWeights,
    collect_activation_stats,
    compress_data_aware,
    find_blocks,
)
from nncompress.weight_compression.params import AWQParams, GPTQParams, ScaleEstimationParams

transformers = pytest.importorskip("transformers")

INT4 = WeightQuantSpec.from_mode("int4_asym", 16)


@pytest.fixture(scope="module")
def llama() -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a few loud channels, as trained LLMs have
        for layer in model.model.layers:
            layer.input_layernorm.weight[:4] = 12.0
            layer.post_attention_layernorm.weight[60:] = 8.0
    return model


@pytest.fixture(scope="module")
def samples() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 128, (1, 24), generator=g)} for _ in range(8)]


def _plan(model: nn.Module) -> dict[str, WeightQuantSpec | None]:
    plan: dict[str, WeightQuantSpec | None] = {
        n: INT4 for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n
    }
    plan["lm_head"] = WeightQuantSpec.from_mode("int8_asym")
    return plan


def _logit_error(model: nn.Module, weights: CompressedWeights, samples: list[dict[str, torch.Tensor]]) -> float:
    """Mean squared logit difference of the model with the compressed weights installed."""
    quant = copy.deepcopy(model)
    mods = dict(quant.named_modules())
    with torch.no_grad():
        for name, (qw, mult) in weights.items():
            w = dequantize_weight(qw)
            mods[name].weight.copy_(w if mult is None else w * mult)
        errs = [((model(**s).logits - quant(**s).logits) ** 2).mean() for s in samples]
    return float(torch.stack(errs).mean())


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_find_blocks(llama: Any) -> None:
    prefix, blocks = find_blocks(llama)
    assert prefix == "model.layers" and len(blocks) == 3
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert find_blocks(mlp) == ("", [mlp])


def test_algorithms_beat_rtn_and_leave_model_untouched(
    llama: Any, samples: list[dict[str, torch.Tensor]]
) -> None:
    plan = _plan(llama)
    before = _snapshot(llama)
    llama.train()
    runs: dict[str, dict[str, Any]] = {
        "rtn": {}, "awq": {"awq": AWQParams(steps=6)}, "se": {"scale_estimation": ScaleEstimationParams()},
        "gptq": {"gptq": GPTQParams(block_size=32)},
        "awq+gptq+se": {"awq": AWQParams(steps=6), "gptq": GPTQParams(block_size=32),
                        "scale_estimation": ScaleEstimationParams()},
    }
    errors = {}
    for key, kwargs in runs.items():
        weights = compress_data_aware(llama, samples, plan, progress=False, **kwargs)
        assert set(weights) == set(plan)
        assert all(weights[n][0].spec == plan[n] for n in plan)
        assert _same(llama, before) and llama.training and llama.model.layers[0].training
        errors[key] = _logit_error(llama.eval(), weights, samples)
        llama.train()
    llama.eval()
    print("logit MSE", errors)
    for key in ("awq", "se", "gptq", "awq+gptq+se"):
        assert errors[key] < errors["rtn"], (key, errors)
    assert errors["gptq"] < 0.8 * errors["rtn"]


def test_awq_gives_multipliers_and_int8_stays_rtn(llama: Any, samples: list[dict[str, torch.Tensor]]) -> None:
    weights = compress_data_aware(llama, samples, _plan(llama), awq=AWQParams(steps=6), progress=False)
    assert weights["lm_head"][1] is None
    mult = weights["model.layers.0.self_attn.q_proj"][1]
    assert mult is not None and mult.shape == (64,) and bool(torch.isfinite(mult).all())


def test_model_restored_on_error(
    llama: Any, samples: list[dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(llama)

    def boom(*args: Any, **kwargs: Any) -> Any:
        # block 0 holds its dequantized weights now
        assert not torch.equal(llama.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])
        raise RuntimeError("injected")

    monkeypatch.setattr(data_aware, "_next_inputs", boom)
    with pytest.raises(RuntimeError, match="injected"):
        compress_data_aware(llama, samples, _plan(llama), gptq=GPTQParams(), progress=False)
    assert _same(llama, before) and not llama.training
    assert all(not m._forward_pre_hooks for m in llama.modules())


def test_whole_model_as_one_block_and_kwargs_samples() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    xs = [torch.randn(16, 32) * torch.linspace(0.1, 5, 32) for _ in range(4)]
    samples: list[Any] = [((x,), {}) for x in xs]
    plan: dict[str, WeightQuantSpec | None] = {"0": INT4, "2": INT4}
    rtn = compress_data_aware(mlp, samples, plan, progress=False)
    gptq = compress_data_aware(mlp, xs, plan, gptq=GPTQParams(), progress=False)  # bare tensors too

    def err(w: CompressedWeights) -> float:
        q = copy.deepcopy(mlp)
        with torch.no_grad():
            for n, (qw, _) in w.items():
                dict(q.named_modules())[n].weight.copy_(dequantize_weight(qw))
            return float(sum(((mlp(x) - q(x)) ** 2).sum() for x in xs))

    assert err(gptq) < err(rtn)


def test_collect_activation_stats_shares_qkv(llama: Any, samples: list[dict[str, torch.Tensor]]) -> None:
    names = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.down_proj"]
    stats = collect_activation_stats(llama, samples, names)
    assert stats[names[0]] is stats[names[1]]
    assert stats[names[0]].count == 8 * 24
    seen: list[torch.Tensor] = []
    handle = llama.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            for s in samples:
                llama(**s)
    finally:
        handle.remove()
    x = torch.cat([t.reshape(-1, 128) for t in seen]).double()
    torch.testing.assert_close(stats[names[2]].mean_sq, (x * x).mean(dim=0))


def test_bad_plan(llama: Any, samples: list[dict[str, torch.Tensor]]) -> None:
    with pytest.raises(InvalidArgumentError, match="model.embed_tokens"):
        compress_data_aware(llama, samples, {"model.embed_tokens": INT4}, progress=False)
    with pytest.raises(InvalidArgumentError, match="nope"):
        collect_activation_stats(llama, samples, ["nope"])


def test_chained_block_inputs_match_the_model(llama: Any, samples: list[dict[str, torch.Tensor]]) -> None:
    """Captured block-0 inputs run through the float blocks give what the model feeds each block."""
    prefix, blocks = find_blocks(llama)
    seen: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0])) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for s in samples[:2]:
                llama(**s)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        inputs = data_aware._capture_inputs(llama, blocks[0], prefix, data_aware.as_model_inputs(samples[:2]))
        assert all(v is None for _, kw in inputs for k, v in kw.items() if k in ("cache", "past_key_values"))
        for i, block in enumerate(blocks):
            for j, (args, _) in enumerate(inputs):
                torch.testing.assert_close(args[0], seen[i][j])
            inputs = data_aware._next_inputs(block, prefix, inputs)
