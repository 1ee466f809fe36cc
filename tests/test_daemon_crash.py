"""SIGKILL the daemon and restart it: counts survive exactly, one-shots stay done, catch-up holds."""

from __future__ import annotations

import time
from pathlib import Path

from tests.daemon_helpers import DaemonProcess, wait_for
from tests.emulator_fixture import RunningEmulator

BASE = "kind: quota\nproduct: p\nenv: dev\ntag: t\n"


def calls_for(emulator: RunningEmulator, job: str) -> list[str]:
    return [c["idempotency_key"] for c in emulator.calls() if f":{job}:" in c["idempotency_key"]]


def test_sigkill_and_restart_keep_counts_one_shots_and_catchup(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = DaemonProcess(tmp_path, emulator)
    d.write_job("limited.yaml", BASE + "schedule: {every: 1s, limit: 6}\ncatchup: {policy: all}\n")
    d.write_job("once.yaml", BASE + "schedule: {start_at: 0}\n")
    d.write_job("skipper.yaml", BASE + "schedule: {every: 1s}\ncatchup: {policy: skip}\n")
    d.start()
    wait_for(lambda: len(calls_for(emulator, "limited")) >= 2 and calls_for(emulator, "once"))
    d.kill()
    killed_at = time.time()
    count_at_kill = d.query("SELECT execution_count FROM jobs WHERE name = 'limited'")[0][0]
    open_at_kill = {
        key
        for (key,) in d.query(
            "SELECT idempotency_key FROM occurrences"
            " WHERE job = 'limited' AND state IN ('planned', 'running')"
        )
    }
    time.sleep(3.5)  # several occurrences of each job pass while the daemon is down
    d.start()
    try:
        wait_for(
            lambda: d.query("SELECT execution_count FROM jobs WHERE name = 'limited'")[0][0] == 6
        )
        wait_for(
            lambda: (
                d.query(
                    "SELECT count(*) FROM occurrences WHERE job = 'skipper' AND state = 'skipped'"
                )[0][0]
                >= 2
            )
        )
        time.sleep(1.5)  # give a wrong extra run the chance to happen
    finally:
        d.stop()
    limited = calls_for(emulator, "limited")
    assert len(set(limited)) == 6, limited  # exactly `limit` occurrences
    # A key is sent twice only when its attempt was in flight at the kill (its outcome was
    # never written): resent after restart under the same key, which Ductape deduplicates.
    resent = {key for key in limited if limited.count(key) > 1}
    assert resent <= open_at_kill, (resent, open_at_kill)
    assert len(limited) - len(set(limited)) <= len(open_at_kill)
    assert d.query("SELECT execution_count, status FROM jobs WHERE name = 'limited'") == [
        (6, "completed")
    ]
    assert count_at_kill < 6
    assert len(calls_for(emulator, "once")) == 1  # the succeeded one-shot did not rerun
    assert d.query("SELECT status FROM jobs WHERE name = 'once'") == [("completed",)]
    # skip policy: instants that passed while down are recorded as skipped, never called.
    skipped_ms = [
        r[0]
        for r in d.query(
            "SELECT scheduled_ms FROM occurrences WHERE job = 'skipper' AND state = 'skipped'"
        )
    ]
    assert skipped_ms and all(ms / 1000 > killed_at - 1.5 for ms in skipped_ms)
    called = set(calls_for(emulator, "skipper"))
    assert not any(f"ductape-runner:skipper:{ms}" in called for ms in skipped_ms)
    # One event at start-up; an instant just inside the start-up grace may be judged
    # late a few ms later by the loop and make a second: both must skip.
    catchups = [e for e in d.events("schedule.catchup") if e["job"] == "skipper"]
    assert catchups and all(e["policy"] == "skip" and e["run"] == 0 for e in catchups)
