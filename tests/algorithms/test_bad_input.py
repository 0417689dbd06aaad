"""Bad input: a specific nncompress error naming the bad value, and the model left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.errors import (
    CaptureError,
    ConfigError,
    InputInfoError,
    ScopeMatchError,
    UnknownAlgorithmError,
    UnsupportedAlgorithmError,
)
from nncompress.torch.runtime import get_runtime
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN


def _assert_untouched(model: nn.Module, keys: list[str]) -> None:
    assert get_runtime(model) is None
    assert list(model.state_dict()) == keys
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "section,error,match",
    [
        ({"params": {"sparsity_targt": 0.5}}, ConfigError, r"compression\.params.*'sparsity_targt'.*did you mean 'sparsity_target'"),
        ({"params": {"sparsity_target": 1.5}}, ConfigError, r"compression\.params\.sparsity_target.*1\.5"),
        ({"params": {"sparsity_target": "high"}}, ConfigError, r"compression\.params\.sparsity_target.*number"),
        ({"params": {"schedule": "cosine"}}, ConfigError, r"compression\.params\.schedule.*polynomial"),
    ],
)
def test_config_errors(section: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        nnc.CompressionConfig.from_dict(
            {"input_info": {"sample_size": [1, 1, 8, 8]}, "compression": {"algorithm": "magnitude_sparsity", **section}}
        )


def test_unknown_and_unsupported_algorithms() -> None:
    with pytest.raises(UnknownAlgorithmError, match="did you mean 'magnitude_sparsity'"):
        nnc.CompressionConfig.from_dict({"compression": {"algorithm": "magnitude_sparsty"}})
    with pytest.raises(UnsupportedAlgorithmError, match="not supported"):
        nnc.CompressionConfig.from_dict({"compression": {"algorithm": "movement_sparsity", "params": {
            "warmup_start_epoch": 1, "warmup_end_epoch": 3, "importance_regularization_factor": 0.01}}})


def test_scope_that_matches_nothing(cnn: ResidualCNN) -> None:
    keys = list(cnn.state_dict())
    with pytest.raises(ScopeMatchError, match=r"compression\.ignored_scopes\[0\].*'ResidualCNN/Linear\[head\]'"):
        nnc.create_compressed_model(cnn, sparsity_config(ignored_scopes=["ResidualCNN/Linear[head]"]))
    _assert_untouched(cnn, keys)
    ctrl, _ = nnc.create_compressed_model(
        cnn, sparsity_config(ignored_scopes=["ResidualCNN/Linear[head]"], validate_scopes=False)
    )
    assert len(ctrl.sparsified_weights) == 6


def test_scopes_select_and_report(cnn: ResidualCNN) -> None:
    ctrl, _ = nnc.create_compressed_model(
        cnn, sparsity_config(ignored_scopes=["{re}.*stem.*"], target_scopes=["{re}.*(Conv2d|Linear).*"])
    )
    names = [r.weight for r in ctrl.sparsified_weights]
    assert "stem.0.weight" not in names and "fc.weight" in names
    report = {r.weight: r for r in ctrl.capture_report.rows}
    assert not report["stem.0.weight"].compressed
    assert "ignored_scopes" in report["stem.0.weight"].reason
    assert "only 1-D" in report["stem.1.weight"].reason
    assert "ignored_scopes" in ctrl.capture_report.to_str()


def test_input_info_that_does_not_fit(cnn: ResidualCNN) -> None:
    keys = list(cnn.state_dict())
    with pytest.raises(InputInfoError, match=r"input_info.*\(2, 3, 8, 8\)"):
        nnc.create_compressed_model(cnn, sparsity_config(sample_size=(2, 3, 8, 8)))
    _assert_untouched(cnn, keys)


def test_missing_input_info(cnn: ResidualCNN) -> None:
    with pytest.raises(InputInfoError, match="example_input"):
        nnc.create_compressed_model(cnn, {"compression": {"algorithm": "magnitude_sparsity"}})


def test_model_failing_during_capture() -> None:
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = Fails()
    with pytest.raises(CaptureError, match="boom"):
        nnc.create_compressed_model(model, {"compression": {"algorithm": "magnitude_sparsity"}},
                                    example_input=torch.ones(1, 4))
    _assert_untouched(model, ["fc.weight", "fc.bias"])


def test_model_already_compressed(cnn: ResidualCNN) -> None:
    nnc.create_compressed_model(cnn, sparsity_config())
    with pytest.raises(ValueError, match="already compressed"):
        nnc.create_compressed_model(cnn, sparsity_config())


def test_level_rules_the_schema_cannot_express(cnn: ResidualCNN) -> None:
    with pytest.raises(ConfigError, match=r"compression\.sparsity_init.*above params\.sparsity_target"):
        nnc.create_compressed_model(cnn, sparsity_config({"sparsity_init": 0.8, "sparsity_target": 0.5}))
    with pytest.raises(ConfigError, match="multistep_sparsity_levels"):
        nnc.create_compressed_model(
            cnn, sparsity_config({"schedule": "multistep", "multistep_steps": [1, 2], "multistep_sparsity_levels": [0.5]})
        )
    with pytest.warns(UserWarning, match="update_per_optimizer_step"):
        nnc.create_compressed_model(cnn, sparsity_config({"schedule": "exponential", "update_per_optimizer_step": True}))


def test_one_section_per_algorithm(cnn: ResidualCNN) -> None:
    section = {"algorithm": "magnitude_sparsity"}
    config = {"input_info": {"sample_size": [1, 1, 8, 8]}, "compression": [section, section]}
    with pytest.raises(ConfigError, match=r"compression\[1\]\.algorithm.*already appears at compression\[0\]"):
        nnc.create_compressed_model(cnn, config)
    assert get_runtime(cnn) is None


def test_config_without_compression_inserts_nothing(cnn: ResidualCNN) -> None:
    keys = list(cnn.state_dict())
    nnc.create_compressed_model(cnn, {"input_info": {"sample_size": [1, 1, 8, 8]}})
    _assert_untouched(cnn, keys)


@pytest.mark.parametrize("scope", [
    "{re}(?<=__mul__|abcdefg)x",  # NNCF's __mul__ becomes mul: look-behind widths 3 and 7
    "{re}(?P<mul>a)|(?P<__mul__>b)",  # ... and a second group named mul
])
def test_scope_regex_is_validated_as_the_matcher_compiles_it(cnn: ResidualCNN, scope: str) -> None:
    """A regex valid as written, but not once NNCF 2.x's names in it are translated, is a
    ConfigError at validation (before: a bare re.error from create_compressed_model)."""
    keys = list(cnn.state_dict())
    with pytest.raises(ConfigError, match="is not a regular expression") as info:
        config = sparsity_config(ignored_scopes=["{re}.*fc.*", scope])
        nnc.create_compressed_model(cnn, config)
    assert info.value.json_path == "compression.ignored_scopes[1]"
    _assert_untouched(cnn, keys)


def test_scope_regex_valid_only_once_translated_is_accepted(cnn: ResidualCNN) -> None:
    # (?<=abc|__mul__) has look-behinds of 3 and 7 characters as written, 3 and 3 for the matcher
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config(ignored_scopes=["{re}(?<=abc|__mul__)x|.*fc.*"]))
    assert ctrl.capture_report.compressed
