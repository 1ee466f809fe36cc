"""Build Python data from YAML events while recording each node's line and column.

PyYAML's C composer recurses and crashes the process on deep nesting, and its
constructor happily expands alias bombs; this builder walks the (iterative) libyaml
event stream instead, with limits on depth and on nodes after alias expansion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourceError(ValueError):
    """A syntax or limit problem at a place in the source."""

    def __init__(self, message: str, line: int, column: int, path: Path = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.path = path


@dataclass
class Document:
    """One YAML document (or the TOML file): its data and where each path starts."""

    data: Any
    start: Position
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)

    def position(self, path: Path, prefer_key: bool = False) -> Position:
        """Best position for `path`: the node itself, else the nearest ancestor."""
        for cut in range(len(path), -1, -1):
            sub = path[:cut]
            first, second = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            found = first.get(sub) or second.get(sub)
            if found is not None:
                return found
        return self.start


@dataclass
class _Frame:
    kind: str  # "map" or "seq"
    path: Path
    value: Any
    anchor: str | None
    pending_key: Any = None
    pending_path: Path = ()  # path of the value that follows pending_key
    has_key: bool = False
    weight: int = 1


def _mark(event: yaml.Event) -> Position:
    mark: Any = event.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


class _Builder:
    def __init__(
        self, loader: yaml.SafeLoader, max_depth: int, max_nodes: int, positions: bool = True
    ) -> None:
        self.loader = loader
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        # Without positions only collections at depth 2 or less are placed (where a job
        # starts); see load_yaml.
        self.positions = positions
        self.nodes = 0
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.doc: Document | None = None

    def count(self, weight: int, event: yaml.Event) -> None:
        self.nodes += weight
        if self.nodes > self.max_nodes:
            line, col = _mark(event)
            raise SourceError(
                f"document expands to more than {self.max_nodes} nodes "
                "(alias expansion or size limit; billion-laughs protection)",
                line,
                col,
            )

    def child_path(self) -> Path:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.kind == "seq":
            return (*top.path, len(top.value))
        if top.has_key:
            return top.pending_path
        return (*top.path, _path_key(top.pending_key))

    def start(self, event: yaml.CollectionStartEvent, kind: str) -> None:
        if len(self.stack) >= self.max_depth:
            line, col = _mark(event)
            raise SourceError(f"nesting deeper than {self.max_depth} levels", line, col)
        path = self.child_path()
        self._record(path, event)
        standard = "tag:yaml.org,2002:" + ("map" if kind == "map" else "seq")
        if event.tag not in (None, "!", standard):
            line, col = _mark(event)
            raise SourceError(f"unsupported YAML tag {event.tag}", line, col, path)
        value: Any = {} if kind == "map" else []
        self.stack.append(_Frame(kind, path, value, event.anchor))

    def end(self) -> None:
        frame = self.stack.pop()
        if frame.anchor:
            self.anchors[frame.anchor] = (frame.value, frame.weight)
        self.add(frame.value, frame.weight, None)

    def _record(self, path: Path, event: yaml.Event) -> None:
        assert self.doc is not None
        if not self.positions and len(path) > 2:
            return
        top = self.stack[-1] if self.stack else None
        if top is None or top.kind == "seq" or top.has_key:
            self.doc.values.setdefault(path, _mark(event))

    def add(self, value: Any, weight: int, event: yaml.Event | None) -> None:
        if not self.stack:
            assert self.doc is not None
            self.doc.data = value
            return
        top = self.stack[-1]
        top.weight += weight
        if top.kind == "seq":
            top.value.append(value)
        elif not top.has_key:
            self._take_key(top, value, event)
        else:
            self._set_item(top, value)

    def _take_key(self, top: _Frame, key: Any, event: yaml.Event | None) -> None:
        assert self.doc is not None
        if key.__class__ is str and event is not None:
            path = (*top.path, key)  # most keys: no isinstance over a union, no _path_key
        elif event is None or not isinstance(key, str | int | float | bool):
            line, col = self.doc.position(top.path)
            raise SourceError("mapping keys must be plain scalars", line, col, top.path)
        else:
            path = (*top.path, _path_key(key))
        if key in top.value and key != "<<":
            line, col = _mark(event)
            first = self.doc.keys.get(path, (0, 0))[0]
            raise SourceError(f"duplicate key '{key}' (first at line {first})", line, col, path)
        if self.positions:
            self.doc.keys.setdefault(path, _mark(event))
        top.pending_key, top.pending_path, top.has_key = key, path, True

    def _set_item(self, top: _Frame, value: Any) -> None:
        key = top.pending_key
        top.pending_key, top.has_key = None, False
        if key == "<<":
            _merge(top.value, value)
        else:
            top.value[key] = value

    def scalar(self, event: yaml.ScalarEvent) -> None:
        # The hot path of a start (15 of 19 events a job): the common cases are inlined,
        # each step in the order of the general methods it stands for (issue 12).
        self.nodes += 1
        if self.nodes > self.max_nodes:
            self.count(0, event)  # raises the limit's error
        value = self._plain_str(event)
        if value is None:
            value = self._construct(event)
        if event.anchor:
            self.anchors[event.anchor] = (value, 1)
        top = self.stack[-1] if self.stack else None
        if top is None:
            self._record((), event)
            self.add(value, 1, event)
            return
        doc = self.doc
        assert doc is not None
        top.weight += 1
        mark: Any = event.start_mark
        positions = self.positions
        if top.kind == "seq":
            if positions:
                place = (mark.line + 1, mark.column + 1)
                doc.values.setdefault((*top.path, len(top.value)), place)
            top.value.append(value)
        elif top.has_key:
            if positions:
                doc.values.setdefault(top.pending_path, (mark.line + 1, mark.column + 1))
            self._set_item(top, value)
        elif value.__class__ is str and value not in top.value:
            path = (*top.path, value)  # a new string key: _take_key's common case
            if positions:
                doc.keys.setdefault(path, (mark.line + 1, mark.column + 1))
            top.pending_key, top.pending_path, top.has_key = value, path, True
        else:
            self._take_key(top, value, event)  # keys need no value position

    def _plain_str(self, event: yaml.ScalarEvent) -> str | None:
        """The scalar's value when it is an untagged string (most are), else None."""
        if event.tag is not None:
            return None
        text: str = event.value
        if event.style or (_PLAIN_TAGS.get(text) or _resolve_plain(self.loader, event)) == _STR:
            return text
        return None

    def _construct(self, event: yaml.ScalarEvent) -> Any:
        if not event.style and event.tag in (None, "!"):
            tag = _resolve_plain(self.loader, event)
        else:
            tag = event.tag if event.tag not in (None, "!") else "tag:yaml.org,2002:str"
        if tag == "tag:yaml.org,2002:str":
            return event.value
        if tag == "tag:yaml.org,2002:merge":
            return "<<"  # merge key: _set_item folds the mapping(s) in
        marks: Any = (event.start_mark, event.end_mark)
        node = yaml.ScalarNode(tag, event.value, marks[0], marks[1], event.style)
        constructor = self.loader.yaml_constructors.get(tag)
        if constructor is None:
            line, col = _mark(event)
            raise SourceError(f"unsupported YAML tag {tag}", line, col, self.child_path())
        try:
            return constructor(self.loader, node)
        except (yaml.YAMLError, ValueError) as exc:
            line, col = _mark(event)
            raise SourceError(f"invalid {tag.rsplit(':', 1)[-1]}: {exc}", line, col) from None

    def alias(self, event: yaml.AliasEvent) -> None:
        if event.anchor not in self.anchors:
            line, col = _mark(event)
            raise SourceError(f"unknown alias '*{event.anchor}'", line, col)
        value, weight = self.anchors[event.anchor]
        self.count(weight, event)
        self._record(self.child_path(), event)
        self.add(value, weight, event)


