"""QAT must not diverge: MobileNet/ResNet shapes from random initialisation with SGD, tiny and
zero ranges, non-finite gradients, ``compression_lr_multiplier``, the optimizer check (issue 8)."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.algorithms.quantization.quantizers import (
    ACTIVATION_MIN_RANGE,
    MIN_STEP_FRACTION,
    FakeQuantizer,
)
from nncompress.demo.cnns import MobileNetV2, MobileNetV3Small, ResNet50
from nncompress.demo.digits import digits_tensors
from nncompress.errors import ConfigError, InitDataError, NonFiniteError
from nncompress.functional.quantize import fake_quantize_learnable
from tests.model_zoo import ResidualCNN


def _digits32(n: int, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Real digits, upsampled to ``size`` and repeated to 3 channels, in batches of 32."""
    x, y, _, _ = digits_tensors()
    x = F.interpolate(x[:n], size=size, mode="bilinear").repeat(1, 3, 1, 1)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def _qat(model: nn.Module, size: int = 32, **section: object):  # type: ignore[no-untyped-def]
    config = {"input_info": {"sample_size": [1, 3, size, size]},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 64}},
                              **section}}
    return nnc.create_compressed_model(model, config, init_data=_digits32(128, size))


NETS = {
    "mobilenet_v2": lambda: MobileNetV2(width=0.5),
    "resnet50": lambda: ResNet50(base=16),
    "mobilenet_v3_small": lambda: MobileNetV3Small(),
}


@pytest.mark.parametrize("name", list(NETS))
def test_random_init_nets_train_with_sgd(name: str) -> None:
    """The issue's failures: NaN at the 2nd SGD step (MobileNetV2), step gradients of 1e7 then
    1e15 (ResNet-50, lr 1e-3), a pooling step growing 0.0015 -> 3807 in 3 steps (MobileNetV3)."""
    torch.manual_seed(0)
    ctrl, model = _qat(NETS[name]())
    acts = [q for q in ctrl.quantizers if q.group == "activations"]
    widths = [float(q.quantized(torch.tensor([1e9, -1e9])).diff().abs()) for q in acts]  # hi - lo covered
    # initialised on training-mode statistics: no collapsed ranges (they were 1e-8 deep in MobileNetV2)
    assert min(widths) >= ACTIVATION_MIN_RANGE * 0.99
    start = {id(q): float(q.scale.detach().abs().max()) for q in ctrl.quantizers}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for x, y in _digits32(160):
        ctrl.scheduler.step()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        for q in ctrl.quantizers:
            assert q.scale.grad is None or bool(torch.isfinite(q.scale.grad).all()), q.name
        optimizer.step()
        assert torch.isfinite(loss)
    for q in ctrl.quantizers:
        now = float(q.scale.detach().abs().max())
        assert 0.1 * start[id(q)] < now < 10 * start[id(q)], (q.name, start[id(q)], now)


def test_mobilenet_v2_qat_from_scratch_with_sgd_learns_digits() -> None:
    """Four epochs of QAT from random weights with SGD reach the floor (86% when written; an FP32
    model trained alike reached 88% in a scratch run: BatchNorm statistics still lag this early)."""
    torch.manual_seed(0)
    x, y, x_test, y_test = digits_tensors()

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=16, mode="bilinear").repeat(1, 3, 1, 1)

    x, x_test = up(x), up(x_test)
    g = torch.Generator().manual_seed(0)

    def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(x), generator=g)
        return [(x[perm[i:i + 64]], y[perm[i:i + 64]]) for i in range(0, len(x), 64)]

    config = {"input_info": {"sample_size": [1, 3, 16, 16]},
              "compression": {"algorithm": "quantization",
                              "initializer": {"range": {"num_init_samples": 256},
                                              "batchnorm_adaptation": {"num_bn_adaptation_samples": 256}}}}
    ctrl, model = nnc.create_compressed_model(MobileNetV2(width=0.35), config, init_data=batches())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _ in range(4):
        ctrl.scheduler.epoch_step()
        model.train()
        for xb, yb in batches():
            ctrl.scheduler.step()
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    assert accuracy >= 0.75


class _ZeroBranch(nn.Module):
    """A conv whose output is multiplied by ``gate``: 0 during calibration, 1 afterwards."""

    def __init__(self, into_linear: bool) -> None:
        super().__init__()
        self.into_linear = into_linear
        self.c1, self.c2, self.c3 = (nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                     nn.Conv2d(8, 8, 3, padding=1))
        self.fc, self.fc2 = nn.Linear(8, 10), nn.Linear(8, 10)
        self.gate = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.c1(x))
        z = self.c2(a) * self.gate
        if self.into_linear:
            return self.fc(z.mean((2, 3))) + self.fc2(a.mean((2, 3)))
        return self.fc((self.c3(z) + self.c3(a)).mean((2, 3)))


