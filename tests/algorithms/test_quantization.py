"""Quantization-aware training: placement, range init, schedule, strip, export, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import nncompress as nnc
from nncompress.api.compression import CompressionStage, StripFormat
from nncompress.errors import ConfigError, InitDataError, UnsupportedAlgorithmError
from nncompress.torch.runtime import get_runtime
from tests.model_zoo import ResidualCNN


def _data(n: int = 4, scale: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 1, 8, 8, generator=g) * scale, torch.zeros(16, dtype=torch.long)) for _ in range(n)]


def _config(**section: object) -> dict:
    return {"input_info": {"sample_size": [1, 1, 8, 8]},
            "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 64}},
                            **section}}


def _quantized(cnn: ResidualCNN, **section: object):  # type: ignore[no-untyped-def]
    return nnc.create_compressed_model(cnn, _config(**section), init_data=_data())


def test_placement_shares_quantizers_and_reports(cnn: ResidualCNN) -> None:
    ctrl, _ = _quantized(cnn)
    groups = [q.group for q in ctrl.quantizers]
    assert groups.count("weights") == 6 and groups.count("activations") == 9
    rows = ctrl.capture_report.rows
    pool = [r for r in rows if r.op.endswith("/mean_0")]
    assert len(pool) == 1 and pool[0].compressed  # the global average pooling's input
    shared = [r for r in rows if r.reason.startswith("shares the quantizer")]
    assert len(shared) == 2  # each block's input feeds both its depthwise conv and its residual add
    stats = ctrl.statistics().quantization
    assert stats.weights.per_channel == 6 and stats.activations.per_channel == 0
    assert stats.bits == {8: (6, 9)}
    assert "per-channel" in ctrl.statistics().to_str()


def test_range_init_min_max_of_the_data(cnn: ResidualCNN) -> None:
    data = _data()
    ctrl, _ = nnc.create_compressed_model(
        cnn, _config(initializer={"range": {"num_init_samples": 64, "type": "min_max"}}), init_data=data
    )
    first = next(q for q in ctrl.quantizers if q.name.endswith("conv2d_0") and q.group == "activations")
    amax = max(float(x.abs().max()) for x, _ in data)
    assert bool(first.signed) and float(first.scale.detach()) == pytest.approx(amax, rel=1e-6)
    relu_fed = [q for q in ctrl.quantizers if q.group == "activations" and "relu" in q.name]
    assert relu_fed and not any(bool(q.signed) for q in relu_fed)  # unsigned after ReLU


def test_fake_quant_forward_is_close_and_scales_learn(cnn: ResidualCNN) -> None:
    x = torch.randn(8, 1, 8, 8)
    ctrl, model = _quantized(cnn)  # BatchNorm adaptation (on by default) changes the statistics:
    model.eval()  # the reference is the same model with its quantizers off
    for q in ctrl.quantizers:
        q.enabled = False
    ref = model(x).detach()
    for q in ctrl.quantizers:
        q.enabled = True
    out = model(x)
    assert 0 < float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())
    out.square().sum().backward()
    assert all(q.scale.grad is not None for q in ctrl.quantizers)


def test_staged_schedule_and_stage(cnn: ResidualCNN) -> None:
    ctrl, _ = _quantized(cnn, params={"weights_quant_start_epoch": 1, "activations_quant_start_epoch": 2})
    stages = []
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        stages.append(ctrl.compression_stage())
    U, P, F = CompressionStage
    assert stages == [U, P, F]
    assert ctrl.statistics().quantization.weights.enabled == 6


def _ort(path: Path, x: torch.Tensor, optimized: Path | None = None) -> np.ndarray:
    opts = ort.SessionOptions()
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_export_is_qdq_fused_by_onnxruntime_and_matches(cnn: ResidualCNN, tmp_path: Path) -> None:
    cnn.train()
    for x, _ in _data():
        cnn(x)  # BatchNorm statistics to fold
    ctrl, model = _quantized(cnn)
    path, opt = tmp_path / "q.onnx", tmp_path / "q_opt.onnx"
    ctrl.export_model(str(path))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    x = torch.randn(32, 1, 8, 8)
    model.eval()
    expected = ctrl.strip(strip_format=StripFormat.NATIVE)(x).detach().numpy()
    got = _ort(path, x, opt)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
    fused = {n.op_type for n in onnx.load(str(opt)).graph.node}
    assert "QLinearConv" in fused


def test_strip_in_place_puts_weights_on_the_grid(cnn: ResidualCNN) -> None:
    keys = list(ResidualCNN().state_dict())
    ctrl, _ = _quantized(cnn, weights={"bits": 4})
    stripped = ctrl.strip(strip_format=StripFormat.IN_PLACE)
    assert type(stripped) is ResidualCNN and list(stripped.state_dict()) == keys
    w = stripped.blocks[0].pw.weight.detach()
    assert all(len(torch.unique(row)) <= 15 for row in w.flatten(1))  # 4-bit narrow: 15 levels


def test_sub_8_bit_export_runs_in_onnxruntime(cnn: ResidualCNN, tmp_path: Path) -> None:
    ctrl, model = _quantized(cnn, weights={"bits": 4}, activations={"bits": 6})
    path = tmp_path / "q4.onnx"
    ctrl.export_model(str(path))
    x = torch.randn(8, 1, 8, 8)
    model.eval()
    expected = ctrl.strip(strip_format=StripFormat.NATIVE)(x).detach().numpy()
    assert np.abs(_ort(path, x) - expected).max() < 0.02 * np.abs(expected).max()


def test_resume_gives_identical_outputs(cnn: ResidualCNN) -> None:
    config = _config(params={"weights_quant_start_epoch": 0, "activations_quant_start_epoch": 1})
    ctrl, model = nnc.create_compressed_model(cnn, config, init_data=_data())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        ctrl.scheduler.epoch_step()
        loss = model(torch.randn(8, 1, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    ctrl2, model2 = nnc.create_compressed_model(ResidualCNN(), config, compression_state=state)
    model2.load_state_dict(model.state_dict())
    assert ctrl2.compression_stage() == ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    model2.eval()
    assert torch.equal(model(x), model2(x))


def test_sparsity_mask_runs_before_the_weight_quantizer(cnn: ResidualCNN, tmp_path: Path) -> None:
    config = {
        "input_info": {"sample_size": [1, 1, 8, 8]},
        "compression": [
            {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 32}}},
            {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5, "params": {"sparsity_target": 0.5}},
        ],
    }
    ctrl, model = nnc.create_compressed_model(cnn, config, init_data=_data())
    stripped = ctrl.strip(strip_format=StripFormat.IN_PLACE)
    w = torch.cat([p.detach().flatten() for n, p in stripped.named_parameters() if p.dim() >= 2])
    assert float((w == 0).float().mean()) >= 0.49  # zeros survive quantization (0 is on the grid)
    ctrl.export_model(str(tmp_path / "sq.onnx"))
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    expected = ctrl.strip(strip_format=StripFormat.NATIVE)(x).detach().numpy()
    assert np.abs(_ort(tmp_path / "sq.onnx", x) - expected).max() < 0.02 * np.abs(expected).max()


def _untouched(model: ResidualCNN) -> None:
    assert get_runtime(model) is None
    assert list(model.state_dict()) == list(ResidualCNN().state_dict())


@pytest.mark.parametrize(
    "section,match",
    [
        ({"weights": {"bits": 9}}, r"compression\.weights\.bits.*9 bits.*2\.\.8"),
        ({"activations": {"bits": 1}}, r"compression\.activations\.bits.*1 bits"),
        ({"activations": {"per_channel": True}}, r"compression\.activations\.per_channel"),
    ],
)
def test_bad_settings(cnn: ResidualCNN, section: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        nnc.create_compressed_model(cnn, _config(**section), init_data=_data())
    _untouched(cnn)


def test_autoq_precision_init_is_not_supported(cnn: ResidualCNN) -> None:
    # HAWQ and manual mixed precision: tests/algorithms/test_mixed_precision*.py
    with pytest.raises(UnsupportedAlgorithmError, match=r"initializer\.precision\.type: 'autoq'"):
        nnc.create_compressed_model(cnn, _config(initializer={"precision": {"type": "autoq"}}))
    _untouched(cnn)


def test_range_init_needs_data(cnn: ResidualCNN) -> None:
    with pytest.raises(InitDataError, match="init_data"):
        nnc.create_compressed_model(cnn, _config())
    _untouched(cnn)
    ctrl, _ = nnc.create_compressed_model(cnn, _config(initializer={"range": {"num_init_samples": 0}}))
    assert len(ctrl.quantizers) == 15  # ranges then come from the first batch


def test_nan_in_activations_names_the_op(cnn: ResidualCNN) -> None:
    bad = copy.deepcopy(_data())
    bad[1][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(InitDataError, match=r"conv2d_0 contain NaN or inf"):
        nnc.create_compressed_model(cnn, _config(), init_data=bad)
    _untouched(cnn)


def test_init_data_that_does_not_fit(cnn: ResidualCNN) -> None:
    with pytest.raises(InitDataError, match="batch 0"):
        nnc.create_compressed_model(cnn, _config(), init_data=[torch.ones(2, 3, 8, 8)])
    _untouched(cnn)


def test_mixed_preset_makes_activations_asymmetric(cnn: ResidualCNN) -> None:
    ctrl, model = _quantized(cnn, preset="mixed")
    stats = ctrl.statistics().quantization
    assert stats.activations.asymmetric == stats.activations.total == 9
    assert stats.weights.symmetric == 6
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    learned = [q for q in ctrl.quantizers if not q.symmetric]
    assert all(q.zero_point.grad is not None for q in learned)  # zero points learn too


def test_shape_arithmetic_during_export_does_not_shift_op_names(tmp_path: Path) -> None:
    class SizeMath(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0] + 0  # a 0-d tensor op while the exporter traces, Python ints in eager mode
            return self.fc(x[:n]) + x

    config = {"input_info": {"sample_size": [2, 4]},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 2}}}}
    ctrl, model = nnc.create_compressed_model(SizeMath(), config, init_data=[torch.randn(2, 4)])
    activations = [q for q in ctrl.quantizers if q.group == "activations"]
    path = tmp_path / "size.onnx"
    ctrl.export_model(str(path))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == len(activations) == 3  # weights are int8 initializers


def test_strip_dq_keeps_int8_codes_and_matches_native(cnn: ResidualCNN) -> None:
    ctrl, model = _quantized(cnn)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    native = ctrl.strip(strip_format=StripFormat.NATIVE).eval()
    dq = ctrl.strip(strip_format=StripFormat.DQ).eval()
    torch.testing.assert_close(dq(x), native(x))
    assert dq.blocks[0].pw.weight.numel() == 0  # the float weights are gone
    codes = [b for k, b in dq.state_dict().items() if k.endswith(".codes")]
    assert len(codes) == 6 and all(c.dtype == torch.int8 for c in codes)
    float_weights = sum(p.numel() * 4 for p in model.parameters() if p.dim() >= 2)
    assert sum(c.numel() for c in codes) == float_weights // 4


def test_embedding_rows_path_equals_whole_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from nncompress.algorithms.quantization.quantizers import FakeQuantizer

    class Emb(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids))

    torch.manual_seed(0)
    ids = torch.tensor([[1, 4, 4, 9], [0, 49, 7, 1]])
    config = {"compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 2}}}}
    ctrl, model = nnc.create_compressed_model(Emb(), config, example_input=ids, init_data=[ids])
    table = copy.deepcopy(model)
    results = []
    for m, rows in ((model, True), (table, False)):
        if not rows:
            monkeypatch.setattr(FakeQuantizer, "embedding_rows", lambda self, f, a, k: None)
        out = m(ids)
        out.square().sum().backward()
        q = next(q for q in get_runtime(m).modules() if isinstance(q, FakeQuantizer) and "emb" in q.name
                 and q.group == "weights")
        results.append((out.detach(), m.emb.weight.grad.clone(), q.scale.grad.clone()))
    (o1, w1, s1), (o2, w2, s2) = results
    assert torch.equal(o1, o2)
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-7)
    assert int((s1 != 0).sum()) == 6  # only the 6 distinct rows looked up get a step gradient


@pytest.mark.parametrize("group", ["activations", "weights"])
def test_range_gradient_sums_every_element_as_nncf(group: str) -> None:
    from nncompress.algorithms.quantization.params import QuantizerParams
    from nncompress.algorithms.quantization.quantizers import FakeQuantizer

    x1 = torch.randn(1, 3, 5, 5)
    grads = []
    for batch in (1, 4):
        q = FakeQuantizer(QuantizerParams(), "op", group)
        q.set_range(torch.tensor(-2.0), torch.tensor(2.0))
        q(x1.repeat(batch, 1, 1, 1)).sum().backward()
        assert q.scale.grad is not None
        grads.append(float(q.scale.grad))
    # NNCF 2.x's range gradient is a plain sum over the elements: the same example 4 times, 4 times
    # the gradient, whatever the group (LSQ's 1/sqrt(N qmax) factor is not applied)
    assert grads[1] == pytest.approx(4.0 * grads[0], rel=1e-5)
