"""Control and bidi characters are shown as escapes in human output and GitHub annotations."""

from __future__ import annotations

import pytest

from runner.cli.visible import github_data, github_property, visible


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain naïve café", "plain naïve café"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("a\x00b\x7fc\x85d\x9be", "a\\x00b\\x7fc\\x85d\\x9be"),
        ("\u202eevil\u202c", "\\u202eevil\\u202c"),
        ("\u2066\u2069\u200e\u200f\u061c", "\\u2066\\u2069\\u200e\\u200f\\u061c"),
        ("line\nnext\ttab", "line\\nnext\\ttab"),
    ],
)
def test_visible_escapes_controls_and_bidi(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_visible_keeps_what_it_is_told_to() -> None:
    assert visible("a\nb\x1b", keep="\n") == "a\nb\\x1b"


def test_github_escaping_of_data_and_properties() -> None:
    assert github_data("50% done\r\n::warning::x\x1b") == "50%25 done%0D%0A::warning::x\\x1b"
    assert github_property("a,b:c%\n") == "a%2Cb%3Ac%25%0A"
