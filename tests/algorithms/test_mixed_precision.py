"""Mixed precision (``initializer.precision``): manual bits, HAWQ, resume, export, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import nncompress as nnc
from nncompress.algorithms.quantization import algo
from nncompress.algorithms.quantization.precision import compression_ratio
from nncompress.api.compression import StripFormat
from nncompress.errors import (
    CompressionStateError,
    ConfigError,
    InitDataError,
    ScopeMatchError,
    UnsupportedAlgorithmError,
)
from nncompress.torch.runtime import get_runtime
from tests.model_zoo import ResidualCNN

PREFIX = "ResidualCNN/Sequential[blocks]"


def _data(n: int = 2, labels: bool = True) -> list[Any]:
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(n)]
    return [(x, torch.randint(0, 10, (16,), generator=g)) for x in xs] if labels else xs


def _config(precision: dict[str, Any], **section: Any) -> dict[str, Any]:
    return {"input_info": {"sample_size": [1, 1, 8, 8]},
            "compression": {"algorithm": "quantization",
                            "initializer": {"range": {"num_init_samples": 32}, "precision": precision,
                                            "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
                            **section}}


def _hawq(**extra: Any) -> dict[str, Any]:
    return {"type": "hawq", "bits": [4, 8], "compression_ratio": 1.5, "num_data_points": 16, "iter_number": 5,
            **extra}


def _bits(ctrl: Any) -> dict[str, int]:
    return {qid: b for qid, _, b in ctrl.statistics().quantization.per_quantizer}


def _untouched(model: ResidualCNN) -> None:
    assert get_runtime(model) is None
    assert list(model.state_dict()) == list(ResidualCNN().state_dict())


# -- manual ---------------------------------------------------------------------------------------


def test_manual_bits_land_on_the_named_quantizers(cnn: ResidualCNN) -> None:
    entries = [
        [4, "ResidualCNN/NNCFLinear[fc]/linear_0|WEIGHT"],  # NNCF's spelling
        [2, f"InsertionType.NNCF_MODULE_PRE_OP {PREFIX}/ResidualBlock[0]/NNCFConv2d[pw]"],  # NNCF 2.0's form
        [6, "/nncf_model_input_0|OUTPUT"],  # the model input, as NNCF named it
        [4, "{re}ResidualBlock\\[1\\].*\\|WEIGHT"],
        [5, "ResidualCNN/mean_0|OUTPUT"],
        [3, f"{PREFIX}/ResidualBlock[1]/Conv2d[pw]/conv2d_0|WEIGHT"],  # a later entry wins
        [7, "ReLU[2]/relu__0|OUTPUT"],  # a part of an id, as NNCF matched
    ]
    ctrl, _ = nnc.create_compressed_model(cnn, _config({"bitwidth_per_scope": entries}), init_data=_data())
    bits = _bits(ctrl)
    assert bits["ResidualCNN/Linear[fc]/linear_0|WEIGHT"] == 4
    assert bits[f"{PREFIX}/ResidualBlock[0]/Conv2d[pw]/conv2d_0|WEIGHT"] == 2
    assert bits["ResidualCNN/Sequential[stem]/Conv2d[0]/conv2d_0|INPUT0"] == 6
    assert bits[f"{PREFIX}/ResidualBlock[1]/Conv2d[dw]/conv2d_0|WEIGHT"] == 4
    assert bits[f"{PREFIX}/ResidualBlock[1]/Conv2d[pw]/conv2d_0|WEIGHT"] == 3
    assert bits["ResidualCNN/mean_0|OUTPUT"] == 5
    assert bits["ResidualCNN/Sequential[stem]/ReLU[2]/relu_0|OUTPUT"] == 7
    assert bits["ResidualCNN/Sequential[stem]/Conv2d[0]/conv2d_0|WEIGHT"] == 8  # not named: the default
    levels = {q.name: (q.bits, q.levels) for q in ctrl.quantizers if q.group == "weights"}
    assert levels["ResidualCNN/Sequential[stem]/Conv2d[0]/conv2d_0"] == (8, (-127, 127))  # narrow at 8 bits
    assert levels[f"{PREFIX}/ResidualBlock[0]/Conv2d[pw]/conv2d_0"] == (2, (-2, 1))  # full range below
    text = ctrl.statistics().to_str()
    assert "mixed precision" in text and "ResidualCNN/Linear[fc]/linear_0|WEIGHT" in text
    reasons = {(r.op, r.reason) for r in ctrl.capture_report.rows}
    assert ("ResidualCNN/Linear[fc]/linear_0", "weight, 4 bit") in reasons
    assert ("ResidualCNN/Linear[fc]/linear_0", "activation, 5 bit") in reasons  # the mean's output
    metrics = ctrl.statistics().to_dict()
    assert metrics["quantization/mixed_precision/ResidualCNN/Linear[fc]/linear_0|WEIGHT"] == 4


def test_unmatched_scope_is_an_error_naming_it(cnn: ResidualCNN) -> None:
    entries = [[4, "ResidualCNN/Linear[fc]/linear_0|WEIGHT"], [4, "ResidualCNN/Linear[head]/linear_0|WEIGHT"]]
    with pytest.raises(ScopeMatchError, match=r"precision\.bitwidth_per_scope\[1\]\[1\]: 'ResidualCNN/Linear\[head\].*"
                                              r"close quantizer ids: \['ResidualCNN/Linear\[fc\]/linear_0\|WEIGHT'"):
        nnc.create_compressed_model(cnn, _config({"bitwidth_per_scope": entries}), init_data=_data())
    _untouched(cnn)
    with pytest.raises(ScopeMatchError, match=r"bitwidth_per_scope\[0\]\[1\]"):  # an op without that quantizer
        nnc.create_compressed_model(cnn, _config({"bitwidth_per_scope": [[4, "ResidualCNN/mean_0|WEIGHT"]]}),
                                    init_data=_data())
    _untouched(cnn)


def test_a_part_of_several_ids_sets_them_all_with_a_warning(cnn: ResidualCNN) -> None:
    # NNCF 2.x matched ``scope in str(insertion_point)`` and set only the first quantizer it found
    with pytest.warns(UserWarning, match=r"\[0\]\[1\]: 'Conv2d\[pw\]/conv2d_0\|WEIGHT' is a part of 2 "):
        ctrl, _ = nnc.create_compressed_model(cnn, _config({"bitwidth_per_scope": [[4, "Conv2d[pw]/conv2d_0|WEIGHT"]]}),
                                              init_data=_data())
    assert sorted(b for qid, b in _bits(ctrl).items() if qid.endswith("|WEIGHT")) == [4, 4, 8, 8, 8, 8]


@pytest.mark.parametrize(
    "precision,error,match",
    [
        ({"bitwidth_per_scope": [[9, "x"]]}, ConfigError, r"precision\.bitwidth_per_scope\[0\]\[0\]: 9 .*2\.\.8"),
        ({"bitwidth_per_scope": [[4, "x"], [4, "{re}(("]]}, ConfigError,
         r"precision\.bitwidth_per_scope\[1\]\[1\]: '\{re\}\(\(' is not a regular expression"),
        (_hawq(bits=[1, 8]), ConfigError, r"precision\.bits\[0\]: 1 .*2\.\.8"),
        (_hawq(iter_number=0), ConfigError, r"precision\.iter_number: 0 .*>= 1"),
        (_hawq(compression_ratio=0), ConfigError, r"precision\.compression_ratio: 0(\.0)? .*> 0"),
        (_hawq(bitwidth_per_scope=[[4, "x"]]), ConfigError, r"precision\.bitwidth_per_scope: .*\"manual\""),
        (_hawq(traces_per_layer_path="t.pt"), ConfigError, r"precision\.traces_per_layer_path: .*not supported"),
        (_hawq(compression_ratio=3.0), ConfigError,
         r"precision\.compression_ratio: 3\.0 cannot be reached with bits \[4, 8\].*allowed: \[1\.000, 2\.000\]"),
        ({"type": "autoq", "bits": [2, 4, 8]}, UnsupportedAlgorithmError,
         r"precision\.type: 'autoq' .*not planned.*reinforcement-learning"),
    ],
)
def test_bad_precision_settings(cnn: ResidualCNN, precision: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        nnc.create_compressed_model(cnn, _config(precision), init_data=_data())
    _untouched(cnn)


# -- HAWQ -----------------------------------------------------------------------------------------


def test_hawq_mixes_bits_under_the_ratio_by_ascending_trace(cnn: ResidualCNN) -> None:
    ctrl, model = nnc.create_compressed_model(cnn, _config(_hawq()), init_data=_data())
    h = ctrl.hawq
    assert h is not None and h.draws <= 5
    wbits = [h.bits[i] for i in h.weight_ids]
    assert set(wbits) == {4, 8}
    assert ctrl.statistics().quantization.compression_ratio == pytest.approx(h.ratio) and h.ratio >= 1.5
    by_trace = [b for _, b in sorted(zip(h.traces, wbits))]
    assert by_trace == sorted(by_trace)  # a sharper layer never has fewer bits
    order = sorted(range(len(wbits)), key=lambda k: h.traces[k])
    reverse = [0] * len(wbits)
    for pos, k in enumerate(order):
        reverse[k] = by_trace[::-1][pos]
    assert h.objective(wbits) <= h.objective(reverse)
    bits = _bits(ctrl)  # the input quantizer of the stem conv takes that conv's weight bits (liberal)
    stem = "ResidualCNN/Sequential[stem]/Conv2d[0]/conv2d_0"
    assert bits[f"{stem}|INPUT0"] == bits[f"{stem}|WEIGHT"]
    assert [q.bits for q in ctrl.quantizers] == list(bits.values())
    assert torch.isfinite(model(torch.randn(2, 1, 8, 8))).all()


def test_hawq_uses_whole_batches_up_to_num_data_points_as_nncf(cnn: ResidualCNN) -> None:
    # NNCF 2.x: num_data_points // batch_size batches (at least one); 40 points of batches of 16 are 2
    data = _data(3)
    data[2] = (torch.full_like(data[2][0], float("nan")), data[2][1])  # would make every trace NaN
    ctrl, _ = nnc.create_compressed_model(cnn, _config(_hawq(num_data_points=40)), init_data=data)
    assert ctrl.hawq is not None and all(np.isfinite(ctrl.hawq.traces))


def test_hawq_refuses_non_finite_traces(cnn: ResidualCNN) -> None:
    data = [(torch.full_like(x, float("nan")), y) for x, y in _data()]
    with pytest.raises(InitDataError, match=r"precision: HAWQ's Hessian traces are not finite"):
        nnc.create_compressed_model(cnn, _config(_hawq()), init_data=data)
    _untouched(cnn)


def test_compression_ratio_is_int8_bit_complexity_over_the_mixed_one() -> None:
    macs, wbits, abits = [100, 300, 50], [4, 8, 2], [8, 4, None]
    expected = 8 * 450 / (100 * 8 + 300 * 8 + 50 * 2)  # max(weight, input) bits per op
    assert compression_ratio(macs, wbits, abits) == pytest.approx(expected, rel=1e-12)
    assert compression_ratio([10, 20], [8, 8], [8, 8]) == 1.0


class TwoBranch(nn.Module):
    """One activation feeds two convs: in strict mode their weights get one bit width."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.fc((self.a(h) * 3 + self.b(h)).mean(dim=(2, 3)))


