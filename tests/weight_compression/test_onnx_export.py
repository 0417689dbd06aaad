"""ONNX export of weight-compressed models: onnxruntime agrees with PyTorch, weights stay packed.

Reference: the compressed PyTorch model in exact mode (dequantize, then ``F.linear`` in float32).
``MatMulNBits`` with ``accuracy_level=0`` and the dequantize routes compute the same float weights,
so logits agree to float32 summation-order error: bound ``1e-4`` relative to the largest logit.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nncompress.errors import ExportError, InvalidArgumentError
from nncompress.functional.weight_quant import WeightQuantSpec, dequantize_weight, quantize_weight
from nncompress.torch.export import export_onnx
from nncompress.weight_compression import onnx_export
from nncompress.weight_compression.kernels import exact_matmul
from nncompress.weight_compression.modules import CompressedEmbedding, CompressedLinear
from nncompress.weight_compression.onnx_export import export_compressed_onnx

transformers = pytest.importorskip("transformers")

REL_TOL = 1e-4


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    # onnxruntime fuses DequantizeLinear + MatMul into MatMulNBits with int8 compute unless told not to
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def _weight_bytes(path: Path) -> int:
    return sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer)


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


class _Logits(nn.Module):
    """A causal LM as ``(input_ids, attention_mask) -> logits`` (the mask avoids ``aten::diff``)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _llama(hidden: int) -> Any:
    cfg = transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True, use_cache=False,
        max_position_embeddings=64, attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _compress(lm: Any, mode_of: dict[str, tuple[str, int]], multiplier_on: str | None = None) -> None:
    """Replace the decoder linears (mode by name suffix), the embedding and the tied head (int8_asym)."""
    gen = torch.Generator().manual_seed(1)
    for name, module in list(lm.model.layers.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        mode, g = mode_of[name.rsplit(".", 1)[-1]]
        qw = quantize_weight(module.weight.detach(), WeightQuantSpec.from_mode(mode, g))
        im = torch.rand(module.in_features, generator=gen) + 0.5 if name == multiplier_on else None
        parent = lm.model.layers.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[-1], CompressedLinear.from_quantized(qw, module.bias, im))
    emb_q = quantize_weight(lm.model.embed_tokens.weight.detach(), WeightQuantSpec.from_mode("int8_asym", -1))
    lm.model.embed_tokens = CompressedEmbedding.from_quantized(emb_q)
    lm.lm_head = CompressedLinear.tied_to(lm.model.embed_tokens)


INT4_MIX = {
    "q_proj": ("int4_sym", 32), "k_proj": ("int4_sym", 32), "v_proj": ("int4_sym", 32), "o_proj": ("int4_sym", 32),
    "gate_proj": ("int4_asym", 32), "up_proj": ("int4_asym", 32), "down_proj": ("int4_asym", 32),
}
N_LINEARS = 2 * 7 + 1  # two decoder layers of seven linears, and the LM head


