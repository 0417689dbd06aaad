"""A forward whose op sequence differs from the captured one never silently mis-places inserted
modules (issue 8): an op capture did not see that could shift a point raises GraphMismatchError,
a skipped op in a family with a point raises after the forward, an unseen layer warns once."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode

import nncompress as nnc
from nncompress.errors import GraphMismatchError
from nncompress.torch.runtime import get_runtime
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ControlFlowNet


class Branchy(nn.Module):
    """A data-dependent branch in the root scope, before the op whose output feeds ``fc2``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1000:  # not taken on the example input
            x = torch.relu(x) * 3
        h = torch.relu(self.fc1(x))  # Branchy/relu_0 at capture; its output is quantized for fc2
        return self.fc2(h)


class WithLoss(Branchy):
    """Computes its loss in the forward, after the output (as Hugging Face models do with labels)."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        out = self.fc2(torch.relu(self.fc1(x)))
        if labels is None:
            return out
        return torch.relu(out).sum() + F.cross_entropy(out, labels)  # relu_1: a new line, after the points


def _qat(model: nn.Module, sample: list[int]) -> nn.Module:
    config = {"input_info": {"sample_size": sample},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}}}
    g = torch.Generator().manual_seed(0)
    _, compressed = nnc.create_compressed_model(model, config, init_data=[torch.randn(16, *sample[1:], generator=g)])
    return compressed


def test_unseen_branch_before_a_quantized_op_raises_and_names_it() -> None:
    torch.manual_seed(0)
    model = _qat(Branchy(), [2, 8])
    assert "Branchy/relu_0" in get_runtime(model).post_points  # type: ignore[union-attr]
    x = torch.randn(4, 8)
    model(x)  # the captured path runs
    with pytest.raises(GraphMismatchError, match=r"Branchy/relu_1 .*test_graph_mismatch\.py:\d+.* 1 'relu' call"):
        model(x + 1000)  # the branch's relu would take the name (and quantizer) of the captured one
    assert _get_current_function_mode() is None
    assert torch.isfinite(model(x)).all()  # the runtime is intact after the error


def test_new_ops_after_the_points_are_allowed() -> None:
    torch.manual_seed(0)
    model = _qat(WithLoss(), [2, 8])
    x, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    plain = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no param is read by the new ops: not even a warning
        loss = model(x, labels)
    expected = torch.relu(plain(x)).sum() + F.cross_entropy(plain(x), labels)
    torch.testing.assert_close(loss, expected)


def test_skipped_op_of_a_quantized_family_raises_after_the_forward() -> None:
    torch.manual_seed(0)
    model = _qat(ControlFlowNet(), [2, 8])  # batch 2: two muls, the second one's output is quantized
    assert "ControlFlowNet/mul_1" in get_runtime(model).post_points  # type: ignore[union-attr]
    model(torch.randn(3, 8))
    with pytest.raises(GraphMismatchError, match=r"ran 1 'mul' call\(s\) in ControlFlowNet, capture counted 2"):
        model(torch.randn(1, 8))  # batch 1 runs one mul: the head's input quantizer would not run
    assert _get_current_function_mode() is None


def test_mismatch_is_detected_when_the_model_runs_inside_an_except_block() -> None:
    torch.manual_seed(0)
    model = _qat(ControlFlowNet(), [2, 8])
    try:
        raise KeyError("a caller's own error, being handled")
    except KeyError:  # the runtime must not take the handled error for a failure of the forward
        with pytest.raises(GraphMismatchError, match=r"ran 1 'mul' call\(s\) in ControlFlowNet, capture counted 2"):
            model(torch.randn(1, 8))
    assert _get_current_function_mode() is None


def test_a_failed_forward_is_not_checked() -> None:
    torch.manual_seed(0)
    model = _qat(ControlFlowNet(), [2, 8])
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="mat1 and mat2"):
        warnings.simplefilter("error")  # (torch turns an error of an always_call hook into a warning)
        model(torch.randn(1, 5))  # fails in its first layer: partial counts, not compared with capture's
    model(torch.randn(3, 8))  # and the runtime is intact


def test_unseen_layer_touching_no_point_warns_once() -> None:
    class Extra(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(8, 8)
            self.extra = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.body(x)
            return self.extra(h) if x.shape[0] == 4 else h  # not for the example (2) nor init data (16)

    torch.manual_seed(0)
    model = _qat(Extra(), [2, 8])
    with pytest.warns(UserWarning, match=r"Extra/Linear\[extra\]/linear_0 did not run when the model was captured"):
        model(torch.randn(4, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(4, 8))  # once per model


def test_models_without_operation_points_are_not_checked() -> None:
    torch.manual_seed(0)
    _, model = nnc.create_compressed_model(ControlFlowNet(), sparsity_config({"sparsity_init": 0.5}, sample_size=(2, 8)))
    assert not get_runtime(model).op_points  # type: ignore[union-attr]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in (torch.ones(1, 8), -torch.ones(2, 8), torch.ones(3, 8)):
            model(x)  # masks are keyed by the parameter: any path is fine


def test_layout_applied_by_hand_is_not_checked() -> None:
    from nncompress.graph.layout import InsertionCommand, TargetPoint, TargetType, TransformationLayout
    from nncompress.torch.insertion import apply_layout

    model = Branchy()
    layout = TransformationLayout()
    layout.register(InsertionCommand(TargetPoint(TargetType.OPERATION_OUTPUT, "Branchy/relu_0"), nn.Identity(), "t"))
    apply_layout(model, layout)  # no capture of this model was registered: nothing to compare with
    model(torch.randn(2, 8) + 1000)