def test_strict_mode_gives_adjacent_weights_one_width() -> None:
    torch.manual_seed(0)
    ctrl, _ = nnc.create_compressed_model(
        TwoBranch(), _config(_hawq(bits=[2, 4, 8], bitwidth_assignment_mode="strict", compression_ratio=2.0)),
        init_data=_data())
    bits = _bits(ctrl)
    assert bits["TwoBranch/Conv2d[a]/conv2d_0|WEIGHT"] == bits["TwoBranch/Conv2d[b]/conv2d_0|WEIGHT"]
    assert bits["TwoBranch/relu_0|OUTPUT"] == bits["TwoBranch/Conv2d[a]/conv2d_0|WEIGHT"]


def test_hawq_leaves_the_model_as_it_was(cnn: ResidualCNN) -> None:
    cnn.train()
    grads = {n: torch.full_like(p, 0.5) for n, p in cnn.named_parameters()}
    for n, p in cnn.named_parameters():
        p.grad = grads[n].clone()
    cnn.stem[0].weight.requires_grad_(False)  # a frozen weight still gets its trace
    bn = copy.deepcopy(cnn.blocks[0].bn1.state_dict())
    ctrl, _ = nnc.create_compressed_model(cnn, _config(_hawq()), init_data=_data())
    assert ctrl.hawq is not None and ctrl.hawq.traces[0] != 0  # (traces of an untrained net may be < 0)
    assert all(torch.equal(p.grad, grads[n]) for n, p in cnn.named_parameters() if p.grad is not None)
    assert not cnn.stem[0].weight.requires_grad and cnn.blocks[0].pw.weight.requires_grad
    assert cnn.training and all(m.training for m in cnn.modules())
    assert all(torch.equal(v, bn[k]) for k, v in cnn.blocks[0].bn1.state_dict().items())


