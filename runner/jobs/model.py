"""The canonical job model: one pydantic class per Ductape kind, frozen, strict about fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from runner.jobs.durations import parse_duration, parse_timestamp

CANONICAL_KINDS = (
    "action",
    "workflow",
    "notification",
    "storage",
    "event",
    "database",
    "graph",
    "quota",
    "fallback",
)
KIND_ALIASES = {"feature": "workflow", "publish": "event", "database_action": "database"}
UNSUPPORTED_KINDS = ("job", "subscribe")
SUPPORTED_KINDS_TEXT = (
    "action, workflow (alias feature), notification, storage, event (alias publish), "
    "database (alias database_action), graph, quota, fallback"
)
STORAGE_OPERATIONS = ("upload", "download", "remove", "listFiles", "getSignedUrl")

# Anchored: pydantic's `pattern` searches, it does not match the whole string.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SECRET_REF = re.compile(r"\$\{([^}]*)\}")
_SECRET_SCHEMES = ("env", "file", "credential")


def _duration_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "description": "milliseconds"},
                {
                    "type": "string",
                    "pattern": r"^(\d+|(\d+(\.\d+)?(ms|s|m|h|d|w))+|[Pp].+)$",
                    "description": "'90s', '15m', '1h30m', '1d' or ISO 8601 'PT15M'",
                },
            ],
            "description": description,
        }
    )


def _timestamp_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "description": "milliseconds since epoch"},
                {"type": "string", "description": "ISO 8601; without offset it means `tz`"},
            ],
            "description": description,
        }
    )


Millis: TypeAlias = Annotated[int, BeforeValidator(parse_duration), _duration_schema("a duration")]
Tag: TypeAlias = Annotated[str, Field(min_length=1, max_length=256)]


def find_secret_refs(text: str) -> list[tuple[str, str]]:
    """Return (scheme, argument) for each ${scheme:argument} in `text`; invalid ones raise."""
    refs = []
    for match in _SECRET_REF.finditer(text):
        scheme, sep, arg = match.group(1).partition(":")
        if not sep or scheme not in _SECRET_SCHEMES or not arg:
            raise PydanticCustomError(
                "secret_ref",
                "invalid secret reference '${{ref}}': use ${env:NAME}, ${file:/path} "
                "or ${credential:NAME}",
                {"ref": match.group(1)},
            )
        if scheme == "file" and not arg.startswith("/"):
            raise PydanticCustomError(
                "secret_ref",
                "secret file reference must be an absolute path, got '{arg}'",
                {"arg": arg},
            )
        refs.append((scheme, arg))
    return refs


def _check_refs(value: Any) -> Any:
    """Validate every secret reference in nested strings; values stay unresolved."""
    if isinstance(value, str):
        find_secret_refs(value)
    elif isinstance(value, dict):
        for item in value.values():
            _check_refs(item)
    elif isinstance(value, list):
        for item in value:
            _check_refs(item)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Session(_Strict):
    """Ductape session context; `token` is a secret and should be a ${...} reference."""

    tag: Tag
    token: Annotated[str, Field(min_length=1)]

    @field_validator("token")
    @classmethod
    def _token_refs(cls, value: str) -> str:
        find_secret_refs(value)
        return value


def _session_from_text(value: Any) -> Any:
    # Newer Ductape accepts "tag:token" as well as {tag, token}.
    if isinstance(value, str):
        tag, sep, token = value.partition(":")
        if not sep:
            raise PydanticCustomError("session", "session must be {tag, token} or 'tag:token'")
        return {"tag": tag, "token": token}
    return value


class RetryPolicy(_Strict):
    """Backoff between attempts; Ductape's defaults: 1 s, x2, at most 300 s."""

    initial: Millis = 1_000
    max: Millis = 300_000
    multiplier: Annotated[float, Field(ge=1.0, le=100.0)] = 2.0
    jitter: Annotated[float, Field(ge=0.0, le=1.0, description="fraction of each delay")] = 0.1


class Catchup(_Strict):
    """What to do with occurrences missed while the daemon was down or stalled."""

    policy: Literal["skip", "latest", "all"] = "latest"
    window: Millis = 3_600_000


class DstPolicy(_Strict):
    """Overrides of the default (Vixie cron / cronie) DST behaviour."""

    skipped: Literal["shift", "skip"] | None = None
    repeated: Literal["once", "twice"] | None = None


def _zone(info: ValidationInfo) -> tzinfo:
    tz = info.data.get("tz", "UTC")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


