"""Capture: every op of one forward with stable names, on the model shapes users have."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nncompress.errors import CaptureError
from nncompress.graph.capture import capture
from nncompress.graph.scopes import scope_matches
from tests.model_zoo import ControlFlowNet, FunctionalNet, ResidualCNN


def test_cnn_residual_and_depthwise(cnn: ResidualCNN) -> None:
    g = capture(cnn, (torch.randn(2, 1, 8, 8),))
    weighted = {n.name: n for n in g.weighted_nodes() if n.weight is not None}
    assert "ResidualCNN/Sequential[stem]/Conv2d[0]/conv2d_0" in weighted
    dw = weighted["ResidualCNN/Sequential[blocks]/ResidualBlock[0]/Conv2d[dw]/conv2d_0"]
    assert dw.weight is not None and dw.weight.qualified_name == "blocks.0.dw.weight"
    assert dw.weight.shape == (16, 1, 3, 3)
    assert "ResidualCNN/Sequential[blocks]/ResidualBlock[1]/add_0" in g.nodes
    add = g.nodes["ResidualCNN/Sequential[blocks]/ResidualBlock[1]/add_0"]
    assert len(add.inputs) == 2 and all(add.inputs)  # both inputs produced by recorded ops
    assert "ResidualCNN/Linear[fc]/linear_0" in weighted


def test_names_are_stable_across_runs(cnn: ResidualCNN) -> None:
    x = torch.randn(2, 1, 8, 8)
    assert list(capture(cnn, (x,)).nodes) == list(capture(cnn, (x,)).nodes)


def test_capture_leaves_model_and_rng_untouched(cnn: ResidualCNN) -> None:
    cnn.train()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    capture(cnn, (torch.randn(4, 1, 8, 8) * 3 + 1,))
    after = cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats restored
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cnn.modules())


def test_capture_restores_rng_state(cnn: ResidualCNN) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    capture(nn.Sequential(nn.Dropout(0.5)), (torch.ones(10),))
    assert torch.equal(torch.rand(3), expected)


def test_data_dependent_control_flow(control_flow_net: ControlFlowNet) -> None:
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(control_flow_net)  # what nncompress does not depend on
    g = capture(control_flow_net, (torch.ones(2, 8),))
    names = [n.name for n in g.weighted_nodes()]
    assert names[0] == "ControlFlowNet/Linear[a]/linear_0"
    assert "ControlFlowNet/Linear[head]/linear_0" in names


def test_functional_matmul_and_linear(functional_net: FunctionalNet) -> None:
    g = capture(functional_net, (torch.randn(3, 5, 8),))
    weighted = {n.name: n for n in g.weighted_nodes()}
    assert set(weighted) == {"FunctionalNet/matmul_0", "FunctionalNet/linear_0"}
    assert weighted["FunctionalNet/matmul_0"].weight.qualified_name == "w_in"  # type: ignore[union-attr]
    assert weighted["FunctionalNet/linear_0"].weights[0].param == "w_out"
    assert "FunctionalNet/matmul_1" in g.nodes and "FunctionalNet/softmax_0" in g.nodes


def test_bert_model_from_config() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg)
    g = capture(bert, (), {"input_ids": torch.zeros(1, 6, dtype=torch.long)})
    linear = [n for n in g.weighted_nodes() if n.op == "linear"]
    # 2 layers x (q, k, v, attention output, intermediate, output) + pooler
    assert len(linear) == 13
    assert any("BertSelfAttention" in n.scope and "query" in n.scope for n in linear)
    assert any(n.op == "embedding" for n in g.weighted_nodes())


def test_failure_names_last_op() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).view(3, 7)

    with pytest.raises(CaptureError, match=r"at or after op Broken/view_0"):
        capture(Broken(), (torch.ones(1, 4),))


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("Net/Conv2d[conv1]/conv2d_0", True),
        ("Net/Conv2d[conv1]", True),
        ("Net/Conv2d[conv", False),
        ("{re}.*conv1.*", True),
        ("{re}Linear", False),
        ("Net/NNCFConv2d[conv1]/conv2d_0", True),
    ],
)
def test_scope_matching(pattern: str, expected: bool) -> None:
    assert scope_matches("Net/Conv2d[conv1]/conv2d_0", pattern) is expected