def _inputs(batch: int = 2, seq: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def _check_logits(model: nn.Module, path: Path) -> float:
    ids, mask = _inputs(batch=3, seed=1)  # another batch size than the export's
    y = _session(path).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad(), exact_matmul():
        ref = model(ids, mask).numpy()
    return _rel_err(y, ref)


def _export(model: nn.Module, path: Path, **kw: object) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_compressed_onnx(model, (_inputs(), {}), path, input_names=["input_ids", "attention_mask"],
                                      output_names=["logits"], **kw)  # type: ignore[arg-type]


def test_llama_matmulnbits_matches_pytorch_and_is_small(tmp_path: Path) -> None:
    float_path = tmp_path / "fp32.onnx"
    lm = _llama(64)
    export_onnx(_Logits(lm), (_inputs(), {}), float_path, input_names=["input_ids", "attention_mask"])
    _compress(lm, INT4_MIX, multiplier_on="0.mlp.down_proj")
    model = _Logits(lm).eval()
    path = tmp_path / "int4.onnx"
    counts = _export(model, path)
    # the int8 head takes the decode route at accuracy_level 0 (8-bit MatMulNBits is slow in float)
    assert counts == {"matmulnbits": N_LINEARS - 1, "dequantize_linear": 0, "decode": 1, "embedding": 1}
    assert _ops(path).count("MatMulNBits") == N_LINEARS - 1
    assert _check_logits(model, path) < REL_TOL
    # the tied head and the embedding read one B initializer; nothing float of weight size is left
    graph = onnx.load(str(path)).graph
    assert sum(list(i.dims) == [128, 1, 64] for i in graph.initializer) == 1
    # weights: 56 kB against 361 kB in float32 (4.5 bits a weight for int4 g32, 8.5 for the int8 head);
    # the file also holds ~98 kB of graph (nodes, names), the same in both at this tiny size
    assert _weight_bytes(path) < 0.2 * _weight_bytes(float_path)
    assert path.stat().st_size < 0.4 * float_path.stat().st_size
    assert all("forward" not in m.__dict__ for m in lm.modules())  # the layers' forward is back


def test_llama_ragged_groups_and_int8_per_channel(tmp_path: Path) -> None:
    lm = _llama(80)  # K = 80 = 2 * 32 + 16: the last group of 32 is ragged
    modes = {k: ("int4_sym", 32) for k in INT4_MIX} | {"down_proj": ("int8_asym", -1), "up_proj": ("int8_sym", -1)}
    _compress(lm, modes, multiplier_on="1.self_attn.q_proj")
    model = _Logits(lm).eval()
    path = tmp_path / "ragged.onnx"
    assert _export(model, path) == {"matmulnbits": 10, "dequantize_linear": 0, "decode": 5, "embedding": 1}
    assert _check_logits(model, path) < REL_TOL


@pytest.mark.parametrize(("mode", "g", "k", "block"), [
    ("int8_asym", -1, 80, 16),  # per channel: five blocks of 16 take fewer bytes than one of 128
    ("int8_sym", -1, 96, 32),
    ("int8_asym", -1, 128, 128),
    ("int8_sym", 48, 96, 16),  # groups of 48 read as three blocks of 16, the scale repeated
    ("int8_asym", 32, 80, 32),  # ragged last group
    ("int4_asym", -1, 40, 64),  # per channel, 4 bits: one padded block of 64 is smaller
])
def test_int8_matmulnbits_at_accuracy_level_4(mode: str, g: int, k: int, block: int, tmp_path: Path) -> None:
    model = _tiny(mode, g, k, 24, bias=True)
    path = tmp_path / "m.onnx"
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(3))
    assert export_compressed_onnx(model, x, path, accuracy_level=4, input_names=["x"])["matmulnbits"] == 1
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute}["block_size"] == block
    with exact_matmul(), torch.no_grad():
        ref = model(x).numpy()
    assert _rel_err(_session(path).run(None, {"x": x.numpy()})[0], ref) < 2e-2  # int8 activations


def test_llama_dequantize_linear_opset21(tmp_path: Path) -> None:
    lm = _llama(64)
    _compress(lm, INT4_MIX | {"o_proj": ("int8_sym", 32)}, multiplier_on="0.self_attn.v_proj")
    model = _Logits(lm).eval()
    path = tmp_path / "dq.onnx"
    counts = _export(model, path, opset=21, prefer="dequantize_linear")
    assert counts["dequantize_linear"] == N_LINEARS and counts["matmulnbits"] == 0
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [21]
    assert all(n.domain == "" for n in proto.graph.node)  # standard ONNX only
    kinds = {i.data_type for i in proto.graph.initializer}
    assert {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.INT8} <= kinds
    onnx.checker.check_model(proto, full_check=True)
    assert _check_logits(model, path) < REL_TOL


def test_dequantize_linear_int4_needs_opset21(tmp_path: Path) -> None:
    lm = _llama(64)
    _compress(lm, INT4_MIX)
    path = tmp_path / "dq.onnx"
    with pytest.raises(ExportError, match="opset 21"):
        _export(_Logits(lm), path, opset=17, prefer="dequantize_linear")
    assert not path.exists()


