"""``nnc.quantize`` mechanics on small models: placement, SmoothQuant, bias correction, errors, export."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.algorithms.quantization.quantizers import FakeQuantizer
from nncompress.errors import InitDataError, InvalidArgumentError, ScopeMatchError
from nncompress.functional.smoothing import smooth_quant_scales
from nncompress.ptq.dataset import take_samples
from nncompress.ptq.smooth_quant import ChannelScale
from nncompress.torch.runtime import get_runtime
from tests.model_zoo import ResidualCNN

QUIET = nnc.AdvancedQuantizationParameters(progress=False)


class TinyBlock(nn.Module):
    """Pre-LN transformer block with explicit attention (softmax + matmuls)."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, d/H)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)  # (B, H, T, T)
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(TinyBlock(d), TinyBlock(d))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.blocks(self.embed(ids))).mean(1))


def _images(n: int = 6, batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 8, 8, generator=gen) for _ in range(n)]


def _tokens(n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (2, 7), generator=gen) for _ in range(n)]


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return ResidualCNN().eval()


@pytest.fixture(scope="module")
def transformer() -> nn.Module:
    torch.manual_seed(0)
    return TinyTransformer().eval()


def _quantizers(model: nn.Module) -> list[FakeQuantizer]:
    return [m for m in model.modules() if isinstance(m, FakeQuantizer)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_quantize_returns_a_quantized_copy_and_leaves_the_model_alone(cnn: nn.Module) -> None:
    before = _state(cnn)
    q = nnc.quantize(cnn, _images(), subset_size=48, advanced_parameters=QUIET)
    assert q is not cnn and type(q) is type(cnn) and get_runtime(cnn) is None
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    qs = _quantizers(q)
    assert qs and all(bool(x.initialized) for x in qs)
    x = _images(1, seed=1)[0]
    with torch.no_grad():
        ref, out = cnn(x), q(x)
    assert not torch.equal(ref, out) and float((out - ref).norm() / ref.norm()) < 0.05


def test_quantize_places_what_quantization_aware_training_places(cnn: nn.Module) -> None:
    q = nnc.quantize(cnn, _images(), advanced_parameters=QUIET)
    ctrl, _ = nnc.create_compressed_model(copy.deepcopy(cnn), {"compression": {"algorithm": "quantization"}},
                                          init_data=_images(), example_input=_images(1)[0])
    assert [x.name for x in _quantizers(q)] == [x.name for x in ctrl.quantizers]  # type: ignore[attr-defined]


def test_subset_size_counts_samples_not_items() -> None:
    samples, count = take_samples(nnc.Dataset(_images(6, batch=4)), 10)
    assert len(samples) == 3 and count == 12


def test_inplace_quantizes_the_given_model(cnn: nn.Module) -> None:
    model = copy.deepcopy(cnn)
    q = nnc.quantize(model, _images(), advanced_parameters=nnc.AdvancedQuantizationParameters(inplace=True,
                                                                                               progress=False))
    assert q is model and get_runtime(model) is not None


def test_failure_in_place_restores_the_model(cnn: nn.Module) -> None:
    model = copy.deepcopy(cnn)
    before = _state(model)
    bad = _images(2) + [torch.full((8, 1, 8, 8), float("nan"))]
    with pytest.raises(InitDataError, match="NaN"):
        nnc.quantize(model, bad, advanced_parameters=nnc.AdvancedQuantizationParameters(inplace=True, progress=False))
    assert get_runtime(model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"subset_size": 0}, InvalidArgumentError, "subset_size must be a positive integer, got 0"),
    ({"subset_size": -3}, InvalidArgumentError, "got -3"),
    ({"subset_size": True}, InvalidArgumentError, "got True"),
    ({"preset": "turbo"}, InvalidArgumentError, "preset must be one of"),
    ({"model_type": "llm"}, InvalidArgumentError, "model_type must be one of.*'llm'"),
    ({"target_device": "TPU"}, InvalidArgumentError, "target_device must be one of"),
    ({"ignored_scope": ["fc"]}, InvalidArgumentError, "ignored_scope must be an IgnoredScope"),
    ({"advanced_parameters": {"inplace": True}}, InvalidArgumentError, "advanced_parameters must be"),
    ({"ignored_scope": nnc.IgnoredScope(names=["head"])}, ScopeMatchError, "'head' matches no operation"),
])
def test_bad_arguments_raise_clear_errors(cnn: nn.Module, kwargs, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        nnc.quantize(cnn, _images(), **kwargs)


@pytest.mark.parametrize(("data", "match"), [
    ([], "calibration_dataset is empty"),
    ([torch.randn(2, 3, 8, 8)], "calibration item 0 does not fit the model"),
    (_images(2) + [torch.randn(2, 5, 8, 8)], "calibration item 2 does not fit the model"),
    ([object()], "calibration item 0: cannot take model inputs"),
])
def test_bad_calibration_data_is_named(cnn: nn.Module, data, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InitDataError, match=match):
        nnc.quantize(cnn, data, advanced_parameters=QUIET)


def test_nan_activation_names_the_op() -> None:
    class LogNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.log(x)).mean(dim=(2, 3))

    data = [torch.rand(4, 1, 8, 8) + 0.1, torch.randn(4, 1, 8, 8)]  # the log of the second is NaN
    with pytest.raises(InitDataError, match=r"LogNet/log_0 contain NaN"):
        nnc.quantize(LogNet(), data, advanced_parameters=QUIET)


