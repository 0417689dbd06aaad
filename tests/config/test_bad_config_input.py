"""Bad config input of every kind gives a ConfigError naming what is wrong, never another error."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nncompress.config import CompressionConfig
from nncompress.config.validation import MAX_DEPTH
from nncompress.errors import ConfigError

GOOD: dict[str, Any] = {
    "input_info": {"sample_size": [1, 3, 8, 8]},
    "compression": [
        {"algorithm": "magnitude_sparsity", "sparsity_init": 0.1,
         "params": {"schedule": "multistep", "multistep_steps": [2], "multistep_sparsity_levels": [0.3, 0.5]},
         "ignored_scopes": ["{re}.*fc.*"]},
        {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 4}}},
    ],
}
GOOD_TEXT = json.dumps(GOOD, indent=2).replace('"{re}.*fc.*"', '"{re}.*fc.*", "caf\u00e9"')


def _write(tmp_path: Path, data: bytes, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_good_text_is_good_in_utf8_with_and_without_bom(tmp_path: Path) -> None:
    plain = CompressionConfig.from_json(_write(tmp_path, GOOD_TEXT.encode("utf-8")))
    bom = CompressionConfig.from_json(_write(tmp_path, GOOD_TEXT.encode("utf-8-sig"), "bom.json"))
    assert plain == bom
    assert plain.algorithm_sections()[0].ignored_scopes == ["{re}.*fc.*", "caf\u00e9"]


@pytest.mark.parametrize(
    "encoding,found,iconv",
    [
        ("utf-16", "UTF-16 little-endian with a byte order mark", "UTF-16"),
        ("utf-16-le", "UTF-16 little-endian without a byte order mark", "UTF-16LE"),
        ("utf-16-be", "UTF-16 big-endian without a byte order mark", "UTF-16BE"),
        ("utf-32", "UTF-32 little-endian with a byte order mark", "UTF-32"),
        ("utf-32-be", "UTF-32 big-endian without a byte order mark", "UTF-32BE"),
        ("latin-1", "not UTF-8: byte 0xe9 at offset", "WINDOWS-1252"),
        ("cp1252", "Latin-1 / Windows-1252", "WINDOWS-1252"),
    ],
)
def test_file_not_in_utf8_names_file_and_encoding(tmp_path: Path, encoding: str, found: str, iconv: str) -> None:
    path = _write(tmp_path, GOOD_TEXT.encode(encoding))
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_json(path)
    message = str(info.value)
    assert str(path) in message and found in message and "must be UTF-8" in message
    assert f"iconv -f {iconv} -t UTF-8" in message


def test_latin1_error_gives_the_line(tmp_path: Path) -> None:
    text = GOOD_TEXT.encode("latin-1")
    line = text[: text.index(b"\xe9")].count(b"\n") + 1
    with pytest.raises(ConfigError, match=rf"\(line {line}\)"):
        CompressionConfig.from_json(_write(tmp_path, text))


def test_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="binary data"):
        CompressionConfig.from_json(_write(tmp_path, b"{\"a\": \"\xff\x00\xfe\"}"))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 200_000])
def test_deep_nesting_in_a_file(tmp_path: Path, depth: int) -> None:
    text = '{"input_info": {"sample_size": [1]}, "extra": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(ConfigError, match="nest"):
        CompressionConfig.from_json(_write(tmp_path, text.encode()))


def test_deep_nesting_and_cycles_in_a_dict() -> None:
    deep: list[Any] = []
    cur = deep
    for _ in range(10_000):
        cur.append([])
        cur = cur[0]
    with pytest.raises(ConfigError, match=r"^compression\.ignored_scopes\[0\]: .*more than 64 levels"):
        CompressionConfig.from_dict({"compression": {"algorithm": "magnitude_sparsity", "ignored_scopes": deep}})
    cyclic: dict[str, Any] = {"input_info": {"sample_size": [1]}}
    cyclic["self"] = cyclic
    with pytest.raises(ConfigError, match="levels"):
        CompressionConfig.from_dict(cyclic)


def test_nesting_up_to_the_limit_is_allowed() -> None:
    value: Any = "leaf"
    for _ in range(MAX_DEPTH - 1):
        value = [value]
    assert CompressionConfig.from_dict({"input_info": {"sample_size": [1]}, "extra": value})["extra"]


@pytest.mark.parametrize(
    "data,path",
    [
        ({1: 2}, ""),
        ({"compression": {"algorithm": "magnitude_sparsity", 5: 1}}, "compression"),
        ({"compression": {"algorithm": "magnitude_sparsity", "params": {None: 1}}}, "compression.params"),
        ({"input_info": {"sample_size": [1]}, "extra": [{(1, 2): 3}]}, "extra[0]"),
    ],
)
def test_non_string_keys(data: dict[Any, Any], path: str) -> None:
    with pytest.raises(ConfigError, match="object keys must be strings") as info:
        CompressionConfig.from_dict(data)
    assert info.value.json_path == path


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "section,path",
    [
        ({"params": {"sparsity_target": "X"}}, "compression.params.sparsity_target"),
        ({"sparsity_init": "X"}, "compression.sparsity_init"),
        ({"params": {"schedule": "multistep", "multistep_steps": [1], "multistep_sparsity_levels": [0.1, "X"]}},
         "compression.params.multistep_sparsity_levels[1]"),
        ({"params": {"sparsity_target_epoch": "X"}}, "compression.params.sparsity_target_epoch"),
    ],
)
def test_nan_and_inf_rejected_with_the_json_path(bad: float, section: dict[str, Any], path: str) -> None:
    text = json.dumps(section).replace('"X"', "1.0")
    section = json.loads(text, parse_float=lambda s: bad if s == "1.0" else float(s))
    with pytest.raises(ConfigError, match="finite number") as info:
        CompressionConfig.from_dict({"compression": {"algorithm": "magnitude_sparsity", **section}})
    assert info.value.json_path == path
    assert str(info.value).startswith(f"{path}: {bad!r}")


def test_nan_literal_in_a_file(tmp_path: Path) -> None:
    text = '{"compression": {"algorithm": "quantization", "compression_lr_multiplier": NaN}}'
    with pytest.raises(ConfigError, match=r"^compression\.compression_lr_multiplier: nan is not allowed"):
        CompressionConfig.from_json(_write(tmp_path, text.encode()))


@pytest.mark.parametrize(("config", "path"), [
    ({"compression_lr_multiplier": -1, "compression": {"algorithm": "rb_sparsity"}}, "compression_lr_multiplier"),
    ({"compression": {"algorithm": "quantization", "compression_lr_multiplier": -2}},
     "compression.compression_lr_multiplier"),
])
def test_negative_lr_multiplier_is_refused_where_it_was_written(config: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_dict(config)
    assert info.value.json_path == path and "at least 0" in str(info.value)


def test_edited_config_is_checked_by_validate() -> None:
    config = CompressionConfig.from_dict(GOOD)
    config["compression"][0]["sparsity_init"] = math.nan
    with pytest.raises(ConfigError, match=r"compression\[0\]\.sparsity_init: nan"):
        config.validate()


@pytest.mark.parametrize("value,kind", [({"a"}, "set"), (b"x", "bytes"), (object(), "object"), (1j, "complex")])
def test_values_json_cannot_hold(value: object, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"expected a JSON value .*got {kind}"):
        CompressionConfig.from_dict({"compression": {"algorithm": "magnitude_sparsity", "ignored_scopes": value}})


def test_a_value_deepcopy_cannot_copy_is_a_config_error() -> None:
    import threading

    with pytest.raises(ConfigError, match=r"^compression\.x: expected a JSON value"):
        CompressionConfig.from_dict({"compression": {"algorithm": "magnitude_sparsity", "x": threading.Lock()}})


@pytest.mark.parametrize(
    "section,path",
    [
        ({"ignored_scopes": ["ok", "{re}(("]}, "compression.ignored_scopes[1]"),
        ({"target_scopes": "{re}[a-"}, "compression.target_scopes"),
    ],
)
def test_bad_scope_regex_is_caught_at_validation(section: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match="is not a regular expression") as info:
        CompressionConfig.from_dict({"compression": {"algorithm": "magnitude_sparsity", **section}})
    assert info.value.json_path == path


def test_huge_integer_literal_in_a_file(tmp_path: Path) -> None:
    text = '{"input_info": {"sample_size": [1' + "0" * 5000 + "]}}"
    with pytest.raises(ConfigError, match="config.json"):
        CompressionConfig.from_json(_write(tmp_path, text.encode()))


# ---- fuzzing: only ConfigError (or success) may come out -------------------------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["quantization", "magnitude_sparsity", "{re}((", "{re}.*", "multistep"]),
    st.binary(max_size=4), st.sets(st.integers(), max_size=2), st.just(object()),
)
_KEYS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["algorithm", "params", "sparsity_init", "ignored_scopes", "target_scopes", "initializer",
                     "schedule", "sparsity_target", "scope_overrides", "weights", "activations", "bits"]),
    st.integers(), st.none(), st.tuples(st.integers()),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def _check(call: Any) -> None:
    try:
        config = call()
    except ConfigError as err:
        assert str(err)
        return
    # what validates must survive a JSON round trip
    text = config.to_json()
    assert CompressionConfig.from_dict(json.loads(text)).to_json() == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), new=_VALUES)
def test_fuzz_from_dict(data: st.DataObject, new: Any) -> None:
    """Replace one value of a good config (or add a key) with random data: ConfigError or success."""
    config = copy.deepcopy(GOOD)
    path = data.draw(st.sampled_from(_paths(config)))
    if data.draw(st.booleans()) and isinstance(parent := _get(config, path), dict):
        parent[data.draw(_KEYS)] = new
    else:
        config = _replace(config, path, new)
    _check(lambda: CompressionConfig.from_dict(config))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


_ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(encoding=_ENCODINGS, cut=st.integers(0, len(GOOD_TEXT)), junk=st.text(max_size=6),
       flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
       depth=st.sampled_from([0, 0, 70, 3000]))
def test_fuzz_from_json(tmp_path: Path, encoding: str, cut: int, junk: str, flips: list[tuple[int, int]],
                        depth: int) -> None:
    """Truncated, mutated, deeply nested text in several encodings: ConfigError or success."""
    text = GOOD_TEXT[:cut] + junk + GOOD_TEXT[cut:] if junk else GOOD_TEXT
    if depth:
        text = text.replace('"input_info"', '"deep": ' + "[" * depth + "]" * depth + ', "input_info"', 1)
    try:
        raw = bytearray(text.encode(encoding))
    except UnicodeEncodeError:
        raw = bytearray(text.encode("utf-8"))
    for position, byte in flips:
        if position < len(raw):
            raw[position] = byte
    path = _write(tmp_path, bytes(raw), "fuzz.json")
    _check(lambda: CompressionConfig.from_json(path))