def test_llama_without_attention_mask_says_to_pass_one(tmp_path: Path) -> None:
    lm = _llama(64)
    _compress(lm, INT4_MIX)
    with pytest.raises(ExportError, match=r"m\.onnx' failed: .*aten::diff.*attention_mask"):
        export_compressed_onnx(lm, {"input_ids": _inputs()[0]}, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def _tiny(mode: str, g: int, k: int, n: int, bias: bool, seed: int = 0) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    qw = quantize_weight(torch.randn(n, k, generator=gen), WeightQuantSpec.from_mode(mode, g))
    b = torch.randn(n, generator=gen) if bias else None
    return nn.Sequential(CompressedLinear.from_quantized(qw, b)).eval()


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(["int4_sym", "int4_asym", "int8_sym", "int8_asym", "nf4"]),
    g=st.sampled_from([-1, 16, 24, 32, 48, 64]),
    k=st.integers(8, 100),
    n=st.integers(1, 20),
    bias=st.booleans(),
    prefer=st.sampled_from(["matmulnbits", "dequantize_linear"]),
)
def test_one_linear_matches_float64_reference(mode: str, g: int, k: int, n: int, bias: bool, prefer: str,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    model = _tiny(mode, g, k, n, bias)
    layer = model[0]
    assert isinstance(layer, CompressedLinear)
    path = tmp_path_factory.mktemp("one") / "m.onnx"
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_compressed_onnx(model, x, path, opset=21, prefer=prefer, input_names=["x"])
    y = _session(path).run(None, {"x": x.numpy()})[0]
    w = dequantize_weight(layer.quantized_weight()).double()
    ref = x.double() @ w.T + (layer.bias.double() if layer.bias is not None else 0)
    err = np.abs(y - ref.numpy()).max()
    assert err <= 1e-5 * (x.double().abs() @ w.abs().T).max().item() + 1e-6


def test_routes_of_nf4_odd_groups_and_int8(tmp_path: Path) -> None:
    cases = [("nf4", 32, "decode"), ("int4_sym", 24, "decode"), ("int8_asym", 48, "decode"),
             ("int4_asym", 48, "matmulnbits")]
    for mode, g, route in cases:
        model = _tiny(mode, g, 96, 8, bias=True)
        path = tmp_path / f"{mode}_{g}.onnx"
        counts = export_compressed_onnx(model, torch.randn(2, 96), path, input_names=["x"])
        assert counts[route] == 1, (mode, g, counts)
        assert ("MatMulNBits" in _ops(path)) == (route == "matmulnbits")


def test_accuracy_level_4_is_set_and_close(tmp_path: Path) -> None:
    model = _tiny("int4_asym", 32, 128, 64, bias=False)
    path = tmp_path / "acc4.onnx"
    x = torch.randn(4, 128)
    export_compressed_onnx(model, x, path, accuracy_level=4, input_names=["x"])
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute}["accuracy_level"] == 4
    with exact_matmul(), torch.no_grad():
        ref = model(x).numpy()
    assert _rel_err(_session(path).run(None, {"x": x.numpy()})[0], ref) < 2e-2  # int8 activations


def test_embedding_alone_any_mode(tmp_path: Path) -> None:
    for mode, g in [("int8_sym", -1), ("int4_asym", 16), ("nf4", 32)]:
        qw = quantize_weight(torch.randn(50, 40), WeightQuantSpec.from_mode(mode, g))
        emb = CompressedEmbedding.from_quantized(qw).eval()
        ids = torch.randint(0, 50, (2, 3, 4))
        path = tmp_path / f"emb_{mode}.onnx"
        assert export_compressed_onnx(nn.Sequential(emb), ids, path, input_names=["ids"])["embedding"] == 1
        y = _session(path).run(None, {"ids": ids.numpy()})[0]
        assert y.shape == (2, 3, 4, 40)
        np.testing.assert_array_equal(y, emb(ids).numpy())


def test_large_weights_go_to_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1000)
    model = _tiny("int4_sym", 32, 256, 64, bias=False)
    x = torch.randn(2, 256)
    path = tmp_path / "sub" / "big.onnx"
    export_compressed_onnx(model, x, path, input_names=["x"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert (path.parent / "big.onnx.data").stat().st_size > 8000
    with exact_matmul(), torch.no_grad():
        ref = model(x).numpy()
    assert _rel_err(_session(path).run(None, {"x": x.numpy()})[0], ref) < REL_TOL


def test_bad_arguments(tmp_path: Path) -> None:
    model = _tiny("int4_sym", 32, 64, 8, bias=False)
    x = torch.randn(1, 64)
    with pytest.raises(InvalidArgumentError, match="prefer"):
        export_compressed_onnx(model, x, tmp_path / "a.onnx", prefer="gguf")
    with pytest.raises(InvalidArgumentError, match="opset"):
        export_compressed_onnx(model, x, tmp_path / "a.onnx", opset=11)
    with pytest.raises(InvalidArgumentError, match="accuracy_level"):
        export_compressed_onnx(model, x, tmp_path / "a.onnx", accuracy_level=7)
    with pytest.raises(InvalidArgumentError, match="example_inputs"):
        export_compressed_onnx(model, "x", tmp_path / "a.onnx")
    with pytest.raises(InvalidArgumentError, match="float32 models"):
        export_compressed_onnx(nn.Sequential(model, nn.LayerNorm(8).half()), x, tmp_path / "a.onnx")
    assert list(tmp_path.iterdir()) == []
