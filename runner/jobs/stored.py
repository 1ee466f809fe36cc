"""Validated jobs kept between starts: each accepted file's jobs in a plain stored form.

A restart whose job files did not change rebuilds their jobs from this form instead of
parsing and validating them again: YAML and validation were two thirds of a 100,000-job
start (issue 12). The form holds plain values (pickled, but read back by an unpickler
that builds no class other than dates and times, and gives back the shared empty
mapping), and the models are rebuilt without validation, so a form is trusted only
under the key it was written with: a hash of the code that parses and validates
(`runner.jobs`, `runner.timing`), the versions of the libraries it uses, and the limits
and defaults. Any other key, or any form this module cannot read, means the file is
read and validated anew.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from runner.jobs.loader import Defaults, Limits, LoadedJob
from runner.jobs.model import (
    ActionJob,
    Catchup,
    DatabaseJob,
    DstPolicy,
    EventJob,
    FallbackJob,
    GraphJob,
    NotificationJob,
    QuotaJob,
    RetryPolicy,
    Schedule,
    Session,
    StorageJob,
    WorkflowJob,
)
from runner.jobs.sharing import share, shared_int, split_fields

FORMAT = 1  # bump when the layout below changes
_JOB_CLASSES: dict[str, type[BaseModel]] = {
    cls.__name__: cls
    for cls in (
        ActionJob,
        WorkflowJob,
        NotificationJob,
        StorageJob,
        EventJob,
        DatabaseJob,
        GraphJob,
        QuotaJob,
        FallbackJob,
    )
}
_PART_CLASSES: dict[str, type[BaseModel]] = {
    cls.__name__: cls for cls in (Schedule, RetryPolicy, Catchup, DstPolicy, Session)
}
_PART_FIELDS = frozenset(("schedule", "retry", "catchup", "dst", "session"))
# What a job's input and a schedule's instants may hold besides plain data (YAML
# timestamps, zones); nothing else is built when a form is read.
_ALLOWED = {
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("zoneinfo", "ZoneInfo._unpickle"),
    ("runner.jobs.sharing", "EMPTY"),  # the empty `input` and `labels` jobs share
}


class Unreadable(Exception):
    """A stored form that cannot be rebuilt here: the file is read anew."""


def code_key(limits: Limits, defaults: Defaults) -> str:
    """What a stored form is valid for: this code, these libraries, limits and defaults."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent / "timing"):
        for path in sorted(folder.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    libraries = [version(name) for name in ("pydantic", "pydantic-core", "PyYAML", "croniter")]
    digest.update(repr((FORMAT, sys.version, libraries, limits, defaults)).encode())
    return digest.hexdigest()[:32]


def dump(jobs: list[LoadedJob]) -> bytes | None:
    """The stored form of one file's validated jobs, or None if it cannot have one."""
    shapes: dict[tuple[str, tuple[str, ...]], int] = {}
    parts: dict[int, int] = {}  # id(part) -> index; parts are shared between jobs
    part_forms: list[bytes] = []
    field_sets: dict[tuple[str, ...], int] = {}
    rows = []
    for loaded in jobs:
        job = loaded.job
        values = job.__dict__
        if job.__pydantic_extra__ is not None or job.__pydantic_private__ is not None:
            return None
        shape = shapes.setdefault((type(job).__name__, tuple(values)), len(shapes))
        row = [
            _part_index(value, parts, part_forms) if name in _PART_FIELDS else value
            for name, value in values.items()
        ]
        given = field_sets.setdefault(tuple(sorted(job.__pydantic_fields_set__)), len(field_sets))
        rows.append((shape, row, given, loaded.line, loaded.digest))
    if any(form is None for form in part_forms):
        return None
    forms = (FORMAT, list(shapes), part_forms, list(field_sets), rows)
    return pickle.dumps(forms, protocol=5)


def _part_index(part: Any, parts: dict[int, int], forms: list[Any]) -> int | None:
    if part is None:
        return None
    index = parts.get(id(part))
    if index is None:
        index = parts[id(part)] = len(forms)
        if part.__pydantic_extra__ is not None or part.__pydantic_private__ is not None:
            forms.append(None)
        else:
            state = (
                type(part).__name__,
                part.__dict__,
                tuple(sorted(part.__pydantic_fields_set__)),
            )
            forms.append(pickle.dumps(state, protocol=5))
    return index


def load(blob: bytes, path: str) -> list[LoadedJob]:
    """Rebuild the jobs of `path` from their stored form; Unreadable if it cannot be."""
    try:
        found, shapes, part_forms, field_sets, rows = _loads(blob)
        if found != FORMAT:
            raise Unreadable(f"format {found}")
        parts = [_part(form) for form in part_forms]
        classes = [_shape(name, keys) for name, keys in shapes]
        given = [share(frozenset(names)) for names in field_sets]
        return _jobs(rows, classes, parts, given, path)
    except Unreadable:
        raise
    except Exception as exc:  # a truncated or foreign form: read the file instead
        raise Unreadable(f"{type(exc).__name__}: {exc}") from None


def _shape(name: str, keys: list[str]) -> tuple[type[BaseModel], tuple[str, ...], list[int]]:
    cls = _JOB_CLASSES[name]
    if set(keys) != set(cls.model_fields):
        raise Unreadable(f"{name} fields changed")
    return cls, tuple(keys), [i for i, key in enumerate(keys) if key in _PART_FIELDS]


def _jobs(
    rows: list[Any],
    classes: list[tuple[type[BaseModel], tuple[str, ...], list[int]]],
    parts: list[BaseModel],
    given: list[frozenset[str]],
    path: str,
) -> list[LoadedJob]:
    # One loop, no call per job but the constructors: 100,000 jobs go through it.
    setattr_ = object.__setattr__
    jobs = []
    # Where a shape's first row holds ints (a timeout): pickle gives each row an int of
    # its own, which validation does not (36 B a job; issue 12, memory per job).
    int_at: dict[int, list[int]] = {}
    for shape, row, fields_set, line, digest in rows:
        cls, keys, part_at = classes[shape]
        for i in part_at:
            if row[i] is not None:
                row[i] = parts[row[i]]
        ints = int_at.get(shape)
        if ints is None:
            ints = int_at[shape] = [i for i, value in enumerate(row) if type(value) is int]
        for i in ints:
            if type(row[i]) is int:
                row[i] = shared_int(row[i])
        job = cls.__new__(cls)
        setattr_(job, "__dict__", split_fields(cls, zip(keys, row, strict=True)))
        setattr_(job, "__pydantic_fields_set__", given[fields_set])
        setattr_(job, "__pydantic_extra__", None)
        setattr_(job, "__pydantic_private__", None)
        jobs.append(LoadedJob(job, path, shared_int(line), digest))
    return jobs


# Parts rebuilt so far, by their stored form: equal forms give the one instance (jobs in
# different files share their schedules as they do when validated; runner.jobs.sharing).
_parts: dict[bytes, BaseModel] = {}
_PARTS_MAX = 100_000


def _part(form: bytes) -> BaseModel:
    part = _parts.get(form)
    if part is None:
        name, values, fields_set = _loads(form)
        cls = _PART_CLASSES[name]
        if set(values) != set(cls.model_fields):
            raise Unreadable(f"{name} fields changed")
        part = share(_built(cls, values, fields_set))
        if len(_parts) >= _PARTS_MAX:
            _parts.clear()
        _parts[form] = part
    return part


def _built(cls: type[BaseModel], values: dict[str, Any], fields_set: tuple[str, ...]) -> Any:
    """An instance with these validated values, as validation would have left it."""
    model = cls.__new__(cls)
    setattr_ = object.__setattr__
    setattr_(model, "__dict__", values)
    setattr_(model, "__pydantic_fields_set__", share(frozenset(fields_set)))
    setattr_(model, "__pydantic_extra__", None)
    setattr_(model, "__pydantic_private__", None)
    return model


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise Unreadable(f"{module}.{name} is not allowed in a stored form")
        return super().find_class(module, name)


def _loads(blob: bytes) -> Any:
    return _Unpickler(io.BytesIO(blob)).load()
