"""Reading JSON with comments and trailing commas, as NNCF 2.x (jstyleson) did."""

from __future__ import annotations

import json

import pytest

from nncompress.config.json_text import strip_json_comments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1} // end', {"a": 1}),
        ('{"a": /* one */ 1}', {"a": 1}),
        ('{"a": [1, 2,],}', {"a": [1, 2]}),
        ('{"a": [1, // c\n 2, /* c */\n]}', {"a": [1, 2]}),
        ('{"url": "http://x/*y*/", "s": "a,]"}', {"url": "http://x/*y*/", "s": "a,]"}),
        ('{"q": "say \\"//hi\\",", "b": 1,}', {"q": 'say "//hi",', "b": 1}),
    ],
)
def test_comments_and_trailing_commas_are_blanked(text: str, expected: object) -> None:
    stripped = strip_json_comments(text)
    assert len(stripped) == len(text)
    assert stripped.count("\n") == text.count("\n")
    assert json.loads(stripped) == expected


def test_plain_json_is_unchanged() -> None:
    text = '{\n  "a": [1, 2],\n  "b": {"c": "d,}"}\n}'
    assert strip_json_comments(text) == text
