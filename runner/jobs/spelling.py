"""Normalise seed 003's spelling (`processor.job.schedule`) to the canonical job shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.jobs.model import KIND_ALIASES, SUPPORTED_KINDS_TEXT, UNSUPPORTED_KINDS

Path = tuple[str | int, ...]

# In seed 003 `event` is the tag of what runs; where it lands depends on the kind.
_EVENT_TARGET = {
    "workflow": "workflow",
    "quota": "tag",
    "fallback": "tag",
    "database": "operation",
    "storage": "operation",
    "graph": "operation",
}


@dataclass
class Normalised:
    """The canonical mapping plus where each moved field came from in the source."""

    data: dict[str, Any]
    origins: dict[Path, Path] = field(default_factory=dict)
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def source_path(self, path: Path) -> Path:
        """Map a canonical path back to the source path (longest moved prefix wins)."""
        for cut in range(len(path), 0, -1):
            origin = self.origins.get(path[:cut])
            if origin is not None:
                return origin + path[cut:]
        return path


def is_seed_003(raw: dict[str, Any]) -> bool:
    return "type" in raw or ("kind" not in raw and ("product_tag" in raw or "repeat" in raw))


def normalise(raw: dict[str, Any]) -> Normalised:
    """Return the canonical form of one job mapping, in either spelling."""
    if not is_seed_003(raw):
        out = Normalised(dict(raw))
        _check_kind(out, raw.get("kind"), ("kind",))
        return out
    return _from_seed_003(raw)


def _check_kind(out: Normalised, kind: Any, path: Path) -> None:
    if kind in UNSUPPORTED_KINDS:
        out.problems.append(
            (
                path,
                f"kind '{kind}' is not supported: Ductape has no immediate-execution method "
                f"for it; supported kinds are {SUPPORTED_KINDS_TEXT}",
            )
        )


def _from_seed_003(raw: dict[str, Any]) -> Normalised:
    data = dict(raw)
    out = Normalised(data)
    if "kind" in data and "type" in data:
        out.problems.append((("type",), "set either kind (seed 000) or type (seed 003), not both"))
        return out
    kind_value = data.pop("type", None)
    _check_kind(out, kind_value, ("type",))
    if kind_value is not None:
        data["kind"] = kind_value
        out.origins[("kind",)] = ("type",)
    kind = KIND_ALIASES.get(kind_value, kind_value) if isinstance(kind_value, str) else None
    _move(out, "product_tag", ("product",))
    if "event" in data and kind in _EVENT_TARGET:
        _move(out, "event", (_EVENT_TARGET[kind],))
    _move_schedule(out)
    return out


def _move(out: Normalised, key: str, target: Path) -> None:
    if key not in out.data:
        return
    value = out.data.pop(key)
    if target[0] in out.data:
        out.problems.append(((key,), f"'{key}' and '{target[0]}' mean the same; keep one"))
        return
    out.data[str(target[0])] = value
    out.origins[target] = (key,)


def _move_schedule(out: Normalised) -> None:
    data = out.data
    if "schedule" in data:
        if "repeat" in data or "start_at" in data:
            out.problems.append(
                (("schedule",), "seed 003 spelling uses start_at and repeat, not schedule")
            )
        return
    schedule: dict[str, Any] = {}
    if "start_at" in data:
        schedule["start_at"] = data.pop("start_at")
        out.origins[("schedule", "start_at")] = ("start_at",)
    repeat = data.pop("repeat", None)
    if isinstance(repeat, dict):
        if repeat.get("cron") is None and repeat.get("every") is None:
            out.problems.append((("repeat",), "repeat needs cron or every"))
        for key, value in repeat.items():
            schedule[key] = value
            out.origins[("schedule", key)] = ("repeat", key)
    elif repeat is not None:
        out.problems.append((("repeat",), "repeat must be a mapping with cron or every"))
    if schedule:
        data["schedule"] = schedule
        out.origins.setdefault(("schedule",), ("repeat",) if repeat else ("start_at",))
