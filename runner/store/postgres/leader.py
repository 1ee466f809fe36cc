"""The leader: one replica at a time does the cluster's chores, under a lease.

Occurrences need no leader (every replica plans them; the (job, instant) key makes a
second insert harmless). What would be done N times for nothing is done by the leader
alone: pruning the shared history. The leader renews a row's lease every lease/3;
the others look again right after the lease they last read runs out, so a dead
leader's duties move on within its lease. A clean stop gives the lease up and says so
(NOTIFY), so the next leader starts at once.
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog

from runner.store.postgres.batch_sql import CHANNEL
from runner.store.postgres.writer import _Writer

log = structlog.get_logger("runner.store")

DUTY = "chores"
AFTER_EXPIRY_S = 0.05  # looked at this long after the leader's lease runs out

# Take the lease if it is ours or expired (a new holder starts a new term); otherwise
# read who holds it and for how long still.
ELECT = """
    WITH won AS (
        INSERT INTO leaders (duty, holder, term, lease_until)
        VALUES (%(duty)s, %(me)s, 1, now() + make_interval(secs => %(lease)s))
        ON CONFLICT (duty) DO UPDATE SET holder = excluded.holder,
            term = leaders.term + (leaders.holder <> excluded.holder)::int,
            lease_until = excluded.lease_until
        WHERE leaders.holder = excluded.holder OR leaders.lease_until < now()
        RETURNING holder, term, 0::float8 AS left_s
    )
    SELECT holder, term, left_s FROM won
    UNION ALL
    SELECT holder, term, extract(epoch FROM lease_until - now())::float8 FROM leaders
    WHERE duty = %(duty)s AND NOT EXISTS (SELECT 1 FROM won)
"""

RESIGN = f"""
    UPDATE leaders SET lease_until = now() WHERE duty = %(duty)s AND holder = %(me)s
    RETURNING pg_notify('{CHANNEL}', 'leader ' || %(me)s)
"""


class _Leadership(_Writer):
    """Who does the chores: this replica while `leading()`."""

    _lead_until: float  # monotonic: our lease as we last renewed it
    _leader_wait: float  # until the next election: the leader's lease, as last read
    _term: int

    def leading(self) -> bool:
        return self.available and self.clock.monotonic() < self._lead_until

    async def _elect(self, conn: psycopg.AsyncConnection[Any]) -> None:
        sent = self.clock.monotonic()
        params = {"duty": DUTY, "me": self.replica_id, "lease": self.lease_s}
        row = await (await conn.execute(ELECT, params)).fetchone()
        was = self.leading()
        if row is not None and row[0] == self.replica_id:
            self._lead_until = sent + self.lease_s
            self._leader_wait = self.lease_s / 3
            if not was or row[1] != self._term:
                log.info("leader.elected", replica=self.replica_id, term=row[1], duties=DUTY)
            self._term = row[1]
            return
        self._lead_until = 0.0
        if was:
            log.warning("leader.lost", replica=self.replica_id, holder=row[0] if row else None)
        # Another holds it: look again just after its lease runs out.
        left = self.lease_s / 3 if row is None else max(0.0, float(row[2]))
        self._leader_wait = min(self.lease_s / 3, left + AFTER_EXPIRY_S)

    async def _resign(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._lead_until:
            await conn.execute(RESIGN, {"duty": DUTY, "me": self.replica_id})
            self._lead_until = 0.0
