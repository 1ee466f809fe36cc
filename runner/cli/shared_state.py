"""`status` and `history` given `--state DSN`: the replicas' shared state, read from PostgreSQL.

No daemon is asked: every replica's rows are read in one read-only snapshot, so the
answer is the cluster's, not one replica's view. Output, exit codes and JSON field names
follow the control API's commands (runner.cli.ctl), plus `replicas`, `paused`,
`running_on` and `owner`. A SQLite state belongs to one daemon: its view is the truth.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, TextIO

from runner.cli.ctl import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    HISTORY_HEADERS,
    cell,
    history_row,
    table,
)
from runner.cli.visible import visible
from runner.daemon.control import iso, occurrence_dict
from runner.store import JobRecord
from runner.store.postgres import StoreUnavailable, display_dsn, is_dsn
from runner.store.postgres.readonly import Cluster, Owned, ReplicaRow, read_cluster, read_history

NOT_A_DSN = (
    "--state here takes a postgresql:// DSN; for a SQLite state ask the daemon (without --state)"
)


class _Unknown(Exception):
    """No job of that name in the shared state."""


def run_shared(
    command: str,
    job: str | None,
    dsn: str,
    *,
    as_json: bool | None,
    out: TextIO,
    err: TextIO,
    limit: int = 20,
) -> int:
    """Run `status` or `history` against the shared state; returns the exit code.

    `as_json` None means: JSON unless `out` is a terminal.
    """
    if not is_dsn(dsn):
        print(f"error: {NOT_A_DSN}", file=err)
        return EXIT_REFUSED
    try:
        payload = _payload(command, job, dsn, limit)
    except StoreUnavailable as exc:  # its reason names the DSN without the password
        print(f"error: cannot read the state database {visible(exc.reason)}", file=err)
        return EXIT_UNREACHABLE
    except _Unknown as exc:
        print(f"error: {visible(str(exc))}", file=err)
        return EXIT_REFUSED
    if as_json if as_json is not None else not out.isatty():
        print(json.dumps(payload, indent=2), file=out)
    elif command == "history":
        print(visible(render_history(payload), keep="\n"), file=out)
    else:
        render = render_status if job is None else render_job
        print(visible(render(payload), keep="\n"), file=out)
    return EXIT_OK


def _payload(command: str, job: str | None, dsn: str, limit: int) -> Any:
    if command == "history":
        found = read_history(dsn, job or "", limit)
        if found is None:
            raise _Unknown(f"no job named {job!r}")
        return [owned_dict(o) for o in found]
    cluster = read_cluster(dsn)
    if job is None:
        return status_dict(cluster, display_dsn(dsn))
    record = cluster.jobs.get(job)
    if record is None or record.removed_ms is not None:  # as the daemon: its file is gone
        raise _Unknown(f"no job named {job!r}")
    mine = _open_by_job(cluster).get(job, [])
    return job_dict(record, mine) | {"open_occurrences": [owned_dict(o) for o in mine]}


def _open_by_job(cluster: Cluster) -> dict[str, list[Owned]]:
    found: dict[str, list[Owned]] = {}
    for owned in cluster.open:
        found.setdefault(owned.occurrence.job, []).append(owned)
    return found


# ---- the JSON shapes --------------------------------------------------------------------


def status_dict(cluster: Cluster, where: str) -> dict[str, Any]:
    """Where the state is, who shares it, counts and the next run, and every job."""
    records = [r for _, r in sorted(cluster.jobs.items()) if r.removed_ms is None]
    running = _open_by_job(cluster)
    return {
        "state": where,
        "replicas": [replica_dict(r) for r in cluster.replicas],
        "summary": _summary(records),
        "jobs": [job_dict(r, running.get(r.name, [])) for r in records],
    }


def _summary(records: list[JobRecord]) -> dict[str, Any]:
    """A paused job's next fire time is not a next run: it starts nothing until resumed."""
    due = [r for r in records if r.next_fire_ms is not None and not r.paused]
    soonest = min(due, key=lambda r: (r.next_fire_ms or 0, r.name), default=None)
    nxt = None if soonest is None else {"job_id": soonest.name, "at": iso(soonest.next_fire_ms)}
    return {
        "jobs": len(records),
        "by_status": dict(sorted(Counter(r.status for r in records).items())),
        "paused": sum(r.paused for r in records),
        "next_run": nxt,
    }