_STR = "tag:yaml.org,2002:str"
_PLAIN_TAGS: dict[str, str] = {}


def _resolve_plain(loader: yaml.SafeLoader, event: yaml.ScalarEvent) -> str:
    """Implicit tag of a plain scalar; memoised because job files repeat their words."""
    tag = _PLAIN_TAGS.get(event.value)
    if tag is None:
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        # Bounded: the words files repeat come early; unique ones (job names) would only
        # pin a dict of them for the daemon's life (1.8 MB at 100,000 jobs, issue 12).
        if len(_PLAIN_TAGS) < 4_096 and len(event.value) < 64:
            _PLAIN_TAGS[event.value] = tag
    return tag


def _path_key(key: Any) -> str | int:
    return key if isinstance(key, str | int) else str(key)


def _merge(target: dict[Any, Any], value: Any) -> None:
    sources = value if isinstance(value, list) else [value]
    for source in sources:
        if isinstance(source, dict):
            for key, item in source.items():
                target.setdefault(key, item)


def load_yaml(
    text: str, *, max_depth: int = 32, max_nodes: int = 100_000, positions: bool = True
) -> list[Document]:
    """Parse every document in `text`; raise SourceError with a position on any problem.

    `positions=False` places only the documents and the collections at depth 2 or less
    (each job's start), not every key and value: a quarter less work for a file that
    turns out valid (issue 12, start-up). A caller that finds a problem parses again
    with positions to place it; a SourceError raised without them may name the wrong
    line for a duplicate key's first use.
    """
    loader = _Loader(text)
    builder = _Builder(loader, max_depth, max_nodes, positions)
    docs: list[Document] = []
    try:
        while True:
            event = loader.get_event()  # type: ignore[no-untyped-call]
            kind = event.__class__
            if kind is yaml.ScalarEvent:
                builder.scalar(event)
            elif kind is yaml.MappingEndEvent:
                builder.end()
            elif kind is yaml.MappingStartEvent:
                _mapping_start(builder, event, docs)
            elif event is None or isinstance(event, yaml.StreamEndEvent):
                return docs
            else:
                _dispatch(builder, event, docs)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, max_depth) from None
    except yaml.YAMLError as exc:
        raise SourceError(f"YAML error: {exc}", 1, 1) from None
    finally:
        loader.dispose()


