"""Cron expressions: validation and expansion into field sets; the only croniter importer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from croniter import croniter

from runner.errors import ScheduleError

CRON_FIELD = "schedule.cron"

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIVE_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_ALLOWED = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L or nW",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT, n#k or nL",
}
# Where each field sits in a 5-field probe expression; seconds share the minute range.
_PROBE_INDEX = {
    "second": 0,
    "minute": 0,
    "hour": 1,
    "day-of-month": 2,
    "month": 3,
    "day-of-week": 4,
}
# croniter's H (hashed) and R (random) values are not reproducible from the text alone.
_HASH_OR_RANDOM = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)
_NEAREST_WEEKDAY = re.compile(r"^(?:(\d+)W|W(\d+))$", re.IGNORECASE)
# Quartz writes "last Friday" as 5L; croniter only reads L5.
_QUARTZ_LAST_DOW = re.compile(r"^([0-7]|[a-z]{3})L$", re.IGNORECASE)
LAST = -1  # "last" in an n#k set


@dataclass(frozen=True, slots=True, eq=False)
class Spec:
    """A parsed cron expression: the allowed values of each field, shared by every job."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    dom: frozenset[int]
    dom_last: bool
    dom_nearest: int | None
    dow: frozenset[int]  # 0 = Sunday
    dow_nth: dict[int, frozenset[int]]  # weekday -> k of "k-th in month" (LAST = last)
    day_and: bool  # Vixie: AND the day fields when either starts with '*'
    fixed_time: bool  # minute and hour both fixed: the Vixie "fixed-time job"
    days_cache: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)


# ---------------------------------------------------------------- validation


def _split(expr: str) -> list[str]:
    text = expr.strip()
    if text.startswith("@"):
        macro = _MACROS.get(text.lower())
        if macro is None:
            known = ", ".join(_MACROS)
            raise ScheduleError(CRON_FIELD, f"unknown macro '{text}' (known: {known})")
        text = macro
    fields = text.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(
            CRON_FIELD, f"expected 5 fields (or 6 with leading seconds), got {len(fields)}"
        )
    return fields


def _normalize_dow(token: str) -> str:
    return ",".join(_QUARTZ_LAST_DOW.sub(r"L\1", part) for part in token.split(","))


@lru_cache(maxsize=4096)
def _check_field(name: str, token: str) -> None:
    """Expand one field alone, so the error names the field that croniter rejected.

    Cached (a token that passes is remembered; one that fails raises again): expressions
    share their fields, and five probes per distinct expression were 6% of the start of
    100,000 jobs with 1,440 expressions (issue 12).
    """
    bad = ScheduleError(CRON_FIELD, f"bad {name} field '{token}' (allowed {_ALLOWED[name]})")
    if any(_HASH_OR_RANDOM.match(part) for part in token.split(",")):
        raise bad
    probe = ["*"] * 5
    probe[_PROBE_INDEX[name]] = _normalize_dow(token) if name == "day-of-week" else token
    try:
        croniter.expand(" ".join(probe))
    except (ValueError, TypeError, KeyError, IndexError):
        # croniter's errors are ValueErrors; the others guard against its internals.
        raise bad from None


# ------------------------------------------------------------------- parsing


@lru_cache(maxsize=4096)
def parse(expr: str) -> Spec:
    """Parse once per distinct expression; every job using it shares the result."""
    fields = _split(expr)
    names = ("second", *_FIVE_FIELDS) if len(fields) == 6 else _FIVE_FIELDS
    for name, token in zip(names, fields, strict=True):
        _check_field(name, token)
    fields[-1] = _normalize_dow(fields[-1])
    try:
        expanded, nth = croniter.expand(" ".join(fields), second_at_beginning=len(fields) == 6)
    except (ValueError, TypeError, KeyError, IndexError):  # each field alone was fine
        raise ScheduleError(CRON_FIELD, f"bad expression '{expr}'") from None
    minute, hour, dom, _month, dow = fields[-5:]
    return Spec(
        seconds=tuple(_values(expanded[5], 0, 59)) if len(fields) == 6 else (0,),
        minutes=tuple(_values(expanded[0], 0, 59)),
        hours=tuple(_values(expanded[1], 0, 23)),
        months=frozenset(_values(expanded[3], 1, 12)),
        dom=frozenset() if _nearest(dom) else frozenset(_values(expanded[2], 1, 31)),
        dom_last="l" in expanded[2],
        dom_nearest=_nearest(dom),
        dow=frozenset(_values(expanded[4], 0, 6)) - nth.keys(),
        dow_nth=_nth_sets(nth),
        day_and=dom.startswith(("*", "?")) or dow.startswith(("*", "?")),
        fixed_time=not minute.startswith("*") and not hour.startswith("*"),
    )


def _values(expanded: list[int | str], low: int, high: int) -> list[int]:
    """croniter writes a full field as ['*'] and 'last day' as 'l'; keep the numbers."""
    if expanded == ["*"]:
        return list(range(low, high + 1))
    return sorted(v for v in expanded if isinstance(v, int))


def _nearest(dom_token: str) -> int | None:
    match = _NEAREST_WEEKDAY.match(dom_token)
    return int(match.group(1) or match.group(2)) if match else None


def _nth_sets(nth: dict[int, set[int | str]]) -> dict[int, frozenset[int]]:
    return {wd: frozenset(LAST if k == "l" else int(k) for k in ks) for wd, ks in nth.items()}
