"""Job → Ductape operation: which SDK module.method each job kind calls, and with what object."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.errors import RunnerError
from runner.jobs.model import (
    STORAGE_OPERATIONS,
    ActionJob,
    DatabaseJob,
    EventJob,
    FallbackJob,
    GraphJob,
    Job,
    NotificationJob,
    QuotaJob,
    StorageJob,
    WorkflowJob,
)

# Fields every params object carries; a job's input must not collide with them.
COMMON_FIELDS = ("product", "env", "session", "cache")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class OperationError(RunnerError):
    """A job cannot be turned into an operation (no product/env, colliding input fields)."""

    def __init__(self, job: str, message: str) -> None:
        self.job = job
        self.message = message
        super().__init__(f"job '{job}': {message}")


@dataclass(frozen=True)
class Operation:
    """One SDK call: `module.method(*params)`; params is a one-element list of an object."""

    module: str
    method: str
    params: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return f"{self.module}.{self.method}"


@dataclass(frozen=True)
class OperationSpec:
    """What the proxy accepts for one job kind; the emulator validates calls against it."""

    kind: str
    module: str
    methods: frozenset[str] | None  # None: any identifier (database and graph operations)
    required: tuple[str, ...]


# The contract table (ductape-api.md, "Operation per job kind"), as data.
OPERATION_SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("action", "actions", frozenset({"run"}), ("app", "action", "input")),
    OperationSpec(
        "workflow", "feature", frozenset({"execute"}), ("tag", "input", "idempotency_key")
    ),
    OperationSpec(
        "notification", "notifications", frozenset({"send"}), ("notification", "event", "input")
    ),
    OperationSpec("storage", "storage", frozenset(STORAGE_OPERATIONS), ("storage",)),
    OperationSpec("event", "messageBrokers", frozenset({"produce"}), ("event", "message")),
    OperationSpec("database", "databases", None, ("database",)),
    OperationSpec("graph", "graph", None, ("graph",)),
    OperationSpec("quota", "quotas", frozenset({"run"}), ("tag", "input")),
    OperationSpec("fallback", "fallback", frozenset({"run"}), ("tag", "input")),
)
SPEC_BY_KIND = {spec.kind: spec for spec in OPERATION_SPECS}
SPEC_BY_MODULE = {spec.module: spec for spec in OPERATION_SPECS}


def find_spec(module: str, method: str) -> OperationSpec | None:
    """The spec a module.method pair belongs to, or None when the proxy would not know it."""
    spec = SPEC_BY_MODULE.get(module)
    if spec is None:
        return None
    known = spec.methods is None and IDENTIFIER.fullmatch(method) is not None
    return spec if known or (spec.methods is not None and method in spec.methods) else None


# Each builder returns (method, kind-specific fields). `key` is the idempotency key.
Fields = dict[str, Any]
Builder = Callable[[Any, str], tuple[str, Fields]]


def _input(job: Job) -> dict[str, Any]:
    # A deep copy: the operation must never share mutable state with the frozen job.
    copied: dict[str, Any] = _copy(job.input)
    return copied


def _copy(value: Any) -> Any:
    """A deep copy of parsed YAML/TOML data: new dicts and lists, immutable leaves shared.
    About four times cheaper than copy.deepcopy, which runs once per occurrence here."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    return copy.deepcopy(value)  # anything else (a TOML datetime is immutable too)


def _action(job: ActionJob, key: str) -> tuple[str, Fields]:
    return "run", {"app": job.app, "action": job.event, "input": _input(job)}


def _workflow(job: WorkflowJob, key: str) -> tuple[str, Fields]:
    fields = {"tag": job.workflow, "input": _input(job), "idempotency_key": key}
    return "execute", {**fields, "retries": job.retries, "timeout": job.timeout}


def _notification(job: NotificationJob, key: str) -> tuple[str, Fields]:
    fields = {"notification": job.notification, "event": job.event, "input": _input(job)}
    return "send", fields


def _storage(job: StorageJob, key: str) -> tuple[str, Fields]:
    return job.operation, _merge(job.name, {"storage": job.storage}, _input(job))


def _event(job: EventJob, key: str) -> tuple[str, Fields]:
    return "produce", {"event": f"{job.broker}:{job.event}", "message": _input(job)}


def _database(job: DatabaseJob, key: str) -> tuple[str, Fields]:
    given = _input(job)
    if "table" in given:
        if "entity" in given:
            raise OperationError(job.name, "input sets both `table` and `entity`; keep one")
        given["entity"] = given.pop("table")
    return job.operation, _merge(job.name, {"database": job.database}, given)


def _graph(job: GraphJob, key: str) -> tuple[str, Fields]:
    return job.operation, _merge(job.name, {"graph": job.graph}, _input(job))


def _tagged(job: QuotaJob | FallbackJob, key: str) -> tuple[str, Fields]:
    return "run", {"tag": job.tag, "input": _input(job)}


BUILDERS: dict[str, Builder] = {
    "action": _action,
    "workflow": _workflow,
    "notification": _notification,
    "storage": _storage,
    "event": _event,
    "database": _database,
    "graph": _graph,
    "quota": _tagged,
    "fallback": _tagged,
}


def _merge(job: str, fields: Fields, given: dict[str, Any]) -> Fields:
    clash = sorted(set(given) & {*fields, *COMMON_FIELDS})
    if clash:
        names = ", ".join(clash)
        raise OperationError(job, f"input field(s) {names} are set by the runner; rename them")
    return {**fields, **given}


def build_operation(
    job: Job,
    *,
    idempotency_key: str,
    default_product: str | None,
    default_env: str | None,
) -> Operation:
    """Map a job to its SDK call. Secret references and `$` operators are left as written."""
    kind = job.canonical_kind
    builder = BUILDERS.get(kind)
    if builder is None:
        raise OperationError(job.name, f"kind '{kind}' has no Ductape operation")
    method, fields = builder(job, idempotency_key)
    common = _common_fields(job, default_product, default_env)
    return Operation(SPEC_BY_KIND[kind].module, method, [{**common, **fields}])


def _common_fields(job: Job, default_product: str | None, default_env: str | None) -> Fields:
    product = job.product or default_product
    env = job.env or default_env
    missing = [name for name, value in (("product", product), ("env", env)) if not value]
    if missing:
        names = " and ".join(f"`{name}`" for name in missing)
        raise OperationError(
            job.name, f"no {names}: set it in the job file or as a runner-wide default"
        )
    fields: Fields = {"product": product, "env": env}
    if job.session is not None:
        fields["session"] = {"tag": job.session.tag, "token": job.session.token}
    if job.cache is not None:
        fields["cache"] = job.cache
    return fields