def test_ignored_scope_leaves_ops_in_float(cnn: nn.Module) -> None:
    q = nnc.quantize(cnn, _images(), ignored_scope=nnc.IgnoredScope(types=["linear"]), advanced_parameters=QUIET)
    names = [x.name for x in _quantizers(q)]
    assert names and not any("Linear[fc]" in n for n in names)
    rows = [r for r in nnc.compression_controller(q).capture_report.rows if "Linear[fc]" in r.op]
    assert rows and all(not r.compressed and "ignored type" in r.reason for r in rows)


def test_cnn_is_not_a_transformer_and_quantizes_residual_adds(cnn: nn.Module) -> None:
    q = nnc.quantize(cnn, _images(), advanced_parameters=QUIET)
    rows = nnc.compression_controller(q).capture_report.rows
    assert any(r.compressed and "/add_" in r.op for r in rows)
    assert not any(isinstance(m, ChannelScale) for m in q.modules())


def test_transformer_placement_leaves_adds_and_attention_in_float(transformer: nn.Module) -> None:
    q = nnc.quantize(transformer, _tokens(), advanced_parameters=QUIET)  # detected
    rows = nnc.compression_controller(q).capture_report.rows
    adds = [r for r in rows if "/add_" in r.op]
    matmuls = [r for r in rows if "/matmul_" in r.op]
    assert adds and all(not r.compressed and "residual add" in r.reason for r in adds)
    assert matmuls and all(not r.compressed and "attention" in r.reason for r in matmuls)
    scales = [m for m in q.modules() if isinstance(m, ChannelScale)]
    # q, k, v, out, ff1, ff2 per block, and the head: every linear reading an activation
    assert len(scales) == 2 * 6 + 1
    assert all(not torch.equal(s.factor, torch.ones_like(s.factor)) for s in scales)
    assert all(not s.batch_min and not s.batch_max and not s.collecting for s in scales)  # statistics dropped
    with_mm = nnc.quantize(transformer, _tokens(), advanced_parameters=nnc.AdvancedQuantizationParameters(
        quantize_attention_matmuls=True, progress=False))
    rows = nnc.compression_controller(with_mm).capture_report.rows
    assert all(r.compressed for r in rows if "/matmul_" in r.op)


