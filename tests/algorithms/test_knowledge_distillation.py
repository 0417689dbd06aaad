"""knowledge_distillation: teacher copy, loss values, gradients, modes, state, composition, strip/export."""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.algorithms.distillation import KnowledgeDistillationController
from nncompress.algorithms.distillation.teacher import TeacherRunner, distilling
from nncompress.errors import ConfigError, DistillationError, InvalidArgumentError

KD = "knowledge_distillation"


class Net(nn.Module):
    """conv + BN + dropout + linear; ``out`` picks the return structure."""

    def __init__(self, out: str = "tensor") -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 16, 5)
        self.out = out

    def forward(self, x: torch.Tensor) -> Any:
        feats = F.relu(self.bn(self.conv(x)))  # (B, 4, 4, 4)
        logits = self.fc(self.drop(feats.flatten(1)))  # (B, 5)
        if self.out == "tensor":
            return logits
        if self.out == "dict":  # logits, a 4-D feature map, a scalar "loss" and a non-tensor
            return {"logits": logits, "features": feats, "loss": logits.pow(2).mean(), "n": 3}
        if self.out == "tuple":
            return logits, logits * 2
        return logits.unsqueeze(1)  # (B, 1, 5): not 2-D


def config(*extra: dict[str, Any], **kd: Any) -> dict[str, Any]:
    return {"input_info": {"sample_size": [2, 1, 4, 4]},
            "compression": [*extra, {"algorithm": KD, "type": "softmax", **kd}]}


def kd_of(ctrl: Any) -> KnowledgeDistillationController:
    found = [c for c in getattr(ctrl, "child_ctrls", [ctrl]) if c.name == KD]
    assert isinstance(found[0], KnowledgeDistillationController)
    return found[0]


def make(out: str = "tensor", seed: int = 0, **kw: Any) -> tuple[Any, nn.Module, nn.Module]:
    """(ctrl, compressed model, an untouched copy of the original)."""
    torch.manual_seed(seed)
    model = Net(out)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN differs from batch statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    original = copy.deepcopy(model)
    ctrl, compressed = nnc.create_compressed_model(model, kw.pop("cfg", None) or config(**kw))
    return ctrl, compressed, original


def teacher_reference(original: nn.Module, x: torch.Tensor) -> Any:
    """What the teacher computes: training mode, BatchNorm and dropout in eval mode."""
    ref = copy.deepcopy(original).train()
    ref.bn.eval()
    ref.drop.eval()
    with torch.no_grad():
        return ref(x)


X = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("kd", "scale", "temperature"), [("softmax", 1.0, 1.0), ("softmax", 0.5, 3.0), ("mse", 2.0, None)])
def test_loss_value_against_float64_reference(kd: str, scale: float, temperature: float | None) -> None:
    params = {"type": kd, "scale": scale} | ({"temperature": temperature} if temperature else {})
    ctrl, model, original = make(**params)
    model.train()
    torch.manual_seed(5)
    student = model(X)
    t = teacher_reference(original, X).double()
    s = student.detach().double()
    if kd == "softmax":
        assert temperature is not None
        p_t = torch.softmax(t / temperature, 1)
        ref = scale * float(-(p_t * torch.log_softmax(s / temperature, 1)).sum(1).mean()) * temperature**2
    else:
        ref = scale * float(((s - t) ** 2).mean())
    assert float(ctrl.loss().detach()) == pytest.approx(ref, rel=1e-5)


def test_gradient_reaches_the_student_only_and_the_teacher_stays_frozen() -> None:
    ctrl, model, original = make()
    kd = kd_of(ctrl)
    teacher_ids = {id(p) for p in kd.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert set(model.state_dict()) == set(original.state_dict())  # no teacher keys, no others (empty layout)
    before = copy.deepcopy(kd.teacher.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(X)
        ctrl.loss().backward()
        opt.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (model.conv.weight, model.fc.weight))
    assert all(p.grad is None and not p.requires_grad for p in kd.teacher.parameters())
    for k, v in kd.teacher.state_dict().items():  # BN running statistics included
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.fc.weight, original.fc.weight)


