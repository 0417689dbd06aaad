"""compress_weights(): the plan (formats, output layer, ratio, scopes, fallback), errors, no change on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

import nncompress as nnc
from nncompress.errors import InitDataError, InvalidArgumentError, ScopeMatchError
from nncompress.weight_compression import CompressedEmbedding, CompressedLinear
from nncompress.weight_compression.kernels import exact_matmul

HIDDEN = 64


def tiny_llama(hidden: int = HIDDEN, tie: bool = True) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()


def samples(n: int = 4, length: int = 24) -> nnc.Dataset:
    g = torch.Generator().manual_seed(1)
    return nnc.Dataset([{"input_ids": torch.randint(0, 128, (1, length), generator=g)} for _ in range(n)])


IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))


def formats(model: torch.nn.Module) -> dict[str, str]:
    return {n: m.spec.mode + ("" if m.spec.group_size == -1 else f"/{m.spec.group_size}")
            for n, m in model.named_modules() if isinstance(m, (CompressedLinear, CompressedEmbedding))}


def logits_error(model: torch.nn.Module, ref: torch.Tensor) -> float:
    with torch.no_grad(), exact_matmul():
        out = model(IDS).logits
    return float((out - ref).norm() / ref.norm())


def reference_logits() -> torch.Tensor:
    with torch.no_grad():
        return tiny_llama()(IDS).logits


def test_default_is_int8_asym_everywhere_and_tied_head_shares_embedding() -> None:
    model = nnc.compress_weights(tiny_llama(), advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    f = formats(model)
    assert len(f) == 2 * 7 + 2 and set(f.values()) == {"int8_asym"}
    head, emb = model.lm_head, model.model.embed_tokens
    assert isinstance(head, CompressedLinear) and isinstance(emb, CompressedEmbedding)
    assert head.weight_packed.data_ptr() == emb.weight_packed.data_ptr()
    assert logits_error(model, reference_logits()) < 0.01


@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym", "nf4"])
def test_4bit_modes_keep_output_layer_and_embedding_int8(mode: str) -> None:
    model = nnc.compress_weights(tiny_llama(tie=False), mode=mode, group_size=32,
                                 advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    f = formats(model)
    assert f["lm_head"] == "int8_asym" and f["model.embed_tokens"] == "int8_asym"
    assert all(v == f"{mode}/32" for k, v in f.items() if k.startswith("model.layers"))
    assert logits_error(model, reference_logits_untied()) < 0.2


def reference_logits_untied() -> torch.Tensor:
    with torch.no_grad():
        return tiny_llama(tie=False)(IDS).logits


def test_all_layers_and_backup_none() -> None:
    adv = nnc.AdvancedCompressionParameters(progress=False)
    f = formats(nnc.compress_weights(tiny_llama(tie=False), mode="int4_sym", group_size=32, all_layers=True,
                                     advanced_parameters=adv))
    assert f["lm_head"] == "int4_sym/32"
    f = formats(nnc.compress_weights(tiny_llama(tie=False), mode="int4_sym", group_size=32, ratio=0.5,
                                     backup_mode="none", advanced_parameters=adv))
    assert "lm_head" not in f and "model.embed_tokens" not in f
    assert set(f.values()) == {"int4_sym/32"}


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("with_data", [False, True])
def test_ratio_splits_weights_by_sensitivity(ratio: float, with_data: bool) -> None:
    model = tiny_llama()
    sizes = {n: m.weight.numel() for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n.startswith("model.layers")}
    nnc.compress_weights(model, mode="int4_asym", group_size=32, ratio=ratio,
                         dataset=samples() if with_data else None,
                         advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    f = formats(model)
    share = sum(sizes[n] for n in sizes if f[n] == "int4_asym/32") / sum(sizes.values())
    smallest = min(sizes.values()) / sum(sizes.values())
    assert abs(share - ratio) <= smallest / 2 + 1e-9
    summary = model.nncompress_weight_summary
    assert summary.metric == (None if ratio == 1.0 else
                              "hessian_input_activation" if with_data else "weight_quantization_error")


def test_ratio_keeps_the_most_sensitive_layer_in_int8() -> None:
    model = tiny_llama()
    with torch.no_grad():  # one layer with outliers that 4 bits ruin
        model.model.layers[1].mlp.down_proj.weight[:, 3] *= 40
    nnc.compress_weights(model, mode="int4_sym", group_size=32, ratio=0.9,
                         advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    assert formats(model)["model.layers.1.mlp.down_proj"] == "int8_asym"


def test_ragged_groups_ignore_and_error_fallbacks() -> None:
    adv = nnc.AdvancedCompressionParameters(progress=False)
    f = formats(nnc.compress_weights(tiny_llama(hidden=80), mode="int4_sym", group_size=32, advanced_parameters=adv))
    assert f["model.layers.0.self_attn.q_proj"] == "int4_sym/32"  # K = 80: groups 32, 32, 16
    adv_ignore = nnc.AdvancedCompressionParameters(progress=False, group_size_fallback_mode="ignore")
    f = formats(nnc.compress_weights(tiny_llama(hidden=80), mode="int4_sym", group_size=32,
                                     advanced_parameters=adv_ignore))
    assert f["model.layers.0.self_attn.q_proj"] == "int8_asym"
    assert f["model.layers.0.mlp.down_proj"] == "int4_sym/32"  # K = 160 divides
    model = tiny_llama(hidden=80)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match="not a multiple of group_size 32"):
        nnc.compress_weights(model, mode="int4_sym", group_size=32,
                             advanced_parameters=nnc.AdvancedCompressionParameters(group_size_fallback_mode="error"))
    assert not formats(model) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_ignored_scope_stays_float_and_unmatched_rule_is_an_error() -> None:
    adv = nnc.AdvancedCompressionParameters(progress=False)
    scope = nnc.IgnoredScope(names=["model.layers.0.mlp.down_proj"], patterns=[r".*\.k_proj"])
    model = nnc.compress_weights(tiny_llama(), mode="int4_sym", group_size=32, ignored_scope=scope,
                                 advanced_parameters=adv)
    f = formats(model)
    assert "model.layers.0.mlp.down_proj" not in f and not any(k.endswith("k_proj") for k in f)
    assert isinstance(model.model.layers[0].mlp.down_proj, torch.nn.Linear)
    with pytest.raises(ScopeMatchError, match="no_such_layer"):
        nnc.compress_weights(tiny_llama(), ignored_scope=nnc.IgnoredScope(names=["no_such_layer"]))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "int3"}, "mode must be one of"),
    ({"mode": "int8_asym", "group_size": 64}, "per-channel INT8"),
    ({"mode": "int8_sym", "ratio": 0.5}, "per-channel INT8"),
    ({"mode": "int4_sym", "ratio": 1.5}, r"ratio must be a number in \[0, 1\]"),
    ({"mode": "int4_sym", "group_size": 0}, "group_size must be"),
    ({"mode": "int4_sym", "awq": True}, "awq need calibration data"),
    ({"mode": "int4_sym", "gptq": True, "scale_estimation": True}, "scale_estimation, gptq need"),
    ({"mode": "int8_asym", "awq": True}, "4-bit modes only"),
    ({"mode": "nf4", "awq": True, "dataset": samples()}, "not nf4"),
    ({"mode": "int4_sym", "ratio": 0.5, "sensitivity_metric": "hessian_input_activation"}, "needs calibration"),
    ({"mode": "int4_sym", "sensitivity_metric": "bogus"}, "sensitivity_metric must be one of"),
    ({"backup_mode": "int2"}, "backup_mode must be one of"),
    ({"lora_correction": True}, "lora_correction is not supported"),
    ({"subset_size": 0}, "subset_size must be a positive int"),
    ({"dataset": [1, 2]}, "dataset must be an nncompress.Dataset"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match=match):
        nnc.compress_weights(model, **kwargs)
    assert not formats(model) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_failing_calibration_leaves_model_unchanged() -> None:
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = nnc.Dataset([{"input_ids": torch.randint(0, 128, (1, 8))}, {"input_ids": torch.full((1, 8), 999)}])
    with pytest.raises((InitDataError, IndexError, RuntimeError)):
        nnc.compress_weights(model, mode="int4_sym", group_size=32, dataset=bad, awq=True,
                             advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    assert not formats(model) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_no_weighted_layer_and_inference_mode_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="no nn.Linear"):
        nnc.compress_weights(torch.nn.ReLU())
    with torch.inference_mode(), pytest.raises(InvalidArgumentError, match="inference_mode"):
        nnc.compress_weights(tiny_llama())


@pytest.mark.parametrize("algo", [{"awq": True}, {"gptq": True}, {"awq": True, "scale_estimation": True}])
def test_data_aware_algorithms_beat_round_to_nearest(algo: dict) -> None:
    """On the calibration tokens (what the algorithms fit; a random model has no other distribution).

    Scale estimation alone fits the diagonal of each layer's input Hessian; on this random model's
    near-isotropic activations that does not carry over to the logits (it does on SmolLM2:
    ``tests/models/test_llm_weights.py``)."""
    data = samples(8, 32)
    ids = torch.cat([item["input_ids"] for item in data.get_inference_data()])

    def error(model: torch.nn.Module) -> float:
        with torch.no_grad(), exact_matmul():
            out, ref = model(ids).logits, tiny_llama()(ids).logits
        return float((out - ref).norm() / ref.norm())

    adv = nnc.AdvancedCompressionParameters(progress=False)
    rtn = error(nnc.compress_weights(tiny_llama(), mode="int4_asym", group_size=32, advanced_parameters=adv))
    model = nnc.compress_weights(tiny_llama(), mode="int4_asym", group_size=32, dataset=data,
                                 advanced_parameters=adv, **algo)
    assert error(model) < rtn
    if algo.get("awq"):
        assert any(m.input_multiplier is not None for m in model.modules() if isinstance(m, CompressedLinear))


def test_summary_counts_formats_and_bits() -> None:
    model = nnc.compress_weights(tiny_llama(), mode="int4_sym", group_size=32,
                                 advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    s = model.nncompress_weight_summary
    assert s.layers["int4_sym g32"] == 14 and s.layers["int8_asym"] == 1  # tied head counted once
    assert 4.0 < s.bits < 8.0
    assert "int4_sym g32" in str(s) and s.reasons["lm_head"].startswith("backup mode")


def test_export_model_writes_packed_onnx_and_needs_an_example(tmp_path: Path) -> None:
    model = nnc.compress_weights(tiny_llama(), mode="int4_sym", group_size=32,
                                 advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    model.config.use_cache = False
    with pytest.raises(InvalidArgumentError, match="model_args"):
        nnc.export_model(model, str(tmp_path / "m.onnx"))
    inputs = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    nnc.export_model(model, str(tmp_path / "m.onnx"), model_args=(inputs,), output_names=["logits"])
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sum(n.op_type == "MatMulNBits" for n in onnx.load(str(tmp_path / "m.onnx")).graph.node) == 14
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad(), exact_matmul():
        want = model(**inputs).logits.numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
