"""Text from job files, file names and Ductape made safe for a terminal or a CI log.

A file name or an error may hold ESC or OSC sequences (colours, a window title, a
hyperlink), C1 controls, or bidi overrides that reorder what a reader sees (issue 13
item 13). Human output shows each as an escape (`\\x1b`, `\\u202e`); JSON stays data.
"""

from __future__ import annotations

import re

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_HIDDEN = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, keep: str = "") -> str:
    """`text` with control (C0, DEL, C1) and bidi characters escaped, but those in `keep`."""
    return _HIDDEN.sub(lambda m: m.group(0) if m.group(0) in keep else _escape(m), text)


def github_data(text: str) -> str:
    """The message of a GitHub workflow command: %, CR and LF as GitHub decodes them."""
    escaped = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return visible(escaped)


def github_property(text: str) -> str:
    """A property value (file=...): also `:` and `,`, which would end it."""
    return github_data(text).replace(":", "%3A").replace(",", "%2C")