def test_eval_and_no_grad_forwards_do_not_run_the_teacher() -> None:
    ctrl, model, _ = make()
    calls = []
    kd_of(ctrl).teacher.register_forward_hook(lambda *a: calls.append(1))
    assert float(ctrl.loss()) == 0.0  # no forward yet: a zero scalar
    model.eval()
    model(X)
    assert calls == [] and float(ctrl.loss()) == 0.0
    model.train()
    model(X)
    value = float(ctrl.loss().detach())
    assert calls == [1] and value > 0
    model.eval()
    model(X)  # as NNCF 2.x: eval forwards leave the last training loss
    assert calls == [1] and float(ctrl.loss().detach()) == value
    model.train()
    with torch.no_grad():
        model(X)  # a training forward without gradients: no teacher, loss 0
    assert calls == [1] and float(ctrl.loss()) == 0.0


def test_state_round_trip_gives_the_same_loss() -> None:
    ctrl, model, original = make(temperature=2.0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(X)
        ctrl.loss().backward()
        opt.step()
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    assert {k: v for k, v in state["ctrl_state"][KD].items() if k != "teacher_fingerprint"} == {
        "scheduler_state": {"current_step": -1, "current_epoch": -1}, "loss_state": {}}
    ctrl2, model2 = nnc.create_compressed_model(copy.deepcopy(original), config(temperature=2.0),
                                                compression_state=state)
    model2.load_state_dict(model.state_dict())
    for m in (model, model2):
        torch.manual_seed(3)  # the same dropout mask in both students
        m(X)
    assert float(ctrl2.loss().detach()) == pytest.approx(float(ctrl.loss().detach()), rel=1e-6)
    with pytest.raises(nnc.errors.CompressionStateError):
        nnc.create_compressed_model(copy.deepcopy(original), config(temperature=3.0), compression_state=state)


def test_resume_from_a_model_with_other_weights_warns_that_the_teacher_differs() -> None:
    # The teacher is not in the checkpoint: resuming from a fresh (untrained) model would silently
    # distil towards a random network.
    ctrl, model, original = make()
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnc.create_compressed_model(copy.deepcopy(original), config(), compression_state=state)
    fresh = make(seed=1)[2]
    with pytest.warns(UserWarning, match=r"teacher.*differ"):
        _, student = nnc.create_compressed_model(fresh, config(), compression_state=state)
    student.load_state_dict(model.state_dict())  # the checkpoint still loads
    bad = copy.deepcopy(state)
    bad["ctrl_state"][KD]["teacher_fingerprint"] = ["x", 1.0]
    with pytest.raises(nnc.errors.CompressionStateError, match="teacher_fingerprint"):
        nnc.create_compressed_model(copy.deepcopy(original), config(), compression_state=bad)
    del bad["ctrl_state"][KD]["teacher_fingerprint"]  # a state written before the field existed
    nnc.create_compressed_model(copy.deepcopy(original), config(), compression_state=bad)


def test_composite_with_sparsity_and_quantization_sums_losses_and_teacher_is_uncompressed() -> None:
    torch.manual_seed(0)
    model = Net()
    original = copy.deepcopy(model)
    data = [(torch.randn(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    cfg = config({"algorithm": "magnitude_sparsity", "sparsity_init": 0.5},
                 {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16},
                                                               "batchnorm_adaptation": {"num_bn_adaptation_samples": 16}}})
    ctrl, model = nnc.create_compressed_model(model, cfg, init_data=data)
    kd = kd_of(ctrl)
    assert float(ctrl.loss()) == 0.0  # BatchNorm adaptation's training-mode forwards run without gradients
    assert not any("nncompress" in k for k in kd.teacher.state_dict())
    model.train()
    out = model(X)
    total = ctrl.loss()
    parts = [c.loss() for c in ctrl.child_ctrls]
    assert float(total.detach()) == pytest.approx(sum(float(p.detach()) for p in parts), rel=1e-6)
    assert float(kd.loss().detach()) > 0
    # the teacher is the dense FP32 original, not the sparse quantized student
    torch.testing.assert_close(kd.teacher(X), teacher_reference(original, X))
    assert not torch.allclose(out.detach(), teacher_reference(original, X), atol=1e-3)
    (F.cross_entropy(out, torch.zeros(6, dtype=torch.long)) + total).backward()
    assert all(p.grad is None for p in kd.teacher.parameters())
    assert ctrl.maximal_compression_rate == 1.0  # distillation does not lower the sparsity's maximum


def test_strip_and_export_leave_the_teacher_out(tmp_path: Path) -> None:
    ctrl, model, original = make(cfg=config({"algorithm": "magnitude_sparsity", "sparsity_init": 0.5}))
    kd = kd_of(ctrl)
    copied = copy.deepcopy(model)  # a copy shares the runner (the teacher is not copied), which ignores it
    assert kd.teacher is next(h for h in copied._forward_hooks.values() if isinstance(h, TeacherRunner)).teacher
    assert not distilling(copied) and distilling(model)
    stripped = ctrl.strip()
    assert not any(isinstance(h, TeacherRunner) for h in stripped._forward_hooks.values())
    assert set(stripped.state_dict()) == set(original.state_dict())
    assert distilling(model)  # the model itself still trains with the teacher
    path = tmp_path / "kd.onnx"
    ctrl.export_model(str(path))
    session = ort.InferenceSession(str(path))
    assert len(session.get_inputs()) == 1 and len(session.get_outputs()) == 1
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = stripped.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # a pickled model gets an inert runner
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert not distilling(loaded)
    ctrl.strip(do_copy=False)
    assert not distilling(model)


def test_nested_outputs_distil_requiring_grad_tensors_by_path() -> None:
    ctrl, model, original = make("dict", type="mse")
    model.train()
    s = model(X)
    t = teacher_reference(original, X)
    ref = F.mse_loss(s["logits"], t["logits"]) + F.mse_loss(s["features"], t["features"])  # scalar "loss" skipped
    assert float(ctrl.loss().detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    ctrl, model, original = make("tuple")
    model.train()
    a, b = model(X)
    ta, tb = teacher_reference(original, X)
    ref = sum(-(torch.softmax(t, 1) * torch.log_softmax(s, 1)).sum(1).mean() for s, t in ((a, ta), (b, tb)))
    assert float(ctrl.loss().detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    ctrl, model, _ = make("dict")
    model.train()
    with pytest.warns(UserWarning, match=r"left out: output\['features'\]"):
        model(X)  # softmax: 2-D logits only, as NNCF; the 4-D features are left out with a warning
    assert float(ctrl.loss().detach()) > 0


def test_hugging_face_model_output_skips_the_loss_field() -> None:
    modeling_outputs = pytest.importorskip("transformers.modeling_outputs")

    class HFLike(Net):
        def forward(self, x: torch.Tensor) -> Any:
            logits = super().forward(x)
            return modeling_outputs.SequenceClassifierOutput(loss=logits.logsumexp(1).mean(), logits=logits)

    torch.manual_seed(0)
    model = HFLike()
    original = copy.deepcopy(model)
    ctrl, model = nnc.create_compressed_model(model, config())
    model.train()
    s = model(X).logits
    t = teacher_reference(original, X).logits
    ref = -(torch.softmax(t, 1) * torch.log_softmax(s, 1)).sum(1).mean()
    assert float(ctrl.loss().detach()) == pytest.approx(float(ref.detach()), rel=1e-6)


def test_outputs_the_loss_cannot_take_raise_a_clear_error() -> None:
    _, model, _ = make("3d")
    model.train()
    with pytest.raises(DistillationError, match=r"softmax.*output \(6, 1, 5\).*2-D logits.*type 'mse'"):
        model(X)

    class ScalarOut(Net):
        def forward(self, x: torch.Tensor) -> Any:
            return super().forward(x).pow(2).mean()

    ctrl, model = nnc.create_compressed_model(ScalarOut(), config(type="mse"))
    model.train()
    with pytest.raises(DistillationError, match=r"'mse'.*output \(\).*2 or more dimensions"):
        model(X)


@pytest.mark.parametrize(("section", "match"), [
    ({"type": "mse", "temperature": 2.0}, r"compression\[0\]\.temperature: .*softmax"),
    ({"type": "softmax", "temperature": 0}, r"compression\[0\]\.temperature: .*> 0"),
    ({"type": "softmax", "scale": -1.0}, r"compression\[0\]\.scale: .*>= 0"),
    ({"type": "kl"}, r"type"),
])
def test_bad_sections_raise_config_errors(section: dict[str, Any], match: str) -> None:
    cfg = {"input_info": {"sample_size": [2, 1, 4, 4]}, "compression": [{"algorithm": KD, **section}]}
    model = Net()
    with pytest.raises(ConfigError, match=match):
        nnc.create_compressed_model(model, cfg)
    assert not model._forward_hooks


def test_failed_creation_leaves_no_hook_and_a_distilled_model_is_refused_twice() -> None:
    model = Net()
    cfg = config({"algorithm": "quantization"})  # range init without init_data fails after the controllers exist
    with pytest.raises(nnc.errors.InitDataError):
        nnc.create_compressed_model(model, cfg)
    assert not model._forward_hooks and not hasattr(model, "nncompress")
    _, model, _ = make()
    with pytest.raises(InvalidArgumentError, match="already compressed"):
        nnc.create_compressed_model(model, config())


def test_teacher_follows_the_student_dtype() -> None:
    ctrl, model, original = make(type="mse")
    model.double().train()
    model(X.double())
    teacher = kd_of(ctrl).teacher
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    assert teacher.bn.running_var.dtype == torch.float64 and teacher.bn.num_batches_tracked.dtype == torch.int64
    ref = F.mse_loss(model(X.double()), teacher_reference(original.double(), X.double()))
    assert float(ctrl.loss().detach()) == pytest.approx(float(ref.detach()), rel=1e-9)
    stats = ctrl.statistics()
    assert stats.to_dict() == {"knowledge_distillation/loss": pytest.approx(float(ref.detach()), rel=1e-9)}
    assert "mse" in stats.to_str()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_follows_the_student_to_cuda() -> None:
    ctrl, model, original = make(type="mse")
    model.cuda().train()
    out = model(X.cuda())
    teacher = kd_of(ctrl).teacher
    assert all(t.is_cuda for t in [*teacher.parameters(), *teacher.buffers()])
    ref = F.mse_loss(out.cpu(), teacher_reference(original, X))
    assert float(ctrl.loss().detach().cpu()) == pytest.approx(float(ref.detach()), rel=1e-4)


def test_data_parallel_replicas_raise_instead_of_training_without_the_teacher() -> None:
    _, model, _ = make()
    replica = model._replicate_for_data_parallel()  # what nn.DataParallel runs on each device
    replica.train()
    with pytest.raises(DistillationError, match="DataParallel"):
        replica(X)
    replica.eval()
    replica(X)  # evaluation under DataParallel is fine


def test_bert_keyword_inputs_with_quantization_distil_the_logits() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3))
    original = copy.deepcopy(bert)
    ids = torch.randint(0, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    cfg = {"input_info": [{"sample_size": [2, 6], "type": "long", "keyword": "input_ids"}],
           "compression": [{"algorithm": "quantization"}, {"algorithm": KD, "type": "softmax", "temperature": 3.0}]}
    ctrl, model = nnc.create_compressed_model(bert, cfg, init_data=[{"input_ids": ids}])
    model.train()
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 2, 0]))
    with torch.no_grad():
        t = original.train()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.double()
    s = out.logits.detach().double()
    ref = -(torch.softmax(t / 3, 1) * torch.log_softmax(s / 3, 1)).sum(1).mean() * 9  # the loss field is skipped
    assert float(ctrl.loss().detach()) == pytest.approx(float(ref), rel=1e-5)
    (out.loss + ctrl.loss()).backward()
