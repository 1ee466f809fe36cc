"""Running one occurrence against Ductape: attempts, retries, secrets, dry runs, summaries."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from runner.daemon.decisions import from_ms, to_ms
from runner.daemon.runs import RunControl
from runner.ductape.client import DuctapeClient, DuctapeError, RetryableError
from runner.ductape.operations import Operation, OperationError, build_operation
from runner.errors import SecretError
from runner.jobs.model import Job
from runner.jobs.secrets import SecretPolicy, SecretRegistry, redact, resolve
from runner.store import Occurrence, StateError, Store
from runner.timing.clock import Clock
from runner.timing.retry import plan_retry

log = structlog.get_logger("runner.run")

MAX_ERROR_CHARS = 2_000


def clean_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Text from Ductape made safe to store and log: a NUL byte (which PostgreSQL's text
    columns refuse, issue 18 bug 3) and other C0 controls but tab and newline become
    U+FFFD, and the length is bounded."""
    cleaned = text.translate(_CONTROLS)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


_CONTROLS = {c: "\ufffd" for c in range(32) if chr(c) not in "\t\n"}


@dataclass
class RunHooks:
    """Callbacks for metrics; the executor knows nothing about Prometheus."""

    on_attempt: Callable[[Job, float], None] = lambda job, seconds: None
    on_finished: Callable[[Job, Occurrence], None] = lambda job, occ: None
    on_started: Callable[[Job, Occurrence, float], None] = lambda job, occ, late_s: None
    on_call: Callable[[DuctapeError | None], None] = lambda error: None  # each call's result


