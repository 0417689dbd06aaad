"""CompressedLinear / CompressedEmbedding against a float64 reference; kernel path within its bound."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import (
    MODES,
    QuantizedWeight,
    WeightQuantSpec,
    dequantize_codes,
    dequantize_weight,
    quantize_weight,
)
from nncompress.weight_compression.kernels import MAX_KERNEL_ROWS, exact_matmul
from nncompress.weight_compression.modules import (
    CompressedEmbedding,
    CompressedLinear,
    dequantize_packed,
    pack_codes,
    unpack_codes,
)

GROUPS = (-1, 32, 64, 128)
#: Fast-path bound: ``|y - y_ref| <= KERNEL_BOUND * (|x| @ r.T)`` (see the kernels module doc).
KERNEL_BOUND = 2.0**-6
#: Exact float32 path: ``|y - y_ref| <= EXACT_BOUND * (|x| @ |W|.T)`` (float32 accumulation).
EXACT_BOUND = 1e-5


def make(mode: str, group: int, n: int = 48, k: int = 576, seed: int = 0) -> tuple[QuantizedWeight, Tensor, Tensor]:
    """A quantized weight, a bias and an input multiplier."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    qw = quantize_weight(w, WeightQuantSpec.from_mode(mode, group))
    return qw, torch.randn(n, generator=g), torch.rand(k, generator=g) + 0.5


