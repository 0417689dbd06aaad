"""Validation of a config against :data:`~nncompress.config.schema.CONFIG_SCHEMA`.

JSON Schema errors are turned into one :class:`~nncompress.errors.ConfigError` whose message
names the JSON path (``compression[0].params.sparsity_target``), the bad value and what is
allowed, with a did-you-mean suggestion for mistyped keys, enum values and algorithm names.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from nncompress.config.schema import CONFIG_SCHEMA, KNOWN_ALGORITHMS
from nncompress.errors import ConfigError, UnknownAlgorithmError
from nncompress.graph.scopes import REGEX_PREFIX, compile_scope_regex

_VALIDATOR = jsonschema.Draft7Validator(CONFIG_SCHEMA)
MAX_DEPTH = 64
"""How deep objects and lists may nest in a config; NNCF 2.x configs nest at most about 8 levels."""
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_NAMES = {
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
    "boolean": "a boolean (true or false)",
    "array": "a list",
    "object": "an object",
    "null": "null",
}


def format_json_path(path: Iterable[str | int]) -> str:
    """Write a JSON path as ``compression[0].params.sparsity_target``.

    Keys that are not identifiers (e.g. regex scopes) are written as ``["key"]``.

    :param path: the keys and list indices from the root to the value.
    :return: the path, ``""`` for the root.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word``, if one is close enough to be a likely typo.

    :param word: what the user wrote.
    :param choices: the allowed values.
    :return: the closest choice, or ``None``.
    """
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _show(value: Any) -> str:
    """A short ``repr`` of a config value for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    """The JSON type name of a parsed JSON value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _unknown_keys_message(unknown: list[str], allowed: Collection[str]) -> str:
    """Message for keys an object does not allow, with did-you-mean suggestions."""
    names = ", ".join(repr(key) for key in unknown)
    message = f"unknown key{'s' if len(unknown) > 1 else ''} {names}"
    hints = {key: hint for key in unknown if (hint := did_you_mean(key, allowed))}
    if len(unknown) == 1 and hints:
        message += f"; did you mean {hints[unknown[0]]!r}?"
    elif hints:
        message += "; did you mean " + ", ".join(f"{h!r} for {k!r}" for k, h in hints.items()) + "?"
    else:
        message += "."
    return message + f" Allowed keys: {', '.join(sorted(allowed))}."


def _message(error: ValidationError) -> tuple[str, Any]:
    """Message and offending value for one JSON Schema error."""
    value, schema, expected = error.instance, error.schema, error.validator_value
    if not isinstance(schema, dict):  # only boolean sub-schemas; ours are all dicts
        return error.message, value
    if error.validator == "additionalProperties":
        allowed = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        unknown = [
            key for key in value if key not in allowed and not any(re.search(p, key) for p in patterns)
        ]
        return _unknown_keys_message(unknown, allowed), unknown[0] if len(unknown) == 1 else unknown
    if error.validator == "enum":
        message = f"{_show(value)} is not allowed; expected one of: {', '.join(map(str, expected))}"
        hint = did_you_mean(value, map(str, expected)) if isinstance(value, str) else None
        return message + (f"; did you mean {hint!r}?" if hint else ""), value
    if error.validator == "type":
        kinds = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_TYPE_NAMES.get(kind, kind) for kind in kinds)
        message = f"expected {wanted}, got {_json_type(value)} {_show(value)}"
        description = schema.get("description")
        return message + (f" ({description})" if description else ""), value
    if error.validator in ("minimum", "maximum"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            return f"{_show(value)} is out of range; allowed: a number in [{low:g}, {high:g}]", value
        bound = "at least" if error.validator == "minimum" else "at most"
        return f"{_show(value)} is out of range; allowed: {bound} {expected:g}", value
    if error.validator == "required":
        missing = [key for key in expected if key not in value]
        return f"missing required key {missing[0]!r}", None
    if error.validator == "minItems":
        return f"expected at least {expected} item(s), got {len(value)}", value
    if error.validator == "additionalItems":
        count = len(schema.get("items", []))
        return f"expected {count} items, got {len(value)}: {_show(value)}", value
    if error.validator == "const":
        return f"expected {expected!r}, got {_show(value)}", value
    if error.validator in ("oneOf", "anyOf") and "description" in schema:
        return str(schema["description"]), value
    return error.message, value


def _most_relevant(errors: list[ValidationError]) -> ValidationError:
    """The error to report: the shallowest one, the first found among equals.

    A failed ``oneOf``/``anyOf`` whose schema carries no description of its own is replaced by
    the most relevant error among its alternatives (:func:`jsonschema.exceptions.best_match`).
    """
    error = min(errors, key=lambda e: (len(e.absolute_path), e.validator in ("oneOf", "anyOf")))
    if error.context and "description" not in error.schema:
        error = best_match(error.context)
    return error


def _is_unknown_algorithm(error: ValidationError) -> bool:
    """Whether ``error`` is an unknown ``algorithm`` name in a ``compression`` section."""
    path = list(error.absolute_path)
    return (
        error.validator == "enum"
        and path[:1] == ["compression"]
        and path[-1:] == ["algorithm"]
        and len(path) <= 3
    )


def check_json_tree(data: Any) -> None:
    """Check that ``data`` is plain JSON data before it is copied or validated against the schema.

    Objects must have string keys, numbers must be finite (JSON has no NaN or Infinity, which
    Python's ``json`` module accepts anyway) and nesting must stay within :data:`MAX_DEPTH`
    levels. The walk is iterative, so a deep or self-referencing value cannot overflow the stack.

    :param data: the parsed config, or a mapping given to ``from_dict``.
    :raises ConfigError: naming the JSON path and the bad key or value.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise ConfigError(
                format_json_path(path[:3]),
                f"objects and lists nest more than {MAX_DEPTH} levels deep below here "
                f"(a config may nest at most {MAX_DEPTH} levels)",
            )
        if isinstance(value, bool) or value is None or isinstance(value, int | str):
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(
                    format_json_path(path),
                    f"{value!r} is not allowed; expected a finite number (JSON has no NaN or Infinity)",
                    value,
                )
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(
                        format_json_path(path),
                        f"key {key!r} ({type(key).__name__}) is not allowed; object keys must be strings",
                        key,
                    )
                stack.append((item, (*path, key)))
        elif isinstance(value, list | tuple):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
        else:
            raise ConfigError(
                format_json_path(path),
                f"expected a JSON value (object, list, string, number, boolean or null), "
                f"got {type(value).__name__} {_show(value)}",
                value,
            )


def check_scope_regexes(data: Mapping[str, Any]) -> None:
    """Every ``{re}`` scope in ``ignored_scopes``, ``target_scopes`` and ``scope_overrides`` compiles.

    :param data: a config that passed the schema.
    :raises ConfigError: naming the JSON path, the pattern and the regex error.
    """
    compression = data.get("compression")
    sections = [compression] if isinstance(compression, Mapping) else list(compression or [])
    for i, section in enumerate(sections):
        base: tuple[str | int, ...] = ("compression",) if isinstance(compression, Mapping) else ("compression", i)
        entries: list[tuple[tuple[str | int, ...], str]] = []
        for key in ("ignored_scopes", "target_scopes"):
            scopes = section.get(key)
            if isinstance(scopes, str):
                entries.append(((*base, key), scopes))
            elif isinstance(scopes, list):
                entries.extend(((*base, key, j), s) for j, s in enumerate(scopes))
        overrides = section.get("scope_overrides")
        for group in ("activations", "weights"):
            by_scope = overrides.get(group) if isinstance(overrides, Mapping) else None
            if isinstance(by_scope, Mapping):
                entries.extend(((*base, "scope_overrides", group, s), s) for s in by_scope)
        for path, scope in entries:
            if not scope.startswith(REGEX_PREFIX):
                continue
            try:  # as the matcher compiles it: NNCF 2.x's names in it are translated first
                compile_scope_regex(scope[len(REGEX_PREFIX) :])
            except re.error as err:
                raise ConfigError(
                    format_json_path(path),
                    f"{scope!r} is not a regular expression ({err}); allowed: '{{re}}' followed by a "
                    "Python regular expression, or a plain scope name",
                    scope,
                ) from err


def validate_config(data: Mapping[str, Any]) -> None:
    """Validate a config against the NNCF 2.x schema.

    Unknown algorithm names are reported first; otherwise the shallowest schema error.

    :param data: the parsed config.
    :raises UnknownAlgorithmError: a ``compression`` section names an algorithm NNCF 2.x never had.
    :raises ConfigError: any other violation of the schema, a non-string key, NaN or Infinity,
        nesting deeper than :data:`MAX_DEPTH`, or a ``{re}`` scope that is not a regular expression.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("", f"a config must be a JSON object, got {_json_type(data)}", data)
    check_json_tree(data)
    errors = list(_VALIDATOR.iter_errors(dict(data)))
    if not errors:
        check_scope_regexes(data)
        return
    for error in errors:
        if _is_unknown_algorithm(error) and isinstance(error.instance, str):
            name = error.instance
            hint = did_you_mean(name, KNOWN_ALGORITHMS)
            raise UnknownAlgorithmError(
                format_json_path(error.absolute_path),
                f"unknown algorithm {name!r}"
                + (f"; did you mean {hint!r}?" if hint else ".")
                + f" Known NNCF 2.x algorithms: {', '.join(sorted(KNOWN_ALGORITHMS))}.",
                name,
            )
    error = _most_relevant(errors)
    message, value = _message(error)
    raise ConfigError(format_json_path(error.absolute_path), message, value)
