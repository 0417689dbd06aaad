"""Reading config files: JSON with the comments and trailing commas NNCF 2.x accepted.

NNCF 2.x read its config files with ``jstyleson``, so ``//`` and ``/* */`` comments and trailing
commas appear in configs written for it. They are blanked out here (replaced by spaces, newlines
kept) so that line and column numbers in JSON syntax errors still point into the original file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from nncompress.errors import ConfigError


def _blank(text: str) -> str:
    """``text`` with every character but newlines replaced by a space."""
    return "".join(ch if ch == "\n" else " " for ch in text)


def strip_json_comments(text: str) -> str:
    """Blank out comments and trailing commas that are outside JSON strings.

    >>> strip_json_comments('{"a": [1, 2,], // note\\n "b": "//kept"}')
    '{"a": [1, 2 ],        \\n "b": "//kept"}'

    :param text: JSON text, possibly with ``//`` / ``/* */`` comments and trailing commas.
    :return: text of the same length, valid JSON if the rest is.
    """
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            step = 2 if ch == "\\" else 1
            out.append(text[i : i + step])
            in_string = ch != '"'
            i += step
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
        else:
            in_string = ch == '"'
            out.append(ch)
            i += 1
            continue
        out.append(_blank(text[i:end]))
        i = end
    return _drop_trailing_commas("".join(out))


def _drop_trailing_commas(text: str) -> str:
    """Blank out commas followed (after whitespace) by ``]`` or ``}``, outside strings."""
    chars = list(text)
    in_string = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif in_string:
            escaped = ch == "\\"
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < len(text) and text[j].isspace():
                j += 1
            if j < len(text) and text[j] in "]}":
                chars[i] = " "
    return "".join(chars)


def load_json_file(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON config file, allowing comments and trailing commas.

    :param path: the file to read.
    :return: the parsed JSON value.
    :raises ConfigError: the file is not valid JSON; the message gives the file, line and column.
    :raises OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8-sig") as file:  # tolerate a BOM
        text = file.read()
    try:
        return json.loads(strip_json_comments(text))
    except json.JSONDecodeError as err:
        raise ConfigError(
            "",
            f"{os.fspath(path)} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
        ) from err
