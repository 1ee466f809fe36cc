"""What operators hit first (issue 11): each test runs a real daemon process."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import DaemonProcess, control_get, ctl, wait_for
from tests.emulator_fixture import RunningEmulator

JOB = "kind: quota\nproduct: p\nenv: dev\ntag: t\n"
HOURLY = JOB + "schedule: {cron: '0 * * * *'}\n"
NOW = JOB + "schedule: {start_at: 0}\n"


@pytest.fixture
def daemon(tmp_path: Path, emulator: RunningEmulator) -> Iterator[DaemonProcess]:
    process = DaemonProcess(
        tmp_path,
        emulator,
        env={"DUCTAPE_RUNNER_QUIET_PERIOD_S": "0.1", "DUCTAPE_RUNNER_EMPTY_FOLDER_CONFIRM_S": "2"},
    )
    yield process
    process.stop()


def ctl_on_terminal(d: DaemonProcess, *args: str) -> str:
    """What an operator sees: stdout is a terminal, so `status` prints its table."""
    primary, secondary = pty.openpty()
    with os.fdopen(primary, "rb", buffering=0) as screen:
        subprocess.run(
            [sys.executable, "-m", "runner", *args, "--socket", str(d.tmp_path / "control.sock")],
            stdout=secondary,
            timeout=30,
            env=d.env,
        )
        os.close(secondary)
        chunks = []
        with contextlib.suppress(OSError):  # EIO once everything written was read
            while chunk := screen.read(4096):
                chunks.append(chunk)
    return b"".join(chunks).decode()


def job_names(d: DaemonProcess) -> set[str]:
    return {j["job_id"] for j in json.loads(ctl(d, "status", "--json").stdout)["jobs"]}


def metric(d: DaemonProcess, name: str) -> float | None:
    """The value of one sample (`name` with its labels, as rendered) on /metrics."""
    for line in control_get(d, "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# ---- item 7: the run-duration histogram ---------------------------------------------------


def test_a_finished_run_is_observed_in_the_run_duration_histogram(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    daemon.write_job("a.yaml", NOW)
    daemon.start()
    wait_for(lambda: daemon.query("SELECT state FROM occurrences") == [("succeeded",)])
    count = 'ductape_runner_run_duration_seconds_count{kind="quota"}'
    assert wait_for(lambda: metric(daemon, count)) == 1.0


# ---- item 3: a file deleted while the daemon was down ---------------------------------------


def test_a_job_deleted_while_down_is_marked_removed_at_start(daemon: DaemonProcess) -> None:
    daemon.write_job("a.yaml", HOURLY)
    daemon.write_job("b.yaml", HOURLY)
    daemon.start()
    assert daemon.stop() == 0
    (daemon.jobs / "b.yaml").unlink()
    daemon.start()
    removed = daemon.query("SELECT name FROM jobs WHERE removed_ms IS NOT NULL")
    assert removed == [("b",)]
    assert [e["job"] for e in daemon.events("job.removed")] == ["b"]
    plan = subprocess.run(
        [sys.executable, "-m", "runner", "plan"], capture_output=True, text=True, env=daemon.env
    )
    assert "remove" not in plan.stdout.replace("0 to remove", "")
    assert "0 to add, 0 to update, 0 to remove, 1 unchanged" in plan.stdout


# ---- item 8: a double Ctrl-C -------------------------------------------------------------


def test_a_double_interrupt_says_what_it_left_open_and_exits_130(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", hang=True)  # ends when the daemon goes
    daemon.write_job("a.yaml", NOW)
    daemon.start()
    wait_for(lambda: daemon.query("SELECT state FROM occurrences") == [("running",)])
    daemon.signal(signal.SIGINT)
    [stopping] = wait_for(lambda: daemon.events("daemon.stopping"))
    assert "again" in stopping["force"] and stopping["open_runs"] == 1
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 130
    [forced] = daemon.events("daemon.forced")
    assert forced["level"] == "warning" and forced["open_runs"] == 1
    assert "1 runs left open" in forced["message"]
    assert daemon.query("SELECT state FROM occurrences") == [("running",)]  # resumes later


# ---- item 1: a file written in place with a pause ------------------------------------------


def test_a_half_written_file_never_runs_and_the_whole_one_does(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    daemon.start()
    whole = NOW + "input:\n  text: abcdefghijklmnopqrstuvwxyz\n"
    half = whole[: whole.index("klm")]  # parses: text is 'abcdefghij'
    with (daemon.jobs / "a.yaml").open("w") as out:
        out.write(half)
        out.flush()
        time.sleep(1.0)
        out.write(whole[len(half) :])
    [call] = wait_for(emulator.calls)
    assert "abcdefghijklmnopqrstuvwxyz" in json.dumps(call)
    time.sleep(0.5)
    assert len(emulator.calls()) == 1


def test_cp_and_atomic_renames_still_apply_within_a_second(daemon: DaemonProcess) -> None:
    daemon.start()
    source = daemon.tmp_path / "b.yaml"
    source.write_text(HOURLY)
    shutil.copy(source, daemon.jobs / "b.yaml")
    wait_for(lambda: job_names(daemon) == {"b"}, timeout=1.0)
    temp = daemon.jobs / ".c.yaml.tmp"
    temp.write_text(HOURLY)
    temp.rename(daemon.jobs / "c.yaml")
    wait_for(lambda: job_names(daemon) == {"b", "c"}, timeout=1.0)


# ---- item 5: a missing jobs folder at start ------------------------------------------------


def test_a_missing_folder_is_reported_and_not_ready_until_it_appears(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    later = tmp_path / "synced" / "jobs.d"
    d = DaemonProcess(tmp_path, emulator, env={"DUCTAPE_RUNNER_JOBS_DIR": str(later)})
    d.start()
    try:
        [missing] = d.events("folder.missing")
        assert missing["level"] == "warning" and str(later) in missing["message"]
        ready = control_get(d, "/readyz")
        assert ready.status_code == 503 and str(later) in ready.json()["detail"]
        later.mkdir(parents=True)
        (later / "a.yaml").write_text(HOURLY)
        wait_for(lambda: control_get(d, "/readyz").status_code == 200)
        assert job_names(d) == {"a"}
    finally:
        d.stop()


# ---- item 4: the folder guard and last good versions, visible to monitoring ---------------


def summary(d: DaemonProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ctl(d, "status", "--json").stdout)["summary"]
    return data


def test_last_good_versions_and_the_folder_guard_show_in_status_readyz_and_metrics(
    daemon: DaemonProcess,
) -> None:
    daemon.write_job("a.yaml", HOURLY)
    daemon.write_job("b.yaml", HOURLY)
    daemon.start()
    assert metric(daemon, "ductape_runner_last_good_jobs") == 0.0
    assert metric(daemon, "ductape_runner_folder_guard") == 0.0
    daemon.write_job("a.yaml", HOURLY.replace("0 * * * *", "61 * * * *"))
    kept = wait_for(lambda: summary(daemon)["last_good"])
    assert kept == [{"job_id": "a", "path": str(daemon.jobs / "a.yaml")}]
    assert "1 jobs run their last good version (a)" in control_get(daemon, "/readyz").text
    assert metric(daemon, "ductape_runner_last_good_jobs") == 1.0
    assert "last good version: a" in ctl_on_terminal(daemon, "status")
    for path in daemon.jobs.iterdir():
        path.unlink()
    guard = wait_for(lambda: summary(daemon)["folder_guard"], timeout=1.5)
    assert "empty" in guard
    ready = control_get(daemon, "/readyz")
    assert ready.status_code == 200 and "folder guard: " in ready.json()["detail"]
    assert metric(daemon, "ductape_runner_folder_guard") == 1.0


# ---- item 6: missing or wrong credentials --------------------------------------------------


def test_run_refuses_to_start_without_credentials_naming_them(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = DaemonProcess(tmp_path, emulator)
    env = {**d.env, "DUCTAPE_RUNNER_WORKSPACE_ID": "", "DUCTAPE_RUNNER_ACCESS_TOKEN": ""}
    env["DUCTAPE_RUNNER_PUBLIC_KEY"] = "pk-that-must-not-be-printed"
    refused = subprocess.run(
        [sys.executable, "-m", "runner", "run"], capture_output=True, text=True, env=env, timeout=30
    )
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert "DUCTAPE_RUNNER_WORKSPACE_ID" in line and "DUCTAPE_RUNNER_ACCESS_TOKEN" in line
    assert "pk-that-must-not-be-printed" not in refused.stderr + refused.stdout
    dry = DaemonProcess(tmp_path, emulator, "--dry-run", env=env)
    dry.start()
    assert dry.stop() == 0


def test_repeated_refused_credentials_make_the_daemon_not_ready_until_a_call_succeeds(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", status=401, count=3)
    daemon.write_job("a.yaml", HOURLY + "retries: 2\n")
    daemon.start()
    for n in range(1, 4):
        assert control_get(daemon, "/readyz").status_code == 200
        ctl(daemon, "trigger", "a")
        wait_for(lambda n=n: len(daemon.events("run.finished")) == n)
    ready = control_get(daemon, "/readyz")
    assert ready.status_code == 503 and "refused the credentials 3 times" in ready.text
    assert "DUCTAPE_RUNNER_ACCESS_TOKEN" in ready.text
    finished = daemon.events("run.finished")
    assert {e["level"] for e in finished} == {"warning"}  # failed, not after all retries
    ctl(daemon, "trigger", "a")
    wait_for(lambda: control_get(daemon, "/readyz").status_code == 200)


def test_a_run_that_failed_every_attempt_is_logged_at_error(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", status=503, count=2)
    retry = "retry: {initial: 50ms, max: 50ms, multiplier: 1, jitter: 0}\n"
    daemon.write_job("a.yaml", NOW + "retries: 1\n" + retry)
    daemon.start()
    [finished] = wait_for(lambda: daemon.events("run.finished"))
    assert finished["outcome"] == "failed" and finished["level"] == "error"


def test_a_dns_failure_names_the_host(tmp_path: Path, emulator: RunningEmulator) -> None:
    d = DaemonProcess(
        tmp_path, emulator, env={"DUCTAPE_RUNNER_BASE_URL": "http://no-such-host.invalid"}
    )
    d.write_job("a.yaml", NOW)
    d.start()
    try:
        [failed] = wait_for(lambda: d.events("run.attempt_failed"))
        assert "cannot resolve host no-such-host.invalid" in failed["error"]
    finally:
        d.stop()


# ---- item 2: the last good version survives a restart ---------------------------------------


def test_the_last_good_version_survives_a_restart_without_storing_secrets(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    daemon.env["ITEM2_SECRET"] = "s3cret-value-never-stored"
    daemon.env["DUCTAPE_RUNNER_SECRET_ENV"] = '["ITEM2_SECRET"]'  # ${env:} needs allowing
    good = HOURLY + "input: {token: '${env:ITEM2_SECRET}'}\n"
    daemon.write_job("a.yaml", good)
    daemon.start()
    assert daemon.stop() == 0
    daemon.write_job("a.yaml", good.replace("0 * * * *", "61 * * * *"))
    daemon.start()
    assert job_names(daemon) == {"a"}
    [invalid] = summary(daemon)["invalid_files"]
    assert "bad minute field '61'" in invalid["error"]
    assert summary(daemon)["last_good"] == [{"job_id": "a", "path": str(daemon.jobs / "a.yaml")}]
    ctl(daemon, "trigger", "a")
    [call] = wait_for(emulator.calls)
    assert "s3cret-value-never-stored" in json.dumps(call)  # resolved at run time only
    daemon.stop()
    state = b"".join(p.read_bytes() for p in daemon.tmp_path.glob("state.sqlite3*"))
    assert b"${env:ITEM2_SECRET}" in state and b"s3cret-value-never-stored" not in state