def _syntax_error(exc: yaml.MarkedYAMLError, max_depth: int) -> SourceError:
    mark: Any = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if "nesting depth" in str(exc.problem):
        # libyaml >= 0.2.6 (PyYAML 6.0.4 wheels) stops deep flow collections in its scanner,
        # which reads a flow collection ahead before the builder sees depth `max_depth`.
        # Same fault, same message, whichever layer notices first.
        return SourceError(f"nesting deeper than {max_depth} levels", line, col)
    message = f"YAML syntax error: {exc.problem or exc.context}"
    start: Any = exc.context_mark
    if exc.context and start is not None and start.line + 1 != line:
        message += f" ({exc.context} started at line {start.line + 1})"
    return SourceError(message, line, col)


def _dispatch(builder: _Builder, event: yaml.Event, docs: list[Document]) -> None:
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(builder, event, docs)


def _document_start(builder: _Builder, event: Any, docs: list[Document]) -> None:
    builder.doc = Document(None, _mark(event))
    builder.anchors = {}


def _document_end(builder: _Builder, event: Any, docs: list[Document]) -> None:
    assert builder.doc is not None
    docs.append(builder.doc)


def _mapping_start(builder: _Builder, event: Any, docs: list[Document]) -> None:
    builder.count(1, event)
    builder.start(event, "map")


def _sequence_start(builder: _Builder, event: Any, docs: list[Document]) -> None:
    builder.count(1, event)
    builder.start(event, "seq")


# Dispatch on the exact event class: scalars dominate, so no isinstance chain.
_HANDLERS: dict[type, Any] = {
    yaml.ScalarEvent: lambda b, e, d: b.scalar(e),
    yaml.MappingStartEvent: _mapping_start,
    yaml.MappingEndEvent: lambda b, e, d: b.end(),
    yaml.SequenceStartEvent: _sequence_start,
    yaml.SequenceEndEvent: lambda b, e, d: b.end(),
    yaml.AliasEvent: lambda b, e, d: b.alias(e),
    yaml.DocumentStartEvent: _document_start,
    yaml.DocumentEndEvent: _document_end,
}
