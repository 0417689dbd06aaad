"""CompressionConfig: loading, typed views and error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nncompress.config import AlgorithmSection, CompressionConfig, InputInfo
from nncompress.config.validation import format_json_path
from nncompress.errors import (
    ConfigError,
    InvalidArgumentError,
    UnknownAlgorithmError,
    UnsupportedAlgorithmError,
)

INPUT = {"sample_size": [1, 3, 8, 8]}


def _config(compression: Any, **extra: Any) -> dict[str, Any]:
    return {"input_info": INPUT, "compression": compression, **extra}


def _error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_dict(data)
    return info.value


# --- loading -------------------------------------------------------------------------------------


def test_from_dict_copies_and_keeps_unknown_top_level_keys() -> None:
    data = _config(
        {"algorithm": "magnitude_sparsity", "params": {"sparsity_target": 0.5}},
        model="resnet18",
        optimizer={"type": "Adam", "base_lr": 0.001},
        batch_size=32,
    )
    config = CompressionConfig.from_dict(data)
    data["compression"]["params"]["sparsity_target"] = 0.9
    assert isinstance(config, dict)
    assert config["model"] == "resnet18"
    assert config["optimizer"] == {"type": "Adam", "base_lr": 0.001}
    assert config["batch_size"] == 32
    assert config["compression"]["params"]["sparsity_target"] == 0.5


def test_to_json_round_trips() -> None:
    config = CompressionConfig.from_dict(_config([{"algorithm": "const_sparsity"}], dataset="cifar10"))
    assert CompressionConfig.from_dict(json.loads(config.to_json())) == config
    assert "\n" not in config.to_json(indent=None)


def test_from_json_reads_file_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        '{\n  // NNCF 2.x read configs with jstyleson\n  "input_info": {"sample_size": [1, 4]},\n'
        '  "compression": {"algorithm": "const_sparsity", /* no params */},\n}\n',
        encoding="utf-8",
    )
    config = CompressionConfig.from_json(path)
    assert config.algorithm_sections()[0].algorithm == "const_sparsity"


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "input_info": {"sample_size": [1, 4]}\n  "compression": []\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json is not valid JSON: .*\(line 3, column 3\)"):
        CompressionConfig.from_json(path)


@pytest.mark.parametrize("text", ["[1, 2]", '"config"'])
def test_json_that_is_not_an_object_is_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        CompressionConfig.from_json(path)


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        CompressionConfig.from_dict([("input_info", INPUT)])  # type: ignore[arg-type]


def test_validate_catches_edits_after_loading() -> None:
    config = CompressionConfig.from_dict(_config({"algorithm": "magnitude_sparsity"}))
    config["compression"]["sparsity_init"] = 2
    with pytest.raises(ConfigError, match=r"^compression\.sparsity_init: 2 is out of range"):
        config.validate()


# --- error messages ------------------------------------------------------------------------------


def test_unknown_key_gets_did_you_mean() -> None:
    error = _error(_config([{"algorithm": "magnitude_sparsity", "params": {"sparsity_targt": 0.5}}]))
    assert str(error).startswith(
        "compression[0].params: unknown key 'sparsity_targt'; did you mean 'sparsity_target'?"
    )
    assert "Allowed keys: concave, " in str(error)
    assert error.json_path == "compression[0].params"
    assert error.value == "sparsity_targt"


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"sparsity_target": 1.5}, "compression.params.sparsity_target"),
        ({"multistep_sparsity_levels": [0.2, 1.5]}, "compression.params.multistep_sparsity_levels[1]"),
    ],
)
def test_sparsity_level_above_one_is_rejected(params: dict[str, Any], path: str) -> None:
    error = _error(_config({"algorithm": "magnitude_sparsity", "params": params}))
    assert type(error) is ConfigError
    assert str(error) == f"{path}: 1.5 is out of range; allowed: a number in [0, 1]"
    assert error.value == 1.5


def test_wrong_type_is_rejected_with_path() -> None:
    error = _error(_config([{"algorithm": "magnitude_sparsity", "params": {"sparsity_target": "0.5"}}]))
    assert str(error).startswith("compression[0].params.sparsity_target: expected a number, got string '0.5'")


def test_bad_enum_value_lists_allowed_values() -> None:
    error = _error(_config({"algorithm": "magnitude_sparsity", "params": {"schedule": "polinomial"}}))
    assert str(error) == (
        "compression.params.schedule: 'polinomial' is not allowed; expected one of: "
        "polynomial, exponential, adaptive, multistep; did you mean 'polynomial'?"
    )


def test_unknown_algorithm_gets_did_you_mean() -> None:
    error = _error(_config([{"algorithm": "const_sparsity"}, {"algorithm": "magnitude_sparsty"}]))
    assert isinstance(error, UnknownAlgorithmError)
    assert str(error).startswith(
        "compression[1].algorithm: unknown algorithm 'magnitude_sparsty'; did you mean 'magnitude_sparsity'?"
    )
    assert "Known NNCF 2.x algorithms: binarization, const_sparsity" in str(error)


def test_missing_algorithm_key() -> None:
    error = _error(_config([{"params": {}}]))
    assert str(error) == "compression[0]: missing required key 'algorithm'"


MOVEMENT_PARAMS = {"warmup_start_epoch": 1, "warmup_end_epoch": 3, "importance_regularization_factor": 0.01}


@pytest.mark.parametrize(
    ("sections", "path"),
    [
        ({"algorithm": "movement_sparsity", "params": MOVEMENT_PARAMS}, "compression.algorithm"),
        ([{"algorithm": "magnitude_sparsity"}, {"algorithm": "movement_sparsity", "params": MOVEMENT_PARAMS}],
         "compression[1].algorithm"),
    ],
)
def test_known_but_unbuilt_algorithm_is_unsupported(sections: Any, path: str) -> None:
    error = _error(_config(sections))
    assert isinstance(error, UnsupportedAlgorithmError)
    assert isinstance(error, NotImplementedError)
    assert str(error) == (
        f"{path}: 'movement_sparsity' is not supported by nncompress (it is not planned); supported: "
        "const_sparsity, filter_pruning, knowledge_distillation, magnitude_sparsity, quantization, rb_sparsity"
    )


def test_schema_errors_come_before_unsupported() -> None:
    params = {**MOVEMENT_PARAMS, "schedule": "threshold_polynomal_decay"}
    error = _error(_config({"algorithm": "movement_sparsity", "params": params}))
    assert type(error) is ConfigError
    assert "did you mean 'threshold_polynomial_decay'?" in str(error)


def test_bootstrap_nas_is_unsupported() -> None:
    error = _error(
        {"input_info": INPUT, "bootstrapNAS": {"training": {"algorithm": "progressive_shrinking"}}}
    )
    assert isinstance(error, UnsupportedAlgorithmError)
    assert error.json_path == "bootstrapNAS"


def test_target_device() -> None:
    assert CompressionConfig.from_dict({"input_info": INPUT}).target_device == "ANY"
    assert CompressionConfig.from_dict({"target_device": "NPU"}).target_device == "NPU"
    error = _error({"target_device": "CPUU"})
    assert str(error).startswith("target_device: 'CPUU' is not allowed; expected one of: ANY, CPU, GPU")


def test_log_dir() -> None:
    assert CompressionConfig.from_dict({}).log_dir is None
    assert CompressionConfig.from_dict({"log_dir": "runs/x"}).log_dir == "runs/x"


def test_accuracy_aware_training_needs_one_degradation_bound() -> None:
    params = {"maximal_total_epochs": 3}
    error = _error({"accuracy_aware_training": {"mode": "early_exit", "params": params}})
    assert str(error).startswith("accuracy_aware_training.params: exactly one of")


def test_json_path_quotes_keys_that_are_not_identifiers() -> None:
    path = format_json_path(["compression", 0, "scope_overrides", "activations", "{re}conv.*", "mode"])
    assert path == "compression[0].scope_overrides.activations['{re}conv.*'].mode"
    assert format_json_path([]) == ""


# --- input_info ----------------------------------------------------------------------------------


def test_single_input_info() -> None:
    (info,) = CompressionConfig.from_dict({"input_info": {"sample_size": [2, 3, 4, 4]}}).input_infos
    assert info == InputInfo(shape=(2, 3, 4, 4), dtype="float", keyword=None, filler=None)


def test_list_input_info_with_keyword_type_filler() -> None:
    config = CompressionConfig.from_dict(
        {
            "input_info": [
                {"sample_size": [1, 16], "type": "long", "keyword": "input_ids", "filler": "zeros"},
                {"sample_size": [1, 16], "type": "long", "keyword": "attention_mask", "filler": "ones"},
                {"sample_size": [1, 4]},
            ]
        }
    )
    assert config.input_infos == [
        InputInfo((1, 16), "long", "input_ids", "zeros"),
        InputInfo((1, 16), "long", "attention_mask", "ones"),
        InputInfo((1, 4)),
    ]


@pytest.mark.parametrize("data", [{}, {"input_info": {}}])
def test_absent_input_info_is_empty(data: dict[str, Any]) -> None:
    assert CompressionConfig.from_dict(data).input_infos == []


@pytest.mark.parametrize(
    ("input_info", "message"),
    [
        ([], "input_info: expected at least 1 item(s), got 0"),
        ([INPUT, {"type": "long"}], "input_info[1]: missing required key 'sample_size'"),
        ({"type": "long"}, "input_info: missing required key 'sample_size'"),
        ({"sample_size": [1, 0]}, "input_info.sample_size[1]: 0 is out of range; allowed: at least 1"),
        ({"sample_size": [1, 2.5]}, "input_info.sample_size[1]: expected an integer, got number 2.5"),
        (
            {"sample_size": [1], "filler": "random_normal"},
            "input_info.filler: 'random_normal' is not allowed",
        ),
        ({"sample_size": [1], "shape": [1]}, "input_info: unknown key 'shape'"),
    ],
)
def test_bad_input_info(input_info: Any, message: str) -> None:
    assert str(_error({"input_info": input_info})).startswith(message)


def test_input_info_checks_its_fields() -> None:
    assert InputInfo([1, 3]).shape == (1, 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="shape"):
        InputInfo((1, -3))
    with pytest.raises(InvalidArgumentError, match="dtype 'fp32'"):
        InputInfo((1,), dtype="fp32")
    with pytest.raises(InvalidArgumentError, match="filler 'nan'"):
        InputInfo((1,), filler="nan")


# --- algorithm sections --------------------------------------------------------------------------


def test_algorithm_sections_of_a_single_section() -> None:
    section = {"algorithm": "magnitude_sparsity", "sparsity_init": 0.1, "ignored_scopes": "{re}.*fc.*"}
    config = CompressionConfig.from_dict(_config(section))
    (got,) = config.algorithm_sections()
    assert got == AlgorithmSection("magnitude_sparsity", section, "compression")
    assert got.params == {}
    assert got.ignored_scopes == ["{re}.*fc.*"]
    assert got.target_scopes is None
    assert got.validate_scopes is True
    got.section["sparsity_init"] = 0.9
    assert config["compression"]["sparsity_init"] == 0.1


def test_algorithm_sections_of_a_list() -> None:
    config = CompressionConfig.from_dict(
        _config(
            [
                {
                    "algorithm": "const_sparsity",
                    "target_scopes": ["A/conv", "B/conv"],
                    "validate_scopes": False,
                },
                {"algorithm": "magnitude_sparsity", "params": {"sparsity_target": 0.7}},
            ]
        )
    )
    first, second = config.algorithm_sections()
    assert (first.json_path, second.json_path) == ("compression[0]", "compression[1]")
    assert first.target_scopes == ["A/conv", "B/conv"]
    assert first.ignored_scopes == []
    assert first.validate_scopes is False
    assert second.params == {"sparsity_target": 0.7}


@pytest.mark.parametrize("data", [{}, {"compression": []}])
def test_no_compression_means_no_sections(data: dict[str, Any]) -> None:
    assert CompressionConfig.from_dict(data).algorithm_sections() == []