def test_hawq_needs_data_with_targets_or_a_registered_loss(cnn: ResidualCNN) -> None:
    with pytest.raises(InitDataError, match=r"initializer\.precision: HAWQ .* init_data"):
        nnc.create_compressed_model(cnn, _config(_hawq()))
    _untouched(cnn)
    with pytest.raises(InitDataError, match=r"init_data batch 0 \(Tensor\) carries no target"):
        nnc.create_compressed_model(cnn, _config(_hawq()), init_data=_data(labels=False))
    _untouched(cnn)
    calls: list[int] = []

    def criterion_fn(outputs: torch.Tensor, target: Any, criterion: Any) -> torch.Tensor:
        calls.append(1)
        assert target is None and criterion is None
        return outputs.square().mean()

    config = nnc.CompressionConfig.from_dict(_config(_hawq()))
    nnc.register_default_init_args(config, _data(labels=False), criterion_fn=criterion_fn)
    ctrl, _ = nnc.create_compressed_model(cnn, config)
    assert calls and ctrl.hawq is not None


def test_registered_criterion_is_used(cnn: ResidualCNN) -> None:
    class Counting(nn.CrossEntropyLoss):
        calls = 0

        def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
            Counting.calls += 1
            return super().forward(input, target)

    config = nnc.register_default_init_args(nnc.CompressionConfig.from_dict(_config(_hawq())), _data(), Counting())
    ctrl, _ = nnc.create_compressed_model(cnn, config)
    assert Counting.calls >= 1 and ctrl.hawq is not None
    # the registered loss also goes with init_data given to create_compressed_model
    Counting.calls = 0
    ctrl, _ = nnc.create_compressed_model(ResidualCNN(), config, init_data=_data())
    assert Counting.calls >= 1 and ctrl.hawq is not None


