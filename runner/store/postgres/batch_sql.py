"""The batched statements: each writes every row of its kind queued during one writer tick.

Rows travel as one array per column (`unnest`), so a tick costs a few statements
whatever its size. Lock order, the same in every statement, keeps replicas free of
deadlocks: job rows first, in name order, then occurrence rows (issue 14).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runner.store.postgres.schema import _JOB_COLUMNS, _OCC_COLUMNS, _OPEN, _SHARED_COLUMNS

CHANNEL = "ductape_runner"  # LISTEN/NOTIFY: 'claim <replica>' and 'jobs <replica>'
_SKIP_SETS = ("state", "reason", "finished_ms")  # what a forbid skip writes instead
_KEPT = [c for c in _OCC_COLUMNS if c not in _SKIP_SETS]

_TYPES = {
    "bigint": (
        "first_seen_ms anchor_ms execution_count last_scheduled_ms last_started_ms "
        "last_finished_ms next_fire_ms removed_ms scheduled_ms created_ms started_ms "
        "finished_ms duration_ms next_attempt_ms fencing seq lim anchor job_started "
        "job_finished next_fire"
    ),
    "integer": "retry_count attempts",
    "boolean": "paused chk leased ran counted forbid displace",
}
_TYPE_OF = {column: kind for kind, columns in _TYPES.items() for column in columns.split()}


def unnest(columns: Sequence[str], alias: str) -> str:
    """`unnest(%(alias_col)s::text[], ...) AS alias(col, ...)`: an array parameter per column."""
    arrays = ", ".join(f"%({alias}_{c})s::{_TYPE_OF.get(c, 'text')}[]" for c in columns)
    return f"unnest({arrays}) AS {alias}({', '.join(columns)})"


def arrays(columns: Sequence[str], alias: str, rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The parameters of `unnest(columns, alias)` for these rows: one list per column."""
    lists: list[list[Any]] = [[] for _ in columns]
    for row in rows:
        for values, value in zip(lists, row, strict=True):
            values.append(value)
    return {f"{alias}_{c}": values for c, values in zip(columns, lists, strict=True)}


# Job rows, one per name (the last queued wins), in name order. The shared fields
# (count, pause, results) are never overwritten from memory; the first sighting of a
# definition is kept, so every replica fires at the same phase.
SAVE_JOBS = f"""
    INSERT INTO jobs ({", ".join(_JOB_COLUMNS)})
    SELECT * FROM {unnest(_JOB_COLUMNS, "r")} ORDER BY name
    ON CONFLICT (name) DO UPDATE SET
        anchor_ms = CASE WHEN jobs.definition_hash = excluded.definition_hash
            THEN jobs.anchor_ms ELSE excluded.anchor_ms END,
        first_seen_ms = CASE WHEN jobs.definition_hash = excluded.definition_hash
            THEN jobs.first_seen_ms ELSE excluded.first_seen_ms END,
        definition_hash = excluded.definition_hash, schedule_hash = excluded.schedule_hash,
        path = excluded.path, last_scheduled_ms = excluded.last_scheduled_ms,
        next_fire_ms = excluded.next_fire_ms, status = excluded.status,
        removed_ms = excluded.removed_ms
    RETURNING {", ".join(_SHARED_COLUMNS)}
"""

