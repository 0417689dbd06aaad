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


# Byte order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str, str], ...] = (
    (b"\xff\xfe\x00\x00", "UTF-32 little-endian with a byte order mark", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32 big-endian with a byte order mark", "UTF-32"),
    (b"\xff\xfe", "UTF-16 little-endian with a byte order mark", "UTF-16"),
    (b"\xfe\xff", "UTF-16 big-endian with a byte order mark", "UTF-16"),
)


def _foreign_encoding(data: bytes) -> tuple[str, str] | None:
    """The encoding of a file that is not UTF-8, for an error message; ``None`` for UTF-8.

    JSON text starts with an ASCII character, so without a byte order mark the zero bytes among
    the first four tell UTF-16 and UTF-32 apart (RFC 4627, section 3). Bytes that are not valid
    UTF-8 but are text in a single-byte encoding are reported as Latin-1 / Windows-1252.

    :param data: the file's bytes.
    :return: (what the file is, its name for ``iconv -f``), or ``None`` if it is UTF-8.
    """
    for bom, name, iconv in _BOMS:
        if data.startswith(bom):
            return name, iconv
    head = data[:4]
    if len(head) == 4 and head[:3] == b"\x00\x00\x00":
        return "UTF-32 big-endian without a byte order mark", "UTF-32BE"
    if len(head) == 4 and head[1:] == b"\x00\x00\x00":
        return "UTF-32 little-endian without a byte order mark", "UTF-32LE"
    if len(head) >= 2 and head[0] == 0 and head[1] != 0:
        return "UTF-16 big-endian without a byte order mark", "UTF-16BE"
    if len(head) >= 2 and head[0] != 0 and head[1] == 0:
        return "UTF-16 little-endian without a byte order mark", "UTF-16LE"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        where = f"byte 0x{data[err.start]:02x} at offset {err.start} (line {line})"
        if b"\x00" in data:
            return f"binary data, not text ({where} is not UTF-8)", "<encoding>"
        return f"not UTF-8: {where}; it looks like Latin-1 / Windows-1252", "WINDOWS-1252"
    return None


def load_json_file(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON config file, allowing comments and trailing commas.

    The file must be UTF-8 (a UTF-8 byte order mark is allowed), as JSON files are (RFC 8259).

    :param path: the file to read.
    :return: the parsed JSON value.
    :raises ConfigError: the file is not UTF-8 (the message names the encoding found), not valid
        JSON (the message gives the line and column) or nested too deeply to parse.
    :raises OSError: the file cannot be read.
    """
    name = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()
    foreign = _foreign_encoding(data)
    if foreign is not None:
        raise ConfigError(
            "",
            f"{name} is {foreign[0]}; config files must be UTF-8. Convert it, e.g. "
            f"`iconv -f {foreign[1]} -t UTF-8 {name}`, or save it as UTF-8 in the editor.",
        )
    text = data.decode("utf-8-sig")  # tolerate a UTF-8 BOM
    try:
        return json.loads(strip_json_comments(text))
    except json.JSONDecodeError as err:
        raise ConfigError(
            "",
            f"{name} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
        ) from err
    except RecursionError as err:
        raise ConfigError("", f"{name}: objects and lists nest too deeply to parse") from err
    except ValueError as err:  # e.g. an integer literal longer than Python's int conversion limit
        raise ConfigError("", f"{name} is not a config nncompress can read: {err}") from err