def test_hawq_is_reproducible() -> None:
    chosen = []
    for _ in range(2):
        torch.manual_seed(0)
        ctrl, _ = nnc.create_compressed_model(ResidualCNN(), _config(_hawq()), init_data=_data())
        chosen.append((_bits(ctrl), ctrl.hawq.traces if ctrl.hawq else None))
    assert chosen[0] == chosen[1]


# -- resume, export -------------------------------------------------------------------------------


def test_resume_gives_the_same_bits_without_running_hawq(cnn: ResidualCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(_hawq())
    ctrl, model = nnc.create_compressed_model(cnn, config, init_data=_data())
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    assert state["builder_state"]["quantization"]["precision"]["bits"] == _bits(ctrl)

    def no_hawq(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("HAWQ ran again")

    monkeypatch.setattr(algo, "choose_hawq_bits", no_hawq)
    ctrl2, model2 = nnc.create_compressed_model(ResidualCNN(), config, compression_state=state)
    model2.load_state_dict(model.state_dict())
    assert _bits(ctrl2) == _bits(ctrl) and ctrl2.hawq is None
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    model2.eval()
    assert torch.equal(model(x), model2(x))
    some = next(iter(state["builder_state"]["quantization"]["precision"]["bits"]))
    for edit, match in (
        (lambda s: s["precision"]["bits"].__setitem__(some, 9), r"precision\.bits\[.*expected bits 2\.\.8, got 9"),
        (lambda s: s.pop("precision"), r"builder_state\.quantization: missing key 'precision'"),
        (lambda s: s["precision"]["bits"].pop(some), r"precision\.bits: .*other quantizers"),
    ):
        bad = copy.deepcopy(state)
        edit(bad["builder_state"]["quantization"])
        fresh = ResidualCNN()
        with pytest.raises(CompressionStateError, match=match):
            nnc.create_compressed_model(fresh, config, compression_state=bad)
        _untouched(fresh)


def _ort(path: Path, x: torch.Tensor, optimize: bool = True) -> np.ndarray:
    opts = ort.SessionOptions()
    if not optimize:  # QuantizeLinear / DequantizeLinear run as written: the fake quantization itself
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_low_bit_export_runs_in_onnxruntime_and_matches(cnn: ResidualCNN, tmp_path: Path) -> None:
    entries = [[2, f"{PREFIX}/ResidualBlock[0]/Conv2d[pw]/conv2d_0|WEIGHT"],
               [4, f"{PREFIX}/ResidualBlock[1]/Conv2d[pw]/conv2d_0|WEIGHT"],
               [4, f"{PREFIX}/ResidualBlock[0]/relu_0|OUTPUT"], [6, f"{PREFIX}/ResidualBlock[1]/relu_0|OUTPUT"]]
    # (a 3-bit quantizer right before the classifier matches too, alone; behind other quantizers a
    # float rounding difference upstream can move one of its 8 levels: a tenth of the logits' range)
    cnn.train()
    for x, _ in _data():
        cnn(x)  # BatchNorm statistics to fold
    ctrl, model = nnc.create_compressed_model(cnn, _config({"bitwidth_per_scope": entries}), init_data=_data())
    path = tmp_path / "mixed.onnx"
    ctrl.export_model(str(path))
    x = torch.randn(32, 1, 8, 8)
    model.eval()
    expected = ctrl.strip(strip_format=StripFormat.NATIVE)(x).detach().numpy()
    scale = np.abs(expected).max()
    assert np.abs(_ort(path, x, optimize=False) - expected).max() < 1e-3 * scale
    # fused into integer kernels, whose rounding differs from float: a 4-bit level may move
    got = _ort(path, x)
    assert np.abs(got - expected).max() < 0.1 * scale
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
    graph = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    int8_weights = [consts[n.input[0]] for n in graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].ndim == 4]
    ranges = [(int(w.min()), int(w.max())) for w in int8_weights]
    assert len(ranges) == 5  # the conv weights, as int8 constants
    assert sum(lo >= -2 and hi <= 1 for lo, hi in ranges) == 1  # the 2-bit weight: levels -2..1
    assert sum(lo >= -8 and hi <= 7 for lo, hi in ranges) == 2  # and the 4-bit one: -8..7


def test_dump_init_precision_data_logs_the_choice(cnn: ResidualCNN, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="nncompress"):
        nnc.create_compressed_model(cnn, _config(_hawq(dump_init_precision_data=True)), init_data=_data())
    assert any("HAWQ:" in r.message and "average traces" in r.message for r in caplog.records)


def test_hawq_without_weight_quantizers_keeps_the_configured_bits(cnn: ResidualCNN) -> None:
    config = _config(_hawq(), weights={"ignored_scopes": ["{re}.*"]}, activations={"bits": 6})
    ctrl, _ = nnc.create_compressed_model(cnn, config, init_data=_data())
    assert ctrl.hawq is not None and ctrl.hawq.draws == 0
    assert set(_bits(ctrl).values()) == {6} and all(q.group == "activations" for q in ctrl.quantizers)


def test_hawq_refuses_a_candidate_count_it_cannot_enumerate_before_estimating_traces() -> None:
    # 27 weights and 7 widths: C(33, 6) = 1.1 million non-decreasing sequences, each scored in Python
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(27)])
    config = {"input_info": {"sample_size": [1, 2]},
              "compression": {"algorithm": "quantization", "initializer": {
                  "range": {"num_init_samples": 2}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
                  "precision": {"type": "hawq", "bits": [2, 3, 4, 5, 6, 7, 8], "compression_ratio": 1.5}}}}

    def data() -> Any:
        raise AssertionError("traces were estimated before the candidates were counted")
        yield

    class Lazy:
        def __iter__(self) -> Any:
            return data()

    with pytest.raises(ConfigError, match=r"precision\.bits.*1107568 candidates"):
        nnc.create_compressed_model(model, config, init_data=Lazy())