class Schedule(_Strict):
    """When a job fires: once at start_at, or recurring by cron or every."""

    tz: str = "UTC"
    start_at: Annotated[datetime | None, _timestamp_schema("first fire; 0 or absent means now")] = (
        None
    )
    cron: str | None = None
    every: Annotated[Millis | None, Field(gt=0)] = None
    limit: Annotated[int | None, Field(ge=1)] = None
    end_date: Annotated[
        datetime | None,
        Field(alias="endDate"),
        _timestamp_schema("no fire after this instant"),
    ] = None

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError(
                "tz",
                "unknown time zone '{tz}' (use an IANA name such as 'Europe/Amsterdam')",
                {"tz": value},
            ) from None
        return value

    @field_validator("start_at", mode="before")
    @classmethod
    def _start(cls, value: Any, info: ValidationInfo) -> datetime | None:
        if value is None or value == 0 or value == "now":
            return None
        return parse_timestamp(value, _zone(info))

    @field_validator("end_date", mode="before")
    @classmethod
    def _end(cls, value: Any, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        end = parse_timestamp(value, _zone(info))
        start = info.data.get("start_at")
        if start is not None and end <= start:
            raise PydanticCustomError(
                "end_before_start",
                "endDate {end} is not after start_at {start}",
                {"end": end.isoformat(), "start": start.isoformat()},
            )
        return end

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        from runner.timing.firetimes import validate_cron  # croniter stays in one module

        try:
            validate_cron(value, info.data.get("tz", "UTC"))
        except ValueError as exc:
            msg = getattr(exc, "message", str(exc))
            raise PydanticCustomError("cron", "{msg}", {"msg": msg}) from None
        return value

    @property
    def recurring(self) -> bool:
        return self.cron is not None or self.every is not None


class _JobBase(_Strict):
    name: Annotated[str, Field(pattern=_NAME.pattern)]
    description: str | None = None
    env: Tag | None = None
    product: Tag | None = None
    input: Annotated[dict[str, Any], BeforeValidator(_check_refs)] = Field(default_factory=dict)
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    session: Annotated[Session | None, BeforeValidator(_session_from_text)] = None
    cache: Tag | None = None
    schedule: Schedule = Field(default_factory=Schedule)
    suspend: bool = False
    timeout: Annotated[Millis, Field(gt=0)] = 30_000
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    concurrency: Literal["forbid", "allow", "replace"] = "forbid"
    catchup: Catchup = Field(default_factory=Catchup)
    dst: DstPolicy = Field(default_factory=DstPolicy)
    jitter: Millis = 0
    labels: dict[Annotated[str, Field(max_length=63)], str] = Field(default_factory=dict)

    @field_validator("kind", mode="after", check_fields=False)
    @classmethod
    def _canonical_kind(cls, value: str) -> str:
        return KIND_ALIASES.get(value, value)

    @property
    def canonical_kind(self) -> str:
        kind: str = getattr(self, "kind")  # noqa: B009 - every concrete job class has it
        return kind


class ActionJob(_JobBase):
    """Run an app action: `actions.run`."""

    kind: Literal["action"]
    app: Tag
    event: Tag


class WorkflowJob(_JobBase):
    """Execute a workflow (Ductape feature): `feature.execute`."""

    kind: Literal["workflow", "feature"]
    workflow: Tag


class NotificationJob(_JobBase):
    """Send a notification: `notifications.send`."""

    kind: Literal["notification"]
    notification: Tag
    event: Tag


class StorageJob(_JobBase):
    """A storage operation: `storage.<operation>`."""

    kind: Literal["storage"]
    storage: Tag
    operation: Literal["upload", "download", "remove", "listFiles", "getSignedUrl"]


class EventJob(_JobBase):
    """Publish to a message broker: `messageBrokers.produce`."""

    kind: Literal["event", "publish"]
    broker: Tag
    event: Tag


class DatabaseJob(_JobBase):
    """A database operation: `databases.<operation>`."""

    kind: Literal["database", "database_action"]
    database: Tag
    operation: Annotated[str, Field(pattern=_IDENT.pattern)]


class GraphJob(_JobBase):
    """A graph operation: `graph.<operation>`."""

    kind: Literal["graph"]
    graph: Tag
    operation: Annotated[str, Field(pattern=_IDENT.pattern)]


class QuotaJob(_JobBase):
    """Run a quota: `quotas.run`."""

    kind: Literal["quota"]
    tag: Tag


class FallbackJob(_JobBase):
    """Run a fallback: `fallback.run`."""

    kind: Literal["fallback"]
    tag: Tag


Job: TypeAlias = Annotated[
    ActionJob
    | WorkflowJob
    | NotificationJob
    | StorageJob
    | EventJob
    | DatabaseJob
    | GraphJob
    | QuotaJob
    | FallbackJob,
    Field(discriminator="kind"),
]
JOB_ADAPTER: TypeAdapter[Job] = TypeAdapter(Job)
# Pydantic puts the discriminator's tag first in error locations; these are stripped.
DISCRIMINATOR_TAGS = frozenset((*CANONICAL_KINDS, *KIND_ALIASES))
