"""save_compressed / load_compressed round trip on a tiny random Llama with a tied LM head."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nncompress.errors import CompressionStateError, InvalidArgumentError
from nncompress.functional.weight_quant import WeightQuantSpec, quantize_weight
from nncompress.weight_compression.checkpoint import (
    compressed_layers,
    load_compressed,
    replace_module,
    save_compressed,
)
from nncompress.weight_compression.kernels import exact_matmul
from nncompress.weight_compression.modules import CompressedEmbedding, CompressedLinear

transformers = pytest.importorskip("transformers")


def tiny_llama(seed: int = 0, hidden: int = 64) -> Any:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True, use_cache=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


def compress(model: Any, mode: str = "int4_asym", group: int = 32) -> Any:
    """Linears to ``mode``/``group`` (one with an input multiplier), embedding int8, head tied."""
    emb = model.model.embed_tokens
    cemb = CompressedEmbedding.from_quantized(
        quantize_weight(emb.weight.detach(), WeightQuantSpec.from_mode("int8_asym"))
    )
    replace_module(model, "model.embed_tokens", cemb)
    replace_module(model, "lm_head", CompressedLinear.tied_to(cemb))
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name != "lm_head":
            qw = quantize_weight(m.weight.detach(), WeightQuantSpec.from_mode(mode, group))
            mult = torch.rand(m.in_features) + 0.5 if name.endswith("up_proj") else None
            replace_module(model, name, CompressedLinear.from_quantized(qw, m.bias, mult))
    return model


def float_size(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    float_bytes = float_size(tiny_llama())
    model = compress(tiny_llama())
    path = tmp_path / "llama.pt"
    save_compressed(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["llama.pt"]  # no temporary file left
    loaded: Any = load_compressed(tiny_llama(seed=1), path)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        with exact_matmul():
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(loaded(ids[:, :1]).logits, model(ids[:, :1]).logits, rtol=0, atol=0)
    assert compressed_layers(loaded) == compressed_layers(model)
    head, emb = loaded.lm_head, loaded.model.embed_tokens
    assert isinstance(head, CompressedLinear) and isinstance(emb, CompressedEmbedding)
    assert head.weight_packed is emb.weight_packed and head.scale is emb.scale
    assert loaded.model.layers[0].mlp.up_proj.input_multiplier is not None
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    assert state["lm_head.weight_packed"].untyped_storage().data_ptr() == (
        state["model.embed_tokens.weight_packed"].untyped_storage().data_ptr()
    )
    assert path.stat().st_size < 0.3 * float_bytes  # int4 linears, int8 embedding written once


def test_metadata_lists_every_compressed_module() -> None:
    entries = {e["name"]: e for e in compressed_layers(compress(tiny_llama()))}
    assert len(entries) == 2 + 2 * 7
    assert entries["lm_head"]["tied_to"] == "model.embed_tokens"
    assert entries["model.embed_tokens"]["kind"] == "embedding"
    up = entries["model.layers.1.mlp.up_proj"]
    assert (up["mode"], up["group_size"], up["in_features"], up["out_features"]) == ("int4_asym", 32, 64, 128)
    assert up["has_input_multiplier"] and not entries["model.layers.1.mlp.down_proj"]["has_input_multiplier"]


def test_errors_leave_the_model_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_compressed(compress(tiny_llama()), path)
    fresh = tiny_llama(seed=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    wider = tiny_llama(hidden=80)
    with pytest.raises(CompressionStateError, match="model.embed_tokens"):
        load_compressed(wider, path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CompressionStateError, match="not a"):
        load_compressed(fresh, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CompressionStateError, match="not a readable"):
        load_compressed(fresh, tmp_path / "junk.pt")
    fresh.model.layers = fresh.model.layers[:1]
    with pytest.raises(CompressionStateError, match="model.layers.1"):
        load_compressed(fresh, path)
    for m in (fresh, wider):
        assert not any(isinstance(x, (CompressedLinear, CompressedEmbedding)) for x in m.modules())
    after = fresh.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after)


def test_shape_mismatch_in_the_file_is_refused(tmp_path: Path) -> None:
    model = compress(tiny_llama())
    path = tmp_path / "c.pt"
    save_compressed(model, path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["model.layers.0.mlp.up_proj.scale"] = torch.ones(128, 3)
    torch.save(payload, path)
    fresh = tiny_llama()
    with pytest.raises(CompressionStateError, match="up_proj.scale"):
        load_compressed(fresh, path)
    assert isinstance(fresh.model.embed_tokens, nn.Embedding)


def test_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = compress(tiny_llama())
    path = tmp_path / "c.pt"

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgumentError, match="no CompressedLinear"):
        save_compressed(tiny_llama(), path)


def test_replace_module_by_dotted_name() -> None:
    model = tiny_llama()
    new = nn.Identity()
    replace_module(model, "model.layers.1.mlp", new)
    assert model.model.layers[1].mlp is new
    with pytest.raises(InvalidArgumentError, match="model.nope"):
        replace_module(model, "model.nope.x", new)