@pytest.mark.parametrize("into_linear", [False, True])
@pytest.mark.parametrize("flow", ["qat", "ptq"])
def test_activation_zero_in_calibration_exports_what_pytorch_computes(
    into_linear: bool, flow: str, tmp_path: object
) -> None:
    """Its step was 1e-8; onnxruntime's integer kernels then disagreed by 0.07-0.4 on logits of 0.3-0.8."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    model = _ZeroBranch(into_linear)
    if flow == "ptq":
        quantized = nnc.quantize(model, nnc.Dataset(data, lambda b: b[0]),
                                 advanced_parameters=nnc.AdvancedQuantizationParameters(progress=False))
    else:
        config = {"input_info": {"sample_size": [1, 1, 8, 8]}, "compression": {"algorithm": "quantization"}}
        _, quantized = nnc.create_compressed_model(model, config, init_data=data)
    quantized.gate = 1.0  # e.g. after training, the branch is no longer zero
    quantized.eval()
    x = torch.randn(16, 1, 8, 8, generator=g)
    path = f"{tmp_path}/zero.onnx"
    nnc.export_model(quantized, path, model_args=(x[:1],))
    session = ort.InferenceSession(path)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    ref = quantized(x).detach().numpy()
    assert abs(out - ref).max() < 0.01 * abs(ref).max()


def _cnn_config(**section: object) -> dict:
    return {"input_info": {"sample_size": [1, 1, 8, 8]},
            "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}},
                            **section}}


def _cnn_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(2)]


def test_non_finite_step_is_named_at_the_forward() -> None:
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), _cnn_config(), init_data=_cnn_data())
    victim = ctrl.quantizers[3]
    model(torch.randn(2, 1, 8, 8))
    with torch.no_grad():
        victim.scale.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=re.escape(victim.name)):
        ctrl.scheduler.step()  # checked once per training step, before the forward spreads it
    fresh = nnc.create_compressed_model(ResidualCNN(), _cnn_config(), init_data=_cnn_data())[1]
    fresh.load_state_dict(model.state_dict())  # a checkpoint holding the NaN: refused at the first forward
    with pytest.raises(NonFiniteError, match=re.escape(victim.name)):
        fresh(torch.randn(2, 1, 8, 8))


def test_non_finite_step_gradient_is_dropped_not_spread() -> None:
    """An overflowing upstream gradient leaves the step's gradient finite (0 from those elements)."""
    x = torch.randn(4, 6)
    scale = torch.tensor(0.05, requires_grad=True)
    out = fake_quantize_learnable(x, scale, None, -128, 127)
    grad = torch.ones_like(out)
    grad[0, 0] = float("inf")
    out.backward(grad)
    assert scale.grad is not None and bool(torch.isfinite(scale.grad))
    ref_scale = torch.tensor(0.05, requires_grad=True)
    fake_quantize_learnable(x, ref_scale, None, -128, 127).backward(torch.ones_like(out))
    assert ref_scale.grad is not None and float(ref_scale.grad) != 0.0


def test_step_never_falls_below_its_floor() -> None:
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), _cnn_config(), init_data=_cnn_data())
    q = ctrl.quantizers[0]
    floor = float(q.min_scale)
    assert floor == pytest.approx(max(1e-8, float(q.scale.detach().abs().max()) * MIN_STEP_FRACTION))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        q.scale.fill_(floor * 1e-3)  # a step driven far below the floor acts as the floor
    low = model(x)
    with torch.no_grad():
        q.scale.fill_(floor)
    assert torch.equal(low, model(x))


def test_checkpoint_of_nncompress_0_1_loads() -> None:
    """0.1 stored the step as ``scale`` and had no ``min_scale``: such a state_dict still loads."""
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), _cnn_config(), init_data=_cnn_data())
    state = dict(model.state_dict())
    for prefix, module in model.named_modules():
        if isinstance(module, FakeQuantizer):
            del state[f"{prefix}.min_scale"]
            state[f"{prefix}.scale"] = state[f"{prefix}.scale"] / module.range_divisor(*module.levels, module.symmetric)
    _, fresh = nnc.create_compressed_model(ResidualCNN(), _cnn_config(), init_data=_cnn_data())
    fresh.load_state_dict(state)  # strict
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))


def _step_grads(config: dict) -> list[torch.Tensor]:
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), config, init_data=_cnn_data())
    model(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(5))).square().sum().backward()
    return [q.scale.grad.clone() if q.scale.grad is not None else torch.zeros(()) for q in ctrl.quantizers]


