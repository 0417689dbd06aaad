"""The NNCF 2.x compatibility corpus: every real config validates, the bad ones are rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nncompress.config import BUILT_ALGORITHMS, CompressionConfig
from nncompress.config.schema import CONFIG_SCHEMA
from nncompress.errors import ConfigError, UnknownAlgorithmError, UnsupportedAlgorithmError
from tests.conftest import SHARED, require_shared

CORPUS = SHARED / "compat" / "nncf2-configs"
require_shared(CORPUS, "the NNCF 2.x config corpus")
BAD_DIR = CORPUS / "schema_validation" / "schema_validation_bad_configs"
ALL_CONFIGS = sorted(CORPUS.rglob("*.json"))
GOOD_CONFIGS = [path for path in ALL_CONFIGS if BAD_DIR not in path.parents]

# Each bad config: the error class expected and the start of its message (JSON path included).
BAD_CONFIGS: dict[str, tuple[type[ConfigError], str]] = {
    "bad_algo_name.json": (UnknownAlgorithmError, "compression.algorithm: unknown algorithm 'bad_algo'"),
    "hawq_bitwidth_per_scope_format_mismatch.json": (
        ConfigError,
        "compression.initializer.precision.bitwidth_per_scope[0][0]: expected an integer, got string",
    ),
    "params_mismatch.json": (ConfigError, "compression[0].params: unknown keys 'sparsity_init'"),
    "wrong_num_init_steps_placement.json": (
        ConfigError,
        "compression.initializer: unknown key 'num_init_steps'",
    ),
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _algorithms(config: dict[str, Any]) -> list[str]:
    compression = config.get("compression", [])
    sections = [compression] if isinstance(compression, dict) else compression
    return [section["algorithm"] for section in sections]


def _is_buildable(config: dict[str, Any]) -> bool:
    return "bootstrapNAS" not in config and set(_algorithms(config)) <= BUILT_ALGORITHMS


BUILDABLE = [path for path in GOOD_CONFIGS if _is_buildable(_load(path))]
UNSUPPORTED = [path for path in GOOD_CONFIGS if not _is_buildable(_load(path))]


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def test_corpus_is_complete() -> None:
    assert len(ALL_CONFIGS) == 123
    assert sorted(path.name for path in ALL_CONFIGS if BAD_DIR in path.parents) == sorted(BAD_CONFIGS)
    assert len(BUILDABLE) >= 26  # magnitude/const sparsity and the configs without compression


def test_schema_is_valid_draft7() -> None:
    jsonschema.Draft7Validator.check_schema(CONFIG_SCHEMA)


@pytest.mark.parametrize("path", GOOD_CONFIGS, ids=_id)
def test_good_config_validates_against_schema(path: Path) -> None:
    jsonschema.Draft7Validator(CONFIG_SCHEMA).validate(_load(path))


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_rejected_by_schema(name: str) -> None:
    assert not jsonschema.Draft7Validator(CONFIG_SCHEMA).is_valid(_load(BAD_DIR / name))


@pytest.mark.parametrize("path", BUILDABLE, ids=_id)
def test_buildable_config_loads(path: Path) -> None:
    config = CompressionConfig.from_json(path)
    raw = _load(path)
    assert dict(config) == raw
    assert [section.algorithm for section in config.algorithm_sections()] == _algorithms(raw)
    if raw.get("input_info"):
        assert config.input_infos and all(info.shape for info in config.input_infos)


@pytest.mark.parametrize("path", UNSUPPORTED, ids=_id)
def test_other_algorithm_is_unsupported(path: Path) -> None:
    with pytest.raises(UnsupportedAlgorithmError, match=r"is not supported by nncompress (yet|\(it is not planned\))"):
        CompressionConfig.from_json(path)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_error(name: str) -> None:
    error_class, message_start = BAD_CONFIGS[name]
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_json(BAD_DIR / name)
    assert type(info.value) is error_class
    assert str(info.value).startswith(message_start), str(info.value)