def reference(x: Tensor, qw: QuantizedWeight, bias: Tensor | None, mult: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(y, |x'| @ |W|.T)`` in float64, ``x' = x * mult``."""
    w = dequantize_weight(QuantizedWeight(qw.codes, qw.scale.double(), qw.zero_point, qw.spec, qw.in_features))
    xm = x.double() * (1 if mult is None else mult.double())
    y = xm @ w.T + (0 if bias is None else bias.double())
    return y, xm.abs() @ w.abs().T


def kernel_reads(qw: QuantizedWeight) -> Tensor:
    """``r`` ``[N, K]``: the magnitudes the kernel reads (kernels module doc)."""
    w = dequantize_weight(QuantizedWeight(qw.codes, qw.scale.double(), qw.zero_point, qw.spec, qw.in_features))
    r = w.abs()
    if qw.zero_point is not None:
        shift = 128 if qw.spec.bits == 8 else 8
        s = qw.scale.double().repeat_interleave(qw.group_size, dim=1)[:, : qw.in_features]
        z = qw.zero_point.double().repeat_interleave(qw.group_size, dim=1)[:, : qw.in_features]
        r = r + ((z - shift) * s).abs()
        if qw.spec.bits == 8:
            r = r + ((qw.codes[:, : qw.in_features].double() - shift) * s).abs()
    return r


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", GROUPS)
def test_exact_path_matches_float64_reference(mode: str, group: int) -> None:
    qw, bias, mult = make(mode, group)
    layer = CompressedLinear.from_quantized(qw, bias, mult)
    x = torch.randn(2, 20, 576)  # 3-D, 40 rows: above MAX_KERNEL_ROWS, so the exact path
    y_ref, scale = reference(x, qw, bias, mult)
    assert ((layer(x).double() - y_ref).abs() <= EXACT_BOUND * scale + 1e-6).all()
    with exact_matmul():
        y = layer(x[:, :1])
    assert ((y.double() - y_ref[:, :1]).abs() <= EXACT_BOUND * scale[:, :1] + 1e-6).all()
    y64 = layer(x.double())  # float64 input: dequantized and multiplied in float64
    torch.testing.assert_close(y64, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", GROUPS)
def test_kernel_path_within_bfloat16_bound(mode: str, group: int) -> None:
    qw, bias, mult = make(mode, group)
    layer = CompressedLinear.from_quantized(qw, bias, mult)
    x = torch.randn(3, 1, 576)
    kernel = layer._fast_weights(x)
    fast = mode in ("int4_sym", "int4_asym") or (mode.startswith("int8") and group == -1)
    assert (kernel is not None) == fast
    y_ref, _ = reference(x, qw, bias, mult)
    bound = (x.double() * mult.double()).abs() @ kernel_reads(qw).T
    y = layer(x)
    assert y.shape == (3, 1, 48) and y.dtype == torch.float32
    assert ((y.double() - y_ref).abs() <= KERNEL_BOUND * bound + 1e-6).all()
    if not fast:
        torch.testing.assert_close(y, layer.float()(x.double()).float(), rtol=1e-5, atol=1e-5)


def test_kernel_switches_give_exact_path() -> None:
    qw, bias, mult = make("int4_sym", 32)
    layer = CompressedLinear.from_quantized(qw, bias, mult)
    x = torch.randn(1, 576)
    many = torch.cat([x, torch.randn(MAX_KERNEL_ROWS, 576)])  # over the threshold: exact
    fast = layer(x)
    with exact_matmul():
        exact = layer(x)
    assert not torch.equal(fast, exact)
    torch.testing.assert_close(layer(many)[:1], exact, rtol=1e-5, atol=1e-4)  # GEMM blocking differs
    layer.kernel = "exact"
    assert torch.equal(layer(x), exact)
    layer.kernel = "auto"
    assert torch.equal(layer(x), fast)
    with pytest.raises(InvalidArgumentError, match="kernel"):
        layer.kernel = "fast"


def test_kernel_layout_rebuilt_after_load_state_dict() -> None:
    a = CompressedLinear.from_quantized(make("int8_asym", -1, seed=1)[0])
    b = CompressedLinear.from_quantized(make("int8_asym", -1, seed=2)[0])
    x = torch.randn(1, 576)
    before = a(x)
    a.load_state_dict(b.state_dict())
    assert not torch.equal(a(x), before)
    assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == {"weight_packed", "scale", "zero_point"}


def test_autograd_input_uses_exact_path() -> None:
    qw, bias, mult = make("int4_asym", 64)
    layer = CompressedLinear.from_quantized(qw, bias, mult)
    x = torch.randn(1, 576, requires_grad=True)
    layer(x).sum().backward()
    w = dequantize_weight(qw)
    assert x.grad is not None
    torch.testing.assert_close(x.grad[0], w.sum(0) * mult)


def test_buffers_follow_the_contract() -> None:
    qw, bias, _ = make("int4_sym", 128)  # K = 576 -> 5 groups of 128, Kp = 640
    layer = CompressedLinear.from_quantized(qw, bias)
    assert layer.weight_packed.dtype == torch.uint8 and layer.weight_packed.shape == (48, 320)
    assert layer.scale.dtype == torch.float32 and layer.scale.shape == (48, 5)
    assert layer.zero_point is None and layer.input_multiplier is None
    assert (layer.in_features, layer.out_features, layer.group_size) == (576, 48, 128)
    assert "mode=int4_sym" in repr(layer) and "group_size=128" in repr(layer)
    qa = make("int8_asym", -1)[0]
    la = CompressedLinear.from_quantized(qa)
    assert la.weight_packed.dtype == torch.uint8 and la.zero_point is not None
    assert la.zero_point.dtype == torch.uint8
    torch.testing.assert_close(la.dequantized_weight(), dequantize_weight(qa))


def test_bad_shapes_raise() -> None:
    qw, bias, mult = make("int8_sym", -1)
    with pytest.raises(InvalidArgumentError, match="bias"):
        CompressedLinear.from_quantized(qw, bias[:3])
    with pytest.raises(InvalidArgumentError, match="input_multiplier"):
        CompressedLinear.from_quantized(qw, None, mult[:3])


@pytest.mark.parametrize("mode", MODES)
@given(n=st.integers(1, 6), cols=st.integers(1, 41))
@settings(max_examples=15, deadline=None)
def test_pack_unpack_round_trip(mode: str, n: int, cols: int) -> None:
    spec = WeightQuantSpec.from_mode(mode)
    lo, hi = spec.code_range
    codes = torch.randint(lo, hi + 1, (n, cols), dtype=torch.int16)
    packed = pack_codes(codes, spec)
    assert packed.shape == (n, cols if spec.bits == 8 else (cols + 1) // 2)
    assert torch.equal(unpack_codes(packed, spec, cols), codes)


@pytest.mark.parametrize("mode", MODES)
@given(n=st.integers(1, 6), k=st.integers(1, 70), group=st.sampled_from((-1, 16, 32)), seed=st.integers(0, 99))
@settings(max_examples=15, deadline=None)
def test_dequantize_packed_is_bit_exact(mode: str, n: int, k: int, group: int, seed: int) -> None:
    qw = make(mode, group, n, k, seed)[0]
    zp = None if qw.zero_point is None else qw.zero_point.to(torch.uint8)
    for dtype in (torch.float32, torch.float64):
        want = dequantize_codes(qw.codes, qw.scale.to(dtype), qw.zero_point, qw.spec, qw.codes.shape[1])
        got = dequantize_packed(pack_codes(qw.codes, qw.spec), qw.scale, zp, qw.spec, qw.codes.shape[1], dtype)
        assert got.dtype == dtype and torch.equal(got, want)


@given(
    n=st.integers(1, 40), k=st.integers(1, 100), rows=st.integers(1, 20),
    mode=st.sampled_from(MODES), group=st.sampled_from((-1, 32, 64)), seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_any_shape_within_bounds(n: int, k: int, rows: int, mode: str, group: int, seed: int) -> None:
    qw, bias, mult = make(mode, group, n, k, seed)
    layer = CompressedLinear.from_quantized(qw, bias, mult)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    y_ref, scale = reference(x, qw, bias, mult)
    bound = (x.double() * mult.double()).abs() @ kernel_reads(qw).T
    assert ((layer(x).double() - y_ref).abs() <= KERNEL_BOUND * bound + 1e-6).all()
    with exact_matmul():
        assert ((layer(x).double() - y_ref).abs() <= EXACT_BOUND * scale + 1e-6).all()


@pytest.mark.parametrize("mode", MODES)
def test_embedding_gathers_dequantized_rows(mode: str) -> None:
    w = torch.randn(100, 40)
    qw = quantize_weight(w, WeightQuantSpec.from_mode(mode))
    emb = CompressedEmbedding.from_quantized(qw, padding_idx=0)
    ids = torch.tensor([[0, 5, 99], [7, 7, 1]])
    assert torch.equal(emb(ids), F.embedding(ids, dequantize_weight(qw)))
    assert (emb.num_embeddings, emb.embedding_dim, emb.padding_idx) == (100, 40, 0)
    assert "padding_idx=0" in repr(emb)


def tied_pair(head_first: bool) -> tuple[nn.ModuleDict, CompressedEmbedding, CompressedLinear]:
    qw = quantize_weight(torch.randn(64, 32), WeightQuantSpec.from_mode("int8_asym"))
    emb = CompressedEmbedding.from_quantized(qw)
    head = CompressedLinear.tied_to(emb, torch.randn(64))
    pairs = [("head", head), ("emb", emb)] if head_first else [("emb", emb), ("head", head)]
    return nn.ModuleDict(dict(pairs)), emb, head


@pytest.mark.parametrize("head_first", [False, True])
def test_tied_head_shares_the_embedding_buffers(head_first: bool) -> None:
    model, emb, head = tied_pair(head_first)
    for name in ("weight_packed", "scale", "zero_point"):
        assert getattr(head, name) is getattr(emb, name)
    x = torch.randn(2, 32)
    y_ref, _ = reference(x, emb.quantized_weight(), head.bias, None)
    with exact_matmul():
        torch.testing.assert_close(head(x).double(), y_ref, rtol=1e-5, atol=1e-5)
    model.to(torch.float64)  # nn.Module._apply replaces buffers: the tie must survive
    assert head.scale is emb.scale and emb.scale.dtype == torch.float64
    assert head.weight_packed is emb.weight_packed and head.tied and not emb.tied
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["head.weight_packed"].untyped_storage().data_ptr() == (
        state["emb.weight_packed"].untyped_storage().data_ptr()
    )
    model.load_state_dict(state)
    assert head.weight_packed is emb.weight_packed