def test_compression_lr_multiplier_scales_the_step_gradients() -> None:
    base = _step_grads(_cnn_config())
    section = _step_grads(_cnn_config(compression_lr_multiplier=10))
    top = _step_grads({**_cnn_config(), "compression_lr_multiplier": 10})
    override = _step_grads({**_cnn_config(compression_lr_multiplier=2), "compression_lr_multiplier": 10})
    assert any(bool(g.any()) for g in base)
    for b, s, t, o in zip(base, section, top, override):
        torch.testing.assert_close(s, 10 * b, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(t, 10 * b, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(o, 2 * b, rtol=1e-5, atol=1e-12)
    ctrl, _ = nnc.create_compressed_model(ResidualCNN(), _cnn_config(compression_lr_multiplier=0), init_data=_cnn_data())
    assert not any(q.scale.requires_grad for q in ctrl.quantizers)
    both = {**_cnn_config(), "compression_lr_multiplier": 10}
    both["compression"] = [both["compression"], {"algorithm": "magnitude_sparsity"}]
    _, sparse_and_quantized = nnc.create_compressed_model(ResidualCNN(), both, init_data=_cnn_data())
    sections = nnc.compression_controller(sparse_and_quantized).get_compression_state()["builder_state"]
    assert "compression_lr_multiplier" not in sections["magnitude_sparsity"]["section"]  # no trainable parameters
    with pytest.raises(ConfigError, match="compression_lr_multiplier"):
        nnc.create_compressed_model(ResidualCNN(), _cnn_config(compression_lr_multiplier=-1), init_data=_cnn_data())


def _train_steps(ctrl, model, optimizer, n: int = 5) -> None:  # type: ignore[no-untyped-def]
    for x, y in (_cnn_data() * 3)[:n]:
        ctrl.scheduler.step()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_optimizer_made_before_compression_is_caught_and_fixed() -> None:
    model = ResidualCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ctrl, model = nnc.create_compressed_model(model, _cnn_config(), init_data=_cnn_data())
    with pytest.warns(UserWarning, match="add_compression_parameters"):
        _train_steps(ctrl, model, optimizer)

    model = ResidualCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ctrl, model = nnc.create_compressed_model(model, _cnn_config(), init_data=_cnn_data())
    added = nnc.add_compression_parameters(optimizer, model)
    assert added == len(ctrl.quantizers)
    assert nnc.add_compression_parameters(optimizer, model) == 0  # already there
    before = [q.scale.detach().clone() for q in ctrl.quantizers]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train_steps(ctrl, model, optimizer)
    assert any(not torch.equal(b, q.scale) for b, q in zip(before, ctrl.quantizers))


def test_batchnorm_adaptation_runs_by_default_as_in_nncf(monkeypatch: pytest.MonkeyPatch) -> None:
    import nncompress.algorithms.base as base

    requested: list[int] = []
    adapt = base.adapt_batchnorm
    monkeypatch.setattr(base, "adapt_batchnorm", lambda m, d, n, *a: requested.append(n) or adapt(m, d, n, *a))
    cnn = ResidualCNN()
    before = cnn.stem[1].running_var.clone()
    adapted = nnc.create_compressed_model(copy.deepcopy(cnn), _cnn_config(), init_data=_cnn_data())[1]
    assert requested == [2000]  # NNCF 2.x's num_bn_adaptation_samples
    assert not torch.equal(adapted.stem[1].running_var, before)
    off = _cnn_config(initializer={"range": {"num_init_samples": 16},
                                   "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}})
    kept = nnc.create_compressed_model(copy.deepcopy(cnn), off, init_data=_cnn_data())[1]
    assert torch.equal(kept.stem[1].running_var, before)  # range init restores the statistics too
    no_data = _cnn_config(initializer={"range": {"num_init_samples": 0}})
    plain = nnc.create_compressed_model(copy.deepcopy(cnn), no_data)[1]  # no init_data: nothing to adapt on
    assert torch.equal(plain.stem[1].running_var, before)


def test_staged_groups_start_at_creation_or_reinitialise_when_switched_on() -> None:
    ctrl, _ = nnc.create_compressed_model(
        ResidualCNN(), _cnn_config(params={"weights_quant_start_epoch": 0, "activations_quant_start_epoch": 0}),
        init_data=_cnn_data())
    assert all(q.enabled for q in ctrl.quantizers)  # start epoch 0: on at creation, as NNCF

    ctrl, model = nnc.create_compressed_model(
        ResidualCNN(), _cnn_config(params={"weights_quant_start_epoch": 0, "activations_quant_start_epoch": 1}),
        init_data=_cnn_data())
    acts = [q for q in ctrl.quantizers if q.group == "activations"]
    assert not any(q.enabled for q in acts)
    ctrl.scheduler.epoch_step()  # epoch 0
    assert not any(q.enabled for q in acts)
    first = acts[0]
    old = float(first.scale.detach())
    with torch.no_grad():
        first.scale.fill_(123.0)  # trained away while off: switching on initialises it again
    ctrl.scheduler.epoch_step()  # epoch 1
    assert all(q.enabled for q in acts)
    assert 0.5 * old < float(first.scale.detach()) < 2 * old  # from init_data again (BN adapted since)

    state = ctrl.get_compression_state()
    weights = model.state_dict()
    ctrl2, model2 = nnc.create_compressed_model(
        ResidualCNN(), _cnn_config(params={"weights_quant_start_epoch": 0, "activations_quant_start_epoch": 1}),
        compression_state=state)
    model2.load_state_dict(weights)
    assert all(q.enabled for q in ctrl2.quantizers)


def test_staged_resume_without_init_data_keeps_the_saved_ranges() -> None:
    staged = _cnn_config(params={"weights_quant_start_epoch": 0, "activations_quant_start_epoch": 1})
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), staged, init_data=_cnn_data())
    ctrl.scheduler.epoch_step()  # epoch 0: activations still off; checkpoint here
    state, weights = ctrl.get_compression_state(), model.state_dict()
    ctrl2, model2 = nnc.create_compressed_model(ResidualCNN(), staged, compression_state=state)
    model2.load_state_dict(weights)
    with pytest.warns(UserWarning, match="without init_data"):
        ctrl2.scheduler.epoch_step()  # epoch 1: they switch on with the ranges of the checkpoint
    assert all(q.enabled for q in ctrl2.quantizers)
    for q, q2 in zip(ctrl.quantizers, ctrl2.quantizers):
        assert torch.equal(q.scale.detach(), q2.scale.detach())


@pytest.mark.parametrize(("bits", "levels"), [(8, (-127, 127)), (4, (-8, 7)), (2, (-2, 1))])
def test_weights_use_the_full_range_below_8_bits(bits: int, levels: tuple[int, int]) -> None:
    ctrl, _ = nnc.create_compressed_model(ResidualCNN(), _cnn_config(weights={"bits": bits}), init_data=_cnn_data())
    weights = [q for q in ctrl.quantizers if q.group == "weights"]
    assert weights and all(q.levels == levels for q in weights)


def test_activation_floor_on_a_dead_activation() -> None:
    q = FakeQuantizer(nnc.algorithms.quantization.params.QuantizerParams(), "x", "activations")
    q.set_range(torch.tensor(0.0), torch.tensor(0.0))
    assert float(q.scale.detach()) == pytest.approx(ACTIVATION_MIN_RANGE, rel=1e-5)  # the range: [0, 1e-3]


def test_nan_in_the_first_init_batch_names_the_op_and_changes_nothing() -> None:
    cnn = ResidualCNN()
    before = copy.deepcopy(cnn.state_dict())
    data = _cnn_data()
    data[0][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(InitDataError, match=r"ResidualCNN/.*NaN or inf"):
        nnc.create_compressed_model(cnn, _cnn_config(), init_data=data)
    assert not hasattr(cnn, "nncompress")
    after = cnn.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_integer_images_in_init_data_get_a_dtype_error() -> None:
    data = [(torch.randint(0, 16, (16, 1, 8, 8)), torch.zeros(16, dtype=torch.long))]
    with pytest.raises(InitDataError, match="int64"):
        nnc.create_compressed_model(ResidualCNN(), _cnn_config(), init_data=data)


class _PooledHead(nn.Module):
    """Conv, global pooling, then a BatchNorm1d: one value per channel for a batch of one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn2d = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.bn1d, self.fc = nn.BatchNorm1d(8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn1d(F.relu(self.bn2d(self.conv(x))).mean((2, 3))))


def test_range_init_on_batches_of_one_behind_batchnorm1d() -> None:
    """Batch statistics need two values per channel: a batch of one uses the running ones."""
    data = [(torch.randn(1, 1, 8, 8), torch.zeros(1, dtype=torch.long)) for _ in range(4)]
    config = _cnn_config(initializer={"range": {"num_init_samples": 4},
                                      "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}})
    model = _PooledHead()
    before = copy.deepcopy(model.state_dict())
    ctrl, model = nnc.create_compressed_model(model, config, init_data=data)
    assert all(bool(q.initialized) for q in ctrl.quantizers)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # statistics restored
    assert model.training and all(m.training for m in model.modules())