def test_smoothing_alone_keeps_the_output(transformer: nn.Module) -> None:
    q = nnc.quantize(transformer, _tokens(), model_type=nnc.ModelType.TRANSFORMER, fast_bias_correction=False,
                     advanced_parameters=QUIET)
    for x in _quantizers(q):
        x.enabled = False
    ids = _tokens(1, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(q(ids), transformer(ids), rtol=1e-4, atol=1e-5)


def test_smoothquant_can_be_switched_off(transformer: nn.Module) -> None:
    q = nnc.quantize(transformer, _tokens(), model_type="transformer",
                     advanced_parameters=nnc.AdvancedQuantizationParameters(smooth_quant_alpha=None, progress=False))
    assert not any(isinstance(m, ChannelScale) for m in q.modules())


@pytest.mark.parametrize("estimator", ["mean_min_max", "percentile", "mean_percentile"])
def test_every_estimator_initialises_every_quantizer(transformer: nn.Module, estimator: str) -> None:
    q = nnc.quantize(transformer, _tokens(), advanced_parameters=nnc.AdvancedQuantizationParameters(
        activations_range_estimator=estimator, progress=False))
    assert all(bool(x.initialized) for x in _quantizers(q))


def test_bias_correction_changes_biases_and_batchnorm_means(cnn: nn.Module) -> None:
    on = nnc.quantize(cnn, _images(), advanced_parameters=QUIET)
    off = nnc.quantize(cnn, _images(), fast_bias_correction=False, advanced_parameters=QUIET)
    assert not torch.equal(on.fc.bias, off.fc.bias)
    assert not torch.equal(on.blocks[0].bn1.running_mean, off.blocks[0].bn1.running_mean)
    assert torch.equal(off.fc.bias, cnn.fc.bias)


def test_quantized_model_trains_further_and_strips(cnn: nn.Module) -> None:
    q = nnc.quantize(cnn, _images(), advanced_parameters=QUIET)
    ctrl = nnc.compression_controller(q)
    q.train()
    loss = q(_images(1)[0]).square().mean() + ctrl.loss()
    loss.backward()
    assert all(x.scale.grad is not None for x in _quantizers(q))
    stripped = nnc.strip(q)
    assert get_runtime(q) is not None and not any(isinstance(m, FakeQuantizer) for m in stripped.modules())
    with pytest.raises(InvalidArgumentError, match="no compression controller"):
        nnc.compression_controller(copy.deepcopy(q))


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_onnx_export_runs_in_onnxruntime_like_pytorch(which: str, cnn: nn.Module, transformer: nn.Module,
                                                      tmp_path: Path) -> None:
    model, data = (cnn, _images()) if which == "cnn" else (transformer, _tokens())
    q = nnc.quantize(model, data, advanced_parameters=QUIET).eval()
    path = tmp_path / f"{which}.onnx"
    nnc.export_model(q, str(path), model_args=(data[0],))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: data[1].numpy()})[0])
    with torch.no_grad():
        want = q(data[1])
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max()) + 1e-3


def test_statistics_come_from_the_float_model(transformer: nn.Module) -> None:
    data = _tokens()
    q = nnc.quantize(transformer, data, fast_bias_correction=False, advanced_parameters=QUIET)
    seen: list[torch.Tensor] = []
    ff2 = transformer.blocks[1].ff2  # deep in the model: every quantizer before it must have been off
    handle = ff2.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for x in data:
            transformer(x)
    handle.remove()
    s = smooth_quant_scales(torch.cat(seen).abs().amax(0), ff2.weight.detach().abs().amax(0),
                            nnc.AdvancedQuantizationParameters().smooth_quant_alpha or 0.0)
    scale = next(m for m in q.modules() if isinstance(m, ChannelScale) and "TinyBlock[1]/Linear[ff2]" in m.name)
    torch.testing.assert_close(scale.factor, 1.0 / s)


def test_llama_with_written_out_rmsnorm_is_a_transformer() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(config).eval()
    ids = [torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(i)) for i in range(6)]
    q = nnc.quantize(llama, ids, advanced_parameters=QUIET)
    assert sum(isinstance(m, ChannelScale) for m in q.modules()) > 0  # smoothed: detected as a transformer
    names = [x.name for x in _quantizers(q)]
    assert not any("/pow_" in n or "/mean_" in n for n in names)  # RMSNorm internals stay float
    with torch.no_grad():
        ref, out = llama(ids[0]).logits, q(ids[0]).logits
    assert float((out - ref).norm() / ref.norm()) < 0.05