PLAN_COLUMNS = [
    *(*_OCC_COLUMNS, "chk", "definition", "anchor", "lim", "leased", "forbid", "displace")
]
FORBID_REASON = "previous run still running on a replica (concurrency forbid)"
REPLACED_REASON = "replaced by a newer occurrence (concurrency replace)"
# Plans: insert-if-absent, unowned ('') when it is to run, owned by us when it is a
# record (a skip). `ok` is false when the checks refuse it: the job is paused, another
# first sighting of the same definition is stored, or `limit` is reached counting the
# runs still open and the earlier candidates of this batch (job rows of limited jobs
# locked first, in name order). A candidate already present is not counted: it waits,
# like the inserted ones, for a replica to claim it (DRAIN). A `forbid` candidate while
# another occurrence of its job is open anywhere (planned, claimed or running) is
# written skipped, by us: the replica that decided says so (`skipped`). A `replace`
# (`displace`) one, once inserted to run, halts the older open occurrences of its job:
# those a replica holds get `halt` set and their owners are told (`halt <replica>`:
# they stop the run and record it cancelled); those nobody claimed yet are cancelled here.
PLAN = f"""
    WITH c AS (SELECT * FROM {unnest(PLAN_COLUMNS, "c")}),
    locked AS MATERIALIZED (
        SELECT name FROM jobs
        WHERE name IN (SELECT job FROM c WHERE displace OR chk AND (lim IS NOT NULL OR forbid))
        ORDER BY name FOR UPDATE
    ), fresh AS (
        SELECT c.*, row_number() OVER (PARTITION BY c.job, c.chk ORDER BY c.scheduled_ms) AS nth
        FROM c WHERE NOT EXISTS (
            SELECT 1 FROM occurrences o WHERE o.job = c.job AND o.scheduled_ms = c.scheduled_ms)
    ), verdict AS (
        SELECT f.*, (NOT f.chk OR j.name IS NULL OR (
            NOT j.paused
            AND NOT (j.definition_hash = f.definition AND j.anchor_ms <> f.anchor)
            AND (f.lim IS NULL OR j.execution_count + f.nth + (
                SELECT count(*) FROM occurrences o
                WHERE o.job = f.job AND o.{_OPEN} AND o.trigger <> 'manual'
            ) <= f.lim)
        )) AS ok,
        f.forbid AND EXISTS (
            SELECT 1 FROM occurrences o
            WHERE o.job = f.job AND o.{_OPEN} AND o.scheduled_ms <> f.scheduled_ms
        ) AS busy
        FROM fresh f LEFT JOIN jobs j ON j.name = f.job
    ), ins AS (
        INSERT INTO occurrences ({", ".join(_KEPT)}, {", ".join(_SKIP_SETS)},
            owner, fencing, lease_until, planner)
        SELECT {", ".join(_KEPT)},
            CASE WHEN busy THEN 'skipped' ELSE state END,
            CASE WHEN busy THEN %(forbid_reason)s ELSE reason END,
            CASE WHEN busy THEN created_ms ELSE finished_ms END,
            CASE WHEN leased AND NOT busy THEN '' ELSE %(me)s END,
            CASE WHEN leased AND NOT busy THEN 0 ELSE nextval('fencing') END,
            CASE WHEN leased AND NOT busy THEN now() + make_interval(secs => %(spill)s) END,
            %(me)s
        FROM verdict WHERE ok AND (SELECT count(*) FROM locked) >= 0
        ORDER BY job, scheduled_ms
        ON CONFLICT (job, scheduled_ms) DO NOTHING
        RETURNING job, scheduled_ms, owner, state
    ), newer AS (
        SELECT ins.job, max(ins.scheduled_ms) AS scheduled_ms, max(c.created_ms) AS at_ms
        FROM ins JOIN c ON c.job = ins.job AND c.scheduled_ms = ins.scheduled_ms
        WHERE c.displace AND ins.owner = '' GROUP BY ins.job
    ), halted AS (
        UPDATE occurrences o SET halt = 'replaced'
        FROM newer n
        WHERE o.job = n.job AND o.scheduled_ms < n.scheduled_ms AND o.{_OPEN}
            AND o.owner <> '' AND o.halt IS NULL
        RETURNING o.owner
    ), dropped AS (
        UPDATE occurrences o SET state = 'cancelled', reason = %(replaced_reason)s,
            finished_ms = n.at_ms, owner = %(me)s, fencing = nextval('fencing'),
            lease_until = NULL
        FROM newer n
        WHERE o.job = n.job AND o.scheduled_ms < n.scheduled_ms
            AND o.owner = '' AND o.state = 'planned'
        RETURNING 1
    )
    SELECT c.job, c.scheduled_ms, COALESCE(v.ok, true),
        EXISTS (SELECT 1 FROM ins WHERE ins.job = c.job AND ins.scheduled_ms = c.scheduled_ms
            AND ins.state = 'skipped' AND c.state <> 'skipped'),
        (SELECT pg_notify('{CHANNEL}', 'claim ' || %(me)s)
         WHERE EXISTS (SELECT 1 FROM ins WHERE owner = '')),
        (SELECT pg_notify('{CHANNEL}', 'halt ' || %(me)s)
         WHERE EXISTS (SELECT 1 FROM halted WHERE owner <> %(me)s))
    FROM c LEFT JOIN verdict v ON v.job = c.job AND v.scheduled_ms = c.scheduled_ms
"""

# Claim up to `demand` unowned occurrences of jobs this replica has (`known`: their
# names, space-separated, which no name contains: one string, not thousands to
# encode at every claim), oldest first:
# those it planned at once, another replica's once that one had `spill` seconds to
# claim them itself (`lease_until` of an unowned row). Rows another replica is claiming
# at this moment are skipped, not waited for.
DRAIN = f"""
    WITH picked AS MATERIALIZED (
        SELECT u.job, u.scheduled_ms FROM occurrences u LEFT JOIN jobs j ON j.name = u.job
        WHERE u.owner = '' AND u.state = 'planned'
            AND u.job = ANY(string_to_array(%(known)s, ' '))
            AND (u.planner = %(me)s OR u.lease_until IS NULL OR u.lease_until < now())
            AND (u.trigger = 'manual' OR NOT COALESCE(j.paused, false))
        ORDER BY u.scheduled_ms LIMIT %(demand)s
        FOR UPDATE OF u SKIP LOCKED
    )
    UPDATE occurrences o SET owner = %(me)s, fencing = nextval('fencing'),
        lease_until = now() + make_interval(secs => %(lease)s)
    FROM picked WHERE o.job = picked.job AND o.scheduled_ms = picked.scheduled_ms
    RETURNING {", ".join(f"o.{c}" for c in _OCC_COLUMNS)}, o.fencing
"""

