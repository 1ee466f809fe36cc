"""Parsing of durations and timestamps as job files spell them (pure functions)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo

# Ductape's unit is the millisecond; humans write 90s, 15m, 1h30m or ISO 8601 PT15M.
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_HUMAN = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_ISO = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)
# A duration above ten years is almost certainly a unit mistake (seconds given as ms?).
MAX_DURATION_MS = 10 * 366 * 86_400_000


def parse_duration(value: object) -> int:
    """Return milliseconds for an int (ms), '90s'/'1h30m'/'250ms', or ISO 8601 'PT15M'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float) and value.is_integer():
        ms = int(value)
    elif isinstance(value, str):
        ms = _parse_duration_text(value.strip())
    else:
        raise ValueError(f"expected a duration (milliseconds or '15m'), got {type(value).__name__}")
    if ms < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    if ms > MAX_DURATION_MS:
        raise ValueError(f"duration {value!r} is longer than ten years")
    return ms


def _parse_duration_text(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text.upper().startswith("P"):
        return _parse_iso_duration(text)
    pos, total = 0, 0.0
    for match in _HUMAN.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {text!r}: use milliseconds or a number with a unit "
            "(ms, s, m, h, d, w) such as '90s', '15m', '1h30m', or ISO 8601 such as 'PT15M'"
        )
    return round(total)


def _parse_iso_duration(text: str) -> int:
    match = _ISO.fullmatch(text.upper())
    if match is None or text.upper() in ("P", "PT") or text.upper().endswith("T"):
        raise ValueError(
            f"invalid ISO 8601 duration {text!r} (months and years are not fixed lengths; "
            "use weeks, days, hours, minutes, seconds such as 'PT15M' or 'P1D')"
        )
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    seconds = (
        parts.get("w", 0) * 604_800
        + parts.get("d", 0) * 86_400
        + parts.get("h", 0) * 3_600
        + parts.get("m", 0) * 60
        + parts.get("s", 0)
    )
    return round(seconds * 1_000)


def parse_timestamp(value: object, zone: tzinfo) -> datetime:
    """Return an aware UTC datetime for ms since the epoch or ISO 8601; naive means `zone`."""
    if isinstance(value, bool):
        raise ValueError("expected a timestamp, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"timestamp must not be negative, got {value}")
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
        except OverflowError:
            raise ValueError(f"timestamp {value} is out of range") from None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):  # YAML reads 2026-01-15 as a date: midnight in the zone
        moment = datetime.combine(value, time())
    elif isinstance(value, str):
        moment = _parse_iso_timestamp(value.strip())
    else:
        raise ValueError(
            f"expected a timestamp (ms since epoch or ISO 8601), got {type(value).__name__}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def _parse_iso_timestamp(text: str) -> datetime:
    if text.isdigit():
        return parse_timestamp(int(text), UTC)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid timestamp {text!r}: use ISO 8601 such as '2026-01-15T10:00:00Z' "
            "or milliseconds since the epoch"
        ) from None
