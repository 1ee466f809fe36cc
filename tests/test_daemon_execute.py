"""A real daemon process runs jobs against the emulator: retries, idempotency, dry runs, secrets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.daemon_helpers import DaemonProcess, control_request, wait_for
from tests.emulator_fixture import RunningEmulator

FAST_RETRY = "retry: {initial: 50ms, max: 200ms, multiplier: 2, jitter: 0}\n"
ONCE = "kind: quota\nproduct: p\nenv: dev\ntag: t\n"


@pytest.fixture
def daemon(tmp_path: Path, emulator: RunningEmulator) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path, emulator)
    yield process
    process.stop()


def occurrences(d: DaemonProcess, job: str) -> list[tuple[str, int, str | None]]:
    return d.query(
        "SELECT state, attempts, last_error FROM occurrences WHERE job = ? ORDER BY scheduled_ms",
        job,
    )


def finished(d: DaemonProcess, job: str) -> list[tuple[str, int, str | None]]:
    rows = occurrences(d, job)
    return rows if rows and all(r[0] not in ("planned", "running") for r in rows) else []


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503}, {"status": 502}, {"status": 504}, {"status": 500}, {"status": 408},
        {"status": 429}, {"code": "RATE_LIMITED"}, {"code": "TIMEOUT"}, {"code": "SERVICE_UNAVAILABLE"},
        {"reset": True},
    ],
    ids=lambda f: next(f"{k}={v}" for k, v in f.items()),
)  # fmt: skip
def test_retryable_failures_are_retried_with_one_idempotency_key(
    daemon: DaemonProcess, emulator: RunningEmulator, fault: dict[str, object]
) -> None:
    emulator.fault(target="quotas.run", count=2, **fault)
    daemon.write_job("j.yaml", ONCE + "retries: 3\n" + FAST_RETRY)
    daemon.start()
    assert wait_for(lambda: finished(daemon, "j")) == [("succeeded", 3, None)]
    keys = {c["idempotency_key"] for c in emulator.calls()}
    assert len(emulator.calls()) == 3 and len(keys) == 1


def test_a_timeout_is_retried(daemon: DaemonProcess, emulator: RunningEmulator) -> None:
    emulator.fault(target="quotas.run", count=1, hang=True)
    daemon.write_job("j.yaml", ONCE + "retries: 1\ntimeout: 300ms\n" + FAST_RETRY)
    daemon.start()
    assert wait_for(lambda: finished(daemon, "j")) == [("succeeded", 2, None)]


@pytest.mark.parametrize(
    "fault",
    [{"status": 400}, {"status": 404}, {"code": "VALIDATION_ERROR"}, {"code": "UNAUTHORIZED"}],
)
def test_permanent_failures_are_not_retried(
    daemon: DaemonProcess, emulator: RunningEmulator, fault: dict[str, object]
) -> None:
    emulator.fault(target="quotas.run", count=5, **fault)
    daemon.write_job("j.yaml", ONCE + "retries: 3\n" + FAST_RETRY)
    daemon.start()
    [(state, attempts, error)] = wait_for(lambda: finished(daemon, "j"))
    assert (state, attempts) == ("failed", 1)
    assert "error is not retryable" in str(error)
    assert len(emulator.calls()) == 1


def test_retry_after_is_honoured(daemon: DaemonProcess, emulator: RunningEmulator) -> None:
    emulator.fault(target="quotas.run", count=1, status=429, retry_after=1)
    daemon.write_job("j.yaml", ONCE + "retries: 2\n" + FAST_RETRY)
    daemon.start()
    wait_for(lambda: finished(daemon, "j"))
    first, second = (datetime.fromisoformat(c["received_at"]) for c in emulator.calls())
    assert (second - first).total_seconds() >= 0.95  # the backoff alone would be 50 ms


def test_retry_after_inf_is_capped_and_the_run_is_summarised(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    # Issue 18, bug 8: the OverflowError failed the run as `internal error`, lost Ductape's
    # error and logged no `run.finished`. Capped at an hour, the retry is simply pending.
    emulator.fault(target="quotas.run", count=1, status=429, retry_after="inf")
    daemon.write_job("j.yaml", ONCE + "retries: 2\n" + FAST_RETRY)
    daemon.start()
    wait_for(lambda: daemon.events("run.attempt_failed"))
    [event] = daemon.events("run.attempt_failed")
    assert "capped at 3600s" in event["decision"]
    # The pending retry is written in the loop's next commit, a moment after the event.
    wait_for(lambda: occurrences(daemon, "j")[0][:2] == ("planned", 1))
    [(_, _, error)] = occurrences(daemon, "j")
    assert error is not None and "internal error" not in error
    assert not daemon.events("run.crashed")


def test_pausing_a_job_holds_its_pending_retries_until_resume(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    # Issue 18, bug 9: five more calls reached Ductape after `pause`.
    emulator.fault(target="quotas.run", count=3, status=503)
    daemon.write_job(
        "j.yaml", ONCE + "retries: 5\nretry: {initial: 500ms, multiplier: 1, jitter: 0}\n"
    )
    daemon.start()
    wait_for(lambda: len(emulator.calls()) >= 1)
    control_request(daemon, "POST", "/jobs/j/pause").raise_for_status()
    calls_at_pause = len(emulator.calls())
    time.sleep(2.0)  # four retry delays pass while paused
    assert len(emulator.calls()) <= calls_at_pause + 1  # at most the attempt in flight
    assert occurrences(daemon, "j")[0][0] in ("planned", "running")
    assert daemon.events("run.held")
    control_request(daemon, "POST", "/jobs/j/resume").raise_for_status()
    assert wait_for(lambda: finished(daemon, "j"))[0][0] == "succeeded"


def test_retries_never_run_into_the_next_occurrence(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", count=100, status=503)
    daemon.write_job(
        "j.yaml", ONCE + "retries: 5\nschedule: {every: 1s}\nretry: {initial: 2s, jitter: 0}\n"
    )
    daemon.start()
    rows = wait_for(lambda: [r for r in occurrences(daemon, "j") if r[0] == "failed"])
    _, attempts, error = rows[0]
    assert attempts == 1
    assert "no time before next occurrence" in str(error)


def test_a_pending_retry_resumes_after_a_crash(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", count=1, status=503)
    daemon.write_job("j.yaml", ONCE + "retries: 2\nretry: {initial: 1500ms, jitter: 0}\n")
    daemon.start()
    # The row may not exist yet on the first looks: an empty list is "not yet".
    wait_for(lambda: [row[:2] for row in occurrences(daemon, "j")] == [("planned", 1)])
    daemon.kill()  # SIGKILL while the retry waits
    assert occurrences(daemon, "j")[0][:2] == ("planned", 1)
    daemon.start()
    assert wait_for(lambda: finished(daemon, "j")) == [("succeeded", 2, None)]
    assert len({c["idempotency_key"] for c in emulator.calls()}) == 1
    assert daemon.events("run.resumed")


def test_sigterm_leaves_a_pending_retry_for_the_next_start(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", count=1, status=503)
    daemon.write_job("j.yaml", ONCE + "retries: 2\nretry: {initial: 1500ms, jitter: 0}\n")
    daemon.start()
    wait_for(lambda: occurrences(daemon, "j") and occurrences(daemon, "j")[0][0] == "planned")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert occurrences(daemon, "j")[0][:2] == ("planned", 1)
    daemon.start()
    assert wait_for(lambda: finished(daemon, "j")) == [("succeeded", 2, None)]


def test_dry_run_logs_the_operation_and_calls_nothing(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = DaemonProcess(tmp_path, emulator, "--dry-run")
    d.write_job("j.yaml", ONCE + "input: {password: '${env:DRY_SECRET}'}\n")
    d.env["DRY_SECRET"] = "dry-secret-value-123"
    d.start()
    try:
        assert wait_for(lambda: finished(d, "j")) == [("dry_run", 0, None)]
    finally:
        d.stop()
    [event] = d.events("run.dry_run")
    assert (event["module"], event["method"]) == ("quotas", "run")
    assert emulator.calls() == []
    assert "dry-secret-value-123" not in d.output()


def ctl_output(d: DaemonProcess, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args, "--json", "--socket", str(d.tmp_path / "control.sock")],
        capture_output=True, text=True, timeout=30, env=d.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_kind_runs_against_the_emulator(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    root = Path(__file__).parent.parent / "jobs.d"
    for example in root.iterdir():
        text = example.read_text().replace("suspend: true", "suspend: false")
        daemon.write_job(example.name, text)
    # Every example is due soon: trigger them by giving each a one-shot copy.
    for kind, extra in {
        "action": "app: a\nevent: e\n", "workflow": "workflow: w\n", "notification": "notification: n\nevent: e\n",
        "storage": "storage: s\noperation: upload\n", "event": "broker: b\nevent: t\n",
        "database": "database: d\noperation: insert\ninput: {table: t, data: {a: 1}}\n",
        "graph": "graph: g\noperation: query\n", "quota": "tag: q\n", "fallback": "tag: f\n",
    }.items():  # fmt: skip
        daemon.write_job(f"now-{kind}.yaml", f"kind: {kind}\nproduct: p\nenv: dev\n{extra}")
    daemon.start()
    methods = wait_for(lambda: {f"{c['module']}.{c['method']}" for c in emulator.calls()} >= {
        "actions.run", "feature.execute", "notifications.send", "storage.upload", "messageBrokers.produce",
        "databases.insert", "graph.query", "quotas.run", "fallback.run",
    })  # fmt: skip
    assert methods
    assert all(c["outcome"] == "ok" for c in emulator.calls())


def test_secrets_never_reach_logs_or_the_state_file(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("file-secret-value-456\n")
    creds_dir = tmp_path / "creds"
    creds_dir.mkdir()
    (creds_dir / "session-token").write_text("credential-secret-789")
    d = DaemonProcess(
        tmp_path,
        emulator,
        env={
            "ENV_SECRET": "env-secret-value-123",
            "CREDENTIALS_DIRECTORY": str(creds_dir),
            "DUCTAPE_RUNNER_SECRET_ENV": '["ENV_SECRET"]',  # refused by default (issue 13)
            "DUCTAPE_RUNNER_SECRET_DIRS": json.dumps([str(tmp_path)]),
        },
    )
    d.write_job(
        "j.yaml",
        ONCE + "retries: 1\n" + FAST_RETRY
        + f"input: {{a: '${{env:ENV_SECRET}}', b: '${{file:{secret_file}}}'}}\n"
        + "session: {tag: user, token: '${credential:session-token}'}\n",
    )  # fmt: skip
    emulator.fault(
        target="quotas.run",
        count=2,
        status=400,
        message="bad env-secret-value-123 credential-secret-789",
    )
    d.start()
    try:
        wait_for(lambda: finished(d, "j"))
        status = [ctl_output(d, *args) for args in (["status"], ["status", "j"], ["history", "j"])]
        metrics = httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp_path / "control.sock")))
        with metrics:
            status.append(metrics.get("http://daemon/metrics").text)
    finally:
        d.stop()
    assert '"last_error"' in status[1] and "***" in status[1]  # the error shows, redacted
    [call] = emulator.calls()
    assert call["params"][0]["input"] == {"a": "env-secret-value-123", "b": "file-secret-value-456"}
    assert call["params"][0]["session"] == {"tag": "user", "token": "credential-secret-789"}
    secrets = [
        "env-secret-value-123",
        "file-secret-value-456",
        "credential-secret-789",
        emulator.config.access_token,
    ]
    haystacks = {
        "logs": d.output(),
        "state": b"".join(p.read_bytes() for p in tmp_path.glob("state.sqlite3*")).decode(
            "latin-1"
        ),
    }
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} found in {where}"
    assert "***" in haystacks["state"] or "***" in haystacks["logs"]