# Where the occurrences still waiting for a verdict stand: unowned ones still wait.
RESOLVE = f"""
    SELECT k.job, k.scheduled_ms, o.owner,
        o.trigger <> 'manual' AND COALESCE(j.paused, false) AS parked
    FROM {unnest(["job", "scheduled_ms"], "k")}
    LEFT JOIN occurrences o ON o.job = k.job AND o.scheduled_ms = k.scheduled_ms
    LEFT JOIN jobs j ON j.name = k.job
"""

UPDATE_COLUMNS = [
    *("job", "scheduled_ms", "fencing", "state", "reason", "attempts", "last_error"),
    *("started_ms", "next_attempt_ms"),
]
# Attempt started, pending retry: fenced (our token, still open).
UPDATE = f"""
    UPDATE occurrences o SET state = u.state, reason = u.reason, attempts = u.attempts,
        last_error = u.last_error, started_ms = u.started_ms, next_attempt_ms = u.next_attempt_ms
    FROM {unnest(UPDATE_COLUMNS, "u")}
    WHERE o.job = u.job AND o.scheduled_ms = u.scheduled_ms AND o.owner = %(me)s
        AND o.fencing = u.fencing AND o.{_OPEN}
"""

FINISH_COLUMNS = [
    *UPDATE_COLUMNS,
    *("finished_ms", "duration_ms", "seq", "ran", "counted", "job_started", "job_finished"),
    *("retry_count", "succeeded_hash", "status", "next_fire"),
]
# Final states (fenced) and, for those that landed, their jobs' shared counters in the
# same statement: `execution_count` grows by the counted ones, the last result is the
# last one that ran, status and next run come from the last one queued.
FINISH = f"""
    WITH f AS (SELECT * FROM {unnest(FINISH_COLUMNS, "f")}),
    locked AS MATERIALIZED (
        SELECT name FROM jobs WHERE name IN (SELECT job FROM f) ORDER BY name FOR UPDATE
    ), occ AS (
        UPDATE occurrences o SET state = f.state, reason = f.reason, attempts = f.attempts,
            last_error = f.last_error, started_ms = f.started_ms, finished_ms = f.finished_ms,
            duration_ms = f.duration_ms, next_attempt_ms = f.next_attempt_ms,
            lease_until = NULL
        FROM f
        WHERE o.job = f.job AND o.scheduled_ms = f.scheduled_ms AND o.owner = %(me)s
            AND o.fencing = f.fencing AND o.{_OPEN} AND (SELECT count(*) FROM locked) >= 0
        RETURNING o.job, o.scheduled_ms
    ), done AS (
        SELECT f.* FROM f JOIN occ ON occ.job = f.job AND occ.scheduled_ms = f.scheduled_ms
    ), last AS (
        SELECT DISTINCT ON (job) job, status, next_fire, succeeded_hash,
            sum(counted::int) OVER (PARTITION BY job) AS counted
        FROM done ORDER BY job, seq DESC
    ), ran AS (
        SELECT DISTINCT ON (job) * FROM done WHERE ran ORDER BY job, seq DESC
    ), counters AS (
        UPDATE jobs j SET
            execution_count = j.execution_count + l.counted,
            last_outcome = CASE WHEN r.job IS NULL THEN j.last_outcome ELSE r.state END,
            last_error = CASE WHEN r.job IS NULL THEN j.last_error ELSE r.last_error END,
            last_started_ms = CASE WHEN r.job IS NULL
                THEN j.last_started_ms ELSE r.job_started END,
            last_finished_ms = CASE WHEN r.job IS NULL
                THEN j.last_finished_ms ELSE r.job_finished END,
            retry_count = CASE WHEN r.job IS NULL THEN j.retry_count ELSE r.retry_count END,
            succeeded_hash = COALESCE(l.succeeded_hash, j.succeeded_hash),
            status = l.status, next_fire_ms = l.next_fire,
            changed = CASE WHEN r.job IS NULL THEN j.changed ELSE nextval('job_changes') END
        FROM last l LEFT JOIN ran r ON r.job = l.job
        WHERE j.name = l.job
        RETURNING 1
    )
    SELECT job, scheduled_ms FROM occ
"""

# Back to unowned: never started here, so any replica may run them at once (SIGTERM).
HAND_BACK = f"""
    WITH back AS (
        UPDATE occurrences SET owner = '', fencing = 0, lease_until = NULL
        WHERE owner = %(me)s AND state = 'planned' AND attempts = 0
        RETURNING 1
    ), rest AS (
        UPDATE occurrences SET lease_until = now() WHERE owner = %(me)s AND {_OPEN}
            AND NOT (state = 'planned' AND attempts = 0)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM back), (SELECT count(*) FROM rest),
        (SELECT pg_notify('{CHANNEL}', 'claim ' || %(me)s) WHERE EXISTS (SELECT 1 FROM back))
"""
