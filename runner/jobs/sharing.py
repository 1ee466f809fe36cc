"""Equal parts of many jobs held once: validated schedules and frozen sub-models (issue 12).

A folder of 100,000 jobs holds a handful of retry, catch-up and DST policies and far
fewer schedules than jobs. The models are frozen and compared by value, so handing a job
an equal instance another job already holds changes nothing a reader can see; it saves
memory per job and, for schedules, validating the same mapping again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from runner.jobs.model import Job, Schedule

_SHARED_PARTS = ("schedule", "retry", "catchup", "dst", "session")
_EMPTY_MAPPINGS = ("input", "labels")
_SHARED_STRINGS = ("kind", "env", "product", "cache", "concurrency")
_SHARED_MAX = 100_000  # distinct parts remembered; a long-lived daemon's edits add more
_shared: dict[Any, Any] = {}
_schedules: dict[tuple[Any, ...], Schedule] = {}


class _Empty(dict[Any, Any]):
    """The empty `input` or `labels` that every job without one holds (two empty dicts a
    job were 13 MB of 100,000: issue 12). Read-only, so that no job can change another's."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a job's definition is read-only")

    __setitem__ = __delitem__ = __ior__ = _refuse
    setdefault = update = pop = popitem = clear = _refuse

    def __reduce__(self) -> str:
        return "EMPTY"  # pickled (runner.jobs.stored) and copied as the one shared instance


EMPTY: dict[Any, Any] = _Empty()


def compact(job: Job) -> Job:
    """The job with its equal parts shared with other jobs' (issue 12: memory per job).

    The table keeps every distinct part it has seen, so it is emptied when it reaches
    _SHARED_MAX: jobs keep the instances they hold, later ones start sharing afresh.
    """
    if len(_shared) >= _SHARED_MAX:
        _shared.clear()
    fields = job.__dict__
    shared = _shared
    for name in _SHARED_PARTS:
        part = fields.get(name)
        if part is not None:
            # Not contextlib.suppress: five context managers a job were 0.1 s of 100,000.
            try:  # noqa: SIM105
                fields[name] = shared.setdefault(part, part)
            except TypeError:  # a part holding a dict is not hashable
                pass
    for name in _EMPTY_MAPPINGS:
        if fields.get(name) == {}:
            fields[name] = EMPTY
    for name in _SHARED_STRINGS:
        text = fields.get(name)
        if text.__class__ is str:
            fields[name] = sys.intern(text)
    # pydantic keeps, per instance, the set of fields the file gave; jobs written alike
    # give the same set, and a frozen job never changes it (216 B a job).
    given = job.__pydantic_fields_set__
    object.__setattr__(job, "__pydantic_fields_set__", shared.setdefault(frozenset(given), given))
    object.__setattr__(job, "__dict__", split_fields(type(job), fields.items()))
    return job


_HOLDERS: dict[type, type] = {}


def split_fields(cls: type, items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A job's field values in a dict that shares its keys with every job of its class.

    pydantic gives each model a dict of its own keys and values (464 B for a job's 19
    fields). CPython shares one table of keys among the attribute dicts of a plain
    class's instances when each is filled in the same order; such a dict, made for an
    instance of a stand-in class and handed to the job, holds only the values (224 B:
    24 MB less for 100,000 jobs, issue 12). It is an ordinary dict to every reader; a
    key added out of order would only make it a dict of its own again.
    """
    holder = _HOLDERS.get(cls)
    if holder is None:
        holder = _HOLDERS[cls] = type(f"_{cls.__name__}Fields", (), {})
    fields: dict[str, Any] = object.__new__(holder).__dict__
    for name, value in items:
        fields[name] = value
    return fields


_INTS: dict[int, int] = {}


def shared_int(value: int) -> int:
    """One int object per value: a job's line above 256 was an int of its own, 2.3 MB of
    100,000 jobs in files of 1,000, and so was each rebuilt job's `timeout` (issue 12,
    memory per job). Kept apart from `share`, where 1 == True would mix kinds."""
    if len(_INTS) >= _SHARED_MAX:
        _INTS.clear()
    return _INTS.setdefault(value, value)


def share(value: Any) -> Any:
    """The instance equal to `value` that jobs already share, else `value`, shared from now."""
    if len(_shared) >= _SHARED_MAX:
        _shared.clear()
    return _shared.setdefault(value, value)


def known_schedule(data: dict[str, Any]) -> None:
    """Replace a job mapping's `schedule` mapping by its validated, shared Schedule.

    Only a schedule that validates alone is replaced: any other is left for the job's
    validation, so its errors are located exactly as before. Validating a schedule
    runs its cron check, a fifth of validating a job (bench/startup.py, issue 12).
    """
    raw = data.get("schedule")
    if raw.__class__ is not dict:
        return
    # The type is part of the key: 1, 1.0 and True are equal but validate differently.
    key = tuple((name, value.__class__, value) for name, value in raw.items())
    try:
        found = _schedules.get(key)
    except TypeError:  # a value that is a list or a mapping: an error to locate
        return
    if found is None:
        try:
            found = Schedule.model_validate(raw)
        except ValidationError:
            return
        if len(_schedules) >= _SHARED_MAX:
            _schedules.clear()
        _schedules[key] = found
    data["schedule"] = found
