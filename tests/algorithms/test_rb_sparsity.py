"""RB sparsity (``rb_sparsity``): masks, loss, schedule, freeze, optimizer, state, strip, export, corpus."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.algorithms.sparsity.rb import RBSparsityController
from nncompress.algorithms.sparsity.rb_loss import RBMask
from nncompress.errors import CompressionStateError, ConfigError, InvalidArgumentError
from tests.conftest import SHARED
from tests.model_zoo import ResidualCNN

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
INIT_LOGIT = math.log(0.99 / 0.01)


def rb_config(section: dict[str, Any] | None = None, **top: Any) -> nnc.CompressionConfig:
    """An NNCF 2.x rb_sparsity config for ResidualCNN."""
    return nnc.CompressionConfig.from_dict(
        {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": {"algorithm": "rb_sparsity", **(section or {})},
         **top}
    )


def build(section: dict[str, Any] | None = None, seed: int = 0, **top: Any) -> tuple[RBSparsityController, nn.Module]:
    torch.manual_seed(seed)
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), rb_config(section, **top))
    assert isinstance(ctrl, RBSparsityController)
    return ctrl, model


def masks(model: nn.Module) -> dict[str, RBMask]:
    return {n: m for n, m in model.named_modules() if isinstance(m, RBMask)}


def test_masks_are_parameters_initialised_to_logit_099() -> None:
    ctrl, model = build({"sparsity_init": 0.1})
    found = masks(model)
    assert len(found) == len(ctrl.sparsified_weights) == 6  # 5 convs and the fc
    logits = {f"{n}.logits" for n in found}
    params = dict(model.named_parameters())
    assert logits <= set(params)
    for name in logits:
        assert torch.allclose(params[name], torch.full_like(params[name], INIT_LOGIT))
    keys = set(model.state_dict())
    assert {k for k in keys if not k.startswith("nncompress.")} == set(ResidualCNN().state_dict())
    assert logits <= keys and not any("_noise" in k for k in keys)
    stats = ctrl.statistics().to_dict()
    assert stats["rb_sparsity/layers_level"] == 0.0
    assert stats["rb_sparsity/mean_sparse_prob"] == pytest.approx(0.01, abs=1e-6)
    assert "mean sparse probability" in ctrl.statistics().to_str()
    assert float(ctrl.loss().detach()) == pytest.approx((0.1 / 0.05) ** 2, rel=1e-5)  # density 1, target 0.9


def test_training_forward_draws_noise_eval_forward_is_the_logit_sign() -> None:
    ctrl, model = build()
    for m in masks(model).values():  # keep probability sigmoid(0) = 1/2: noise decides
        nn.init.zeros_(m.logits)
        with torch.no_grad():
            m.logits[..., :1] = 3.0
            m.logits.view(-1)[::3] = -3.0
    model.train()
    torch.manual_seed(1)
    a = model(X)
    b = model(X)
    assert not torch.equal(a, b)
    model.eval()
    ref = copy.deepcopy(model)
    stripped = ctrl.strip(do_copy=True)
    assert torch.equal(model(X), model(X))
    assert torch.allclose(model(X), stripped(X), atol=1e-6)
    for m in masks(model).values():
        assert torch.equal(m.refresh_(), (m.logits > 0).float())
    rec = ctrl.sparsified_weights[0]
    logits = next(iter(masks(ref).values())).logits
    baked = stripped.get_parameter(rec.weight)
    assert torch.equal(baked, ref.get_parameter(rec.weight) * (logits > 0))
    assert int((logits <= 0).sum()) > 0


def test_noise_buffer_is_reused_and_two_forwards_before_backward_work() -> None:
    ctrl, model = build()
    model.train()
    mask = next(iter(masks(model).values()))
    model(X).sum().backward()
    ptr = mask._noise.data_ptr()
    model(X).sum().backward()
    assert mask._noise.data_ptr() == ptr  # drawn into the same buffer step after step
    model.zero_grad()
    torch.manual_seed(5)
    (model(X).sum() + model(X).sum()).backward()  # the first graph's noise is not overwritten
    g_two = mask.logits.grad.clone()
    model.zero_grad()
    torch.manual_seed(5)
    first = model(X).sum()
    first.backward()
    second = model(X).sum()
    second.backward()
    assert torch.allclose(mask.logits.grad, g_two, rtol=1e-5, atol=1e-7)


def test_logits_reach_the_optimizer_and_get_both_gradients() -> None:
    ctrl, model = build({"sparsity_init": 0.5})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(m.logits) in held for m in masks(model).values())
    before = {n: m.logits.detach().clone() for n, m in masks(model).items()}
    model.train()
    loss = model(X).square().mean() + ctrl.loss()
    loss.backward()
    opt.step()
    for n, m in masks(model).items():
        assert m.logits.grad is not None and not torch.equal(m.logits, before[n])
    # an optimizer made before compression gets the logits from add_compression_parameters
    torch.manual_seed(0)
    plain = ResidualCNN()
    early = torch.optim.SGD(plain.parameters(), lr=0.1)
    _, model2 = nnc.create_compressed_model(plain, rb_config())
    assert nnc.add_compression_parameters(early, model2) == 6


def test_loss_gradient_alone_pulls_density_to_target() -> None:
    ctrl, model = build({"sparsity_init": 0.5})
    mask = next(iter(masks(model).values()))
    loss = ctrl.loss()
    loss.backward()
    s = torch.sigmoid(torch.tensor(INIT_LOGIT, dtype=torch.float64))
    total = sum(m.logits.numel() for m in masks(model).values())
    expected = 2 * (1.0 - 0.5) / 0.05**2 / total * s * (1 - s)  # d/dm of ((kept/total - 0.5)/p)^2
    assert torch.allclose(mask.logits.grad.double(), expected.expand(mask.logits.shape), rtol=1e-4)


@pytest.mark.parametrize("where", ["section", "top"])
def test_compression_lr_multiplier_scales_logit_gradients(where: str) -> None:
    grads = []
    for mult in (1.0, 0.25):
        section = {"sparsity_init": 0.3, **({"compression_lr_multiplier": mult} if where == "section" else {})}
        top = {"compression_lr_multiplier": mult} if where == "top" else {}
        ctrl, model = build(section, **top)
        model.train()
        torch.manual_seed(3)
        (model(X).sum() + ctrl.loss()).backward()
        grads.append([m.logits.grad.clone() for m in masks(model).values()])
    for g1, g2 in zip(*grads):
        assert torch.allclose(g2, 0.25 * g1, rtol=1e-5, atol=1e-8)


def test_exponential_default_schedule_sets_loss_target_and_freezes() -> None:
    ctrl, model = build({"sparsity_init": 0.1, "params": {"sparsity_target": 0.5, "sparsity_target_epoch": 2,
                                                         "sparsity_freeze_epoch": 3}})
    assert type(ctrl.scheduler).__name__ == "ExponentialSparsityScheduler"
    assert ctrl.compression_stage() == nnc.CompressionStage.PARTIALLY_COMPRESSED
    levels = []
    for _ in range(4):
        ctrl.scheduler.epoch_step()
        levels.append(ctrl.rb_loss.target_level)
    assert levels[0] == pytest.approx(0.1) and levels[2] == pytest.approx(0.5)
    assert 0.1 < levels[1] < 0.5
    assert ctrl.frozen and all(m.frozen for m in masks(model).values())
    assert float(ctrl.loss().detach()) == 0.0
    assert ctrl.compression_stage() == nnc.CompressionStage.FULLY_COMPRESSED
    model.train()
    a = model(X)
    assert torch.equal(a, model(X))  # frozen: no noise
    a.sum().backward()
    assert all(m.logits.grad is not None for m in masks(model).values())  # NNCF: still trained by the task


def test_multistep_and_compression_rate_setter() -> None:
    ctrl, _ = build({"params": {"schedule": "multistep", "multistep_steps": [1], "multistep_sparsity_levels": [0.0, 0.4]}})
    assert ctrl.compression_stage() == nnc.CompressionStage.UNCOMPRESSED
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.epoch_step()
    assert ctrl.rb_loss.target_level == 0.4
    ctrl.compression_rate = 0.2
    assert ctrl.rb_loss.target_level == 0.2 and ctrl.compression_rate == 0.0  # measured: nothing dropped yet
    with pytest.raises(InvalidArgumentError, match="1.5"):
        ctrl.set_sparsity_level(1.5)
    with pytest.raises(InvalidArgumentError, match="torch.distributed"):
        ctrl.distributed()  # no process group here


def _spread_logits(model: nn.Module) -> None:
    """Logits around 1 with spread 2, so that some masks drop weights from the start."""
    with torch.no_grad():
        for m in masks(model).values():
            m.logits.normal_(1.0, 2.0)


def _train(ctrl: RBSparsityController, model: nn.Module, steps: int) -> None:
    logits = [m.logits for m in masks(model).values()]
    weights = [p for p in model.parameters() if all(p is not q for q in logits)]
    opt = torch.optim.Adam([{"params": weights, "lr": 1e-2}, {"params": logits, "lr": 0.3}])  # fast mask moves
    model.train()
    for _ in range(steps):
        ctrl.scheduler.step()
        loss = model(X).square().mean() + ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_gives_identical_outputs_state_and_loss(tmp_path: Path) -> None:
    section = {"sparsity_init": 0.5, "params": {"sparsity_target": 0.6, "sparsity_target_epoch": 4,
                                               "sparsity_freeze_epoch": 2}}
    ctrl, model = build(section)
    ctrl.scheduler.epoch_step()
    _spread_logits(model)
    _train(ctrl, model, 20)
    assert ctrl.compression_rate > 0.05
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.epoch_step()  # frozen now
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    ctrl2, model2 = nnc.create_compressed_model(ResidualCNN(), rb_config(section), compression_state=state)
    buf.seek(0)
    model2.load_state_dict(torch.load(buf))
    model.eval()
    model2.eval()
    assert torch.equal(model(X), model2(X))
    assert ctrl2.frozen and ctrl2.current_level == ctrl.current_level
    assert ctrl2.scheduler.get_state() == ctrl.scheduler.get_state()
    assert ctrl2.compression_rate == ctrl.compression_rate
    assert ctrl2.statistics().to_dict() == ctrl.statistics().to_dict()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("loss_state", "target_level"), 1.0, "loss_state.target_level"),
        (("loss_state", "disabled"), 1, "loss_state"),
        (("frozen",), "no", "ctrl_state.rb_sparsity"),
        (("current_level",), -0.5, "ctrl_state.rb_sparsity"),
    ],
)
def test_bad_state_fields_are_refused_and_nothing_changes(path: tuple[str, ...], value: Any, message: str) -> None:
    ctrl, _ = build({"sparsity_init": 0.2})
    state = ctrl.get_compression_state()
    entry = state["ctrl_state"]["rb_sparsity"]
    for key in path[:-1]:
        entry = entry[key]
    entry[path[-1]] = value
    with pytest.raises(CompressionStateError, match=message):
        ctrl.load_state(state["ctrl_state"])
    assert ctrl.rb_loss.target_level == 0.2 and not ctrl.frozen


def test_strip_bakes_the_mask_and_onnx_matches(tmp_path: Path) -> None:
    ctrl, model = build({"sparsity_init": 0.5})
    _spread_logits(model)
    _train(ctrl, model, 20)
    model.eval()
    expected = model(X).detach()
    dropped = sum(int((m.logits <= 0).sum()) for m in masks(model).values())
    assert dropped > 0
    stripped = ctrl.strip(do_copy=True)
    assert type(stripped) is ResidualCNN and not any(isinstance(m, RBMask) for m in stripped.modules())
    zeros = sum(int((stripped.get_parameter(r.weight) == 0).sum()) for r in ctrl.sparsified_weights)
    assert zeros >= dropped
    assert torch.allclose(stripped(X), expected, atol=1e-6)
    path = tmp_path / "rb.onnx"
    ctrl.export_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: X.numpy()})[0]
    assert np.allclose(out, expected.numpy(), atol=1e-5)


def test_model_deepcopies_and_pickles_after_training() -> None:
    ctrl, model = build()
    _train(ctrl, model, 2)
    clone = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    model.eval()
    clone.eval()
    assert torch.equal(model(X), clone(X))


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"params": {"sparsity_level_setting_mode": "local"}}, "compression.params.sparsity_level_setting_mode"),
        ({"sparsity_init": 0.7, "params": {"sparsity_target": 0.5}}, "compression.sparsity_init"),
        ({"params": {"schedule": "multistep", "multistep_steps": [2], "multistep_sparsity_levels": [0.1]}},
         "compression.params.multistep_sparsity_levels"),
        ({"params": {"schedule": "multistep", "multistep_steps": [3, 1], "multistep_sparsity_levels": [0, 0.1, 0.2]}},
         "compression.params.multistep_steps"),
        ({"params": {"sparsity_target": 1.0}}, "compression.params.sparsity_target"),
        ({"params": {"schedule": "polynomial", "power": 0}}, "compression.params.power"),
    ],
)
def test_bad_config_names_the_json_path(section: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(section)
    assert err.value.json_path == path


# -- every NNCF 2.x corpus config with rb_sparsity builds and trains a step on a small model -----------

CORPUS = SHARED / "compat" / "nncf2-configs"
RB_CONFIGS = sorted(p for p in CORPUS.rglob("*.json") if '"rb_sparsity"' in p.read_text()) if CORPUS.exists() else []


class SmallRGBNet(nn.Module):
    """A tiny 3-channel CNN: conv-BN-ReLU, depthwise, pointwise, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.skipif(not RB_CONFIGS, reason="the NNCF 2.x config corpus is not available")
@pytest.mark.parametrize("path", RB_CONFIGS, ids=lambda p: p.name)
def test_corpus_rb_config_builds_and_trains(path: Path) -> None:
    raw = json.loads(path.read_text())
    raw["input_info"] = {"sample_size": [2, 3, 16, 16]}
    sections = raw["compression"] if isinstance(raw["compression"], list) else [raw["compression"]]
    for s in sections:  # the configs' scopes name NNCF's model graphs
        s.pop("ignored_scopes", None)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    init = [(x, torch.zeros(2, dtype=torch.long))]
    ctrl, model = nnc.create_compressed_model(SmallRGBNet(), nnc.CompressionConfig.from_dict(raw), init_data=init)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.step()
    loss = model(x).sum() + ctrl.loss()
    loss.backward()
    opt.step()
    stats = ctrl.statistics().to_dict()
    assert "rb_sparsity/layers_level" in stats
    assert sum(isinstance(m, RBMask) for m in model.modules()) == 4