def job_dict(record: JobRecord, open_occurrences: list[Owned]) -> dict[str, Any]:
    """The control API's job fields that the shared row holds (the definition's own, such
    as `kind` or `limit`, live in each replica's folder), and the replicas running it."""
    return {
        "job_id": record.name,
        "status": record.status,
        "paused": record.paused,
        "next_run_at": iso(record.next_fire_ms),
        "execution_count": record.execution_count,
        "retry_count": record.retry_count,
        "last_error": record.last_error,
        "path": record.path,
        "last_outcome": record.last_outcome,
        "last_started_at": iso(record.last_started_ms),
        "last_finished_at": iso(record.last_finished_ms),
        "running_on": sorted({o.owner for o in open_occurrences if o.owner}),
    }


def replica_dict(replica: ReplicaRow) -> dict[str, Any]:
    return {
        "replica_id": replica.id,
        "host": replica.host,
        "pid": replica.pid,
        "version": replica.version,
        "jobs": replica.jobs,
        "started_at": iso(replica.started_at),
        "seen_at": iso(replica.seen_at),
        "lease_s": replica.lease_s,
        "stopped_at": iso(replica.stopped_at),
        "state": replica.state,
        "leader": replica.leader,
    }


def owned_dict(owned: Owned) -> dict[str, Any]:
    """The control API's occurrence, and its owner (null while no replica has claimed it)."""
    return occurrence_dict(owned.occurrence) | {"owner": owned.owner or None}


# ---- tables -----------------------------------------------------------------------------

# Column heading -> JSON field, for each table.
_REPLICA_COLUMNS = {
    "REPLICA": "replica_id",
    "HOST": "host",
    "PID": "pid",
    "VERSION": "version",
    "JOBS": "jobs",
    "STARTED": "started_at",
    "LAST SEEN": "seen_at",
    "STATE": "state",
    "LEADER": "leader",
}
_JOB_COLUMNS = {
    "JOB": "job_id",
    "STATUS": "status",
    "PAUSED": "paused",
    "NEXT RUN": "next_run_at",
    "LAST OUTCOME": "last_outcome",
    "LAST FINISHED": "last_finished_at",
    "RUNS": "execution_count",
    "RUNNING ON": "running_on",
}
_OPEN_COLUMNS = {
    "SCHEDULED": "scheduled_at",
    "TRIGGER": "trigger",
    "STATE": "state",
    "ATTEMPTS": "attempts",
    "OWNER": "owner",
}


def render_status(payload: dict[str, Any]) -> str:
    """The state's location, the replicas, a summary line, the next run, the jobs."""
    replicas, summary, jobs = payload["replicas"], payload["summary"], payload["jobs"]
    lines = [f"state: {cell(payload['state'])}", ""]
    lines.append(_table(_REPLICA_COLUMNS, replicas) if replicas else "replicas: none recorded")
    counts = ", ".join(f"{n} {cell(status)}" for status, n in summary["by_status"].items())
    by_status = f" ({counts})" if counts else ""
    lines += ["", f"jobs: {summary['jobs']}{by_status}, paused: {summary['paused']}"]
    nxt = summary["next_run"]
    lines.append(f"next run: {cell(nxt['job_id'])} at {cell(nxt['at'])}" if nxt else "next run: -")
    return "\n".join(lines) + ("\n\n" + _table(_JOB_COLUMNS, jobs) if jobs else "")


def render_job(job: dict[str, Any]) -> str:
    """The job's fields, then its open occurrences and who holds them."""
    fields = [(k, _joined(v)) for k, v in job.items() if k != "open_occurrences"]
    text = table(("FIELD", "VALUE"), fields)
    if not job["open_occurrences"]:
        return text + "\n\nopen occurrences: none"
    return text + "\n\n" + _table(_OPEN_COLUMNS, job["open_occurrences"])


def render_history(occurrences: list[dict[str, Any]]) -> str:
    """The control API's history table, with the replica that held each occurrence."""
    if not occurrences:
        return "no runs yet"
    headers = (*HISTORY_HEADERS[:-1], "OWNER", HISTORY_HEADERS[-1])  # DETAIL stays last
    return table(headers, [_owner_before_detail(o) for o in occurrences])


def _owner_before_detail(occurrence: dict[str, Any]) -> tuple[Any, ...]:
    *row, detail = history_row(occurrence)
    return (*row, occurrence["owner"], detail)


def _table(columns: dict[str, str], items: list[dict[str, Any]]) -> str:
    return table(list(columns), [[_joined(i[key]) for key in columns.values()] for i in items])


def _joined(value: Any) -> Any:
    """A list (`running_on`) in one cell."""
    return ", ".join(value) if isinstance(value, list) else value