@dataclass
class DuctapeExecutor:
    """The scheduler's Executor: every attempt of one occurrence, with the job's retry policy."""

    client: DuctapeClient | None
    store: Store
    clock: Clock
    default_product: str | None = None
    default_env: str | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    credentials_dir: str | None = None
    registry: SecretRegistry = field(default_factory=SecretRegistry)
    policy: SecretPolicy = field(default_factory=SecretPolicy)
    dry_run: bool = False
    rand: Callable[[], float] = random.random
    hooks: RunHooks = field(default_factory=RunHooks)

    async def __call__(
        self, job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl
    ) -> None:
        late_s = (self.clock.now() - from_ms(occ.scheduled_ms)).total_seconds()
        self.hooks.on_started(job, occ, late_s)
        try:
            op = build_operation(
                job,
                idempotency_key=occ.idempotency_key,
                default_product=self.default_product,
                default_env=self.default_env,
            )
        except OperationError as exc:
            self._fail(occ, str(exc))
        else:
            if self.dry_run:
                self._dry_run(job, occ, op)
            else:
                await self._attempts(job, occ, op, deadline, control)
        if occ.state not in ("planned", "running"):
            self._summary(job, occ)

    async def _attempts(
        self,
        job: Job,
        occ: Occurrence,
        op: Operation,
        deadline: datetime | None,
        control: RunControl,
    ) -> None:
        while True:
            if not await self._wait_for_turn(occ, control):
                return
            try:
                params = [self._resolve(p) for p in op.params]  # fields named from the top
            except SecretError as exc:  # nothing is sent
                self._fail(occ, f"job {job.name}: {exc}")
                return
            error = await self._attempt(job, occ, Operation(op.module, op.method, params))
            if error is None:
                return
            if not self._plan_retry(job, occ, error, deadline):
                return

    def _resolve(self, params: dict[str, object]) -> dict[str, object]:
        resolved: dict[str, object] = resolve(
            params,
            environ=self.environ,
            credentials_dir=self.credentials_dir,
            registry=self.registry,
            policy=self.policy,
        )
        return resolved

    async def _wait_for_turn(self, occ: Occurrence, control: RunControl) -> bool:
        """Sleep until a pending retry is due, and while the job is paused or suspended;
        False if the scheduler stopped the run first."""
        if occ.next_attempt_ms is not None:
            wait_s = (occ.next_attempt_ms - to_ms(self.clock.now())) / 1000
            if wait_s > 0:
                await self.clock.sleep(wait_s, control.stop)
        if control.held:
            log.info("run.held", job=occ.job, scheduled_at=from_ms(occ.scheduled_ms).isoformat())
            await control.released()
            if control.stop.is_set():
                return False  # removed, replaced or shut down while held: no attempt
        # Stopped: on shutdown it stays planned with next_attempt_ms; when removed, cancelled.
        return not (control.stop.is_set() and occ.attempts > 0)

    async def _attempt(self, job: Job, occ: Occurrence, op: Operation) -> DuctapeError | None:
        assert self.client is not None
        occ.attempts += 1
        occ.state, occ.next_attempt_ms = "running", None
        try:
            self.store.update_occurrence(occ)
        except StateError as exc:  # not on disk and cannot be written: call nothing
            occ.attempts -= 1
            occ.state, occ.reason = "skipped", f"not started: {exc.problem}"
            return None
        started = self.clock.monotonic()
        error: DuctapeError | None = None
        try:
            await self.client.execute(
                op, idempotency_key=occ.idempotency_key, timeout_s=job.timeout / 1000
            )
        except DuctapeError as exc:
            error = exc
        self.hooks.on_attempt(job, self.clock.monotonic() - started)
        self.hooks.on_call(error)
        if error is not None:
            return error
        occ.state, occ.last_error = "succeeded", None
        return None

    def _plan_retry(
        self, job: Job, occ: Occurrence, error: DuctapeError, deadline: datetime | None
    ) -> bool:
        retryable = isinstance(error, RetryableError)
        decision = plan_retry(
            job.retry,
            attempt=occ.attempts,
            retries=job.retries,
            now=self.clock.now(),
            rand=self.rand,
            retryable=retryable,
            retry_after_s=error.retry_after_s if isinstance(error, RetryableError) else None,
            deadline=deadline,
            scheduled=from_ms(occ.scheduled_ms),
        )
        message = self._clean(str(error))
        log.warning(
            "run.attempt_failed",
            job=job.name,
            scheduled_at=from_ms(occ.scheduled_ms).isoformat(),
            attempt=occ.attempts,
            error=message,
            retryable=retryable,
            decision=decision.reason,
        )
        if not decision.retry:
            self._fail(occ, f"{message} [{decision.reason}]")
            return False
        occ.state, occ.last_error = "planned", message
        occ.next_attempt_ms = to_ms(self.clock.now()) + round(decision.delay_s * 1000)
        self.store.update_occurrence(occ)  # a pending retry survives a restart
        return True

    def _fail(self, occ: Occurrence, message: str) -> None:
        occ.state, occ.last_error, occ.next_attempt_ms = "failed", self._clean(message), None

    def _dry_run(self, job: Job, occ: Occurrence, op: Operation) -> None:
        occ.state, occ.reason = "dry_run", "dry run: nothing was called"
        log.info(
            "run.dry_run",
            job=job.name,
            scheduled_at=from_ms(occ.scheduled_ms).isoformat(),
            module=op.module,
            method=op.method,
            params=op.params,  # unresolved: references, never values; redacted by key too
            idempotency_key=occ.idempotency_key,
        )

    def _clean(self, text: str) -> str:
        """Redacted, without control characters a database refuses (NUL), bounded."""
        cleaned: str = redact(text, self.registry.forms(), cut_ends=True)  # before the cut
        return clean_text(cleaned)

    def _summary(self, job: Job, occ: Occurrence) -> None:
        """One event per run, whatever happened (structlog best practice)."""
        now_ms = to_ms(self.clock.now())
        if occ.started_ms is not None and occ.duration_ms is None:
            # Set before the hook: the run-duration histogram reads it (issue 11, item 7).
            occ.duration_ms = now_ms - occ.started_ms
        self.hooks.on_finished(job, occ)
        _level(job, occ)(
            "run.finished",
            job=job.name,
            kind=job.canonical_kind,
            scheduled_at=from_ms(occ.scheduled_ms).isoformat(),
            trigger=occ.trigger,
            outcome=occ.state,
            attempts=occ.attempts,
            duration_ms=occ.duration_ms,
            lateness_ms=None if occ.started_ms is None else occ.started_ms - occ.scheduled_ms,
            error=occ.last_error,
            idempotency_key=occ.idempotency_key,
        )


def _level(job: Job, occ: Occurrence) -> Callable[..., Any]:
    """run.finished: error once every attempt failed, warning for another failure."""
    if occ.state != "failed":
        return log.info  # type: ignore[no-any-return]
    exhausted = occ.attempts >= 1 + job.retries
    return log.error if exhausted else log.warning  # type: ignore[no-any-return]
