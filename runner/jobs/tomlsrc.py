"""Parse TOML with tomllib and recover the line and column of each key path."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from runner.jobs.yamlsrc import Document, Path, SourceError

_ERR_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_ASSIGN = re.compile(rf"^(\s*)({_KEY}(?:\s*\.\s*{_KEY})*)\s*=\s*")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_KEY})\s*=\s*")


def load_toml(text: str, *, max_depth: int = 32) -> Document:
    """Parse `text`; raise SourceError with a position on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _ERR_AT.search(str(exc))
        line, col = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        message = _ERR_AT.sub("", str(exc)).strip()
        raise SourceError(f"TOML syntax error: {message}", line, col) from None
    except RecursionError:
        raise SourceError(f"nesting deeper than {max_depth} levels", 1, 1) from None
    _check_depth(data, max_depth)
    doc = Document(data, (1, 1))
    _index_positions(text, doc)
    return doc


def _check_depth(data: Any, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise SourceError(f"nesting deeper than {max_depth} levels", 1, 1)
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            stack.extend((child, depth + 1) for child in children)


def _split_key(text: str) -> list[str]:
    parts = re.findall(_KEY, text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _index_positions(text: str, doc: Document) -> None:
    table: Path = ()
    arrays: dict[Path, int] = {}
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _HEADER.match(line)
        if header:
            table = _header_path(header, arrays)
            doc.keys[table] = doc.values[table] = (number, line.index("[") + 1)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            _record_assignment(doc, table, assign, line, number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_multiline = quote


def _header_path(header: re.Match[str], arrays: dict[Path, int]) -> Path:
    base = tuple(_split_key(header.group(2)))
    if header.group(1) == "[[":
        arrays[base] = arrays.get(base, -1) + 1
        return (*base, arrays[base])
    # A sub-table of the latest array element: [jobs.schedule] after [[jobs]].
    for cut in range(len(base), 0, -1):
        if base[:cut] in arrays:
            return (*base[:cut], arrays[base[:cut]], *base[cut:])
    return base


def _record_assignment(
    doc: Document, table: Path, assign: re.Match[str], line: str, number: int
) -> None:
    path = (*table, *_split_key(assign.group(2)))
    doc.keys.setdefault(path, (number, len(assign.group(1)) + 1))
    doc.values.setdefault(path, (number, assign.end() + 1))
    rest = line[assign.end() :]
    if rest.lstrip().startswith("{"):
        offset = assign.end()
        for inner in _INLINE_KEY.finditer(rest):
            sub = (*path, *_split_key(inner.group(1)))
            doc.keys.setdefault(sub, (number, offset + inner.start(1) + 1))
            doc.values.setdefault(sub, (number, offset + inner.end() + 1))
