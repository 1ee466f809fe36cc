"""Hostile-input suite: bad files, odd files, many files and a file that never stops changing;
then a hostile environment: a full disk, a deleted, truncated, foreign or read-only state
file, other local users at the control API, and wall-clock steps (issue 13).

CI size: 3,000 files and a 3 s rewrite storm. Full size (100,000 files, 10 s storm):

    RUNNER_SUITE_FULL=1 .venv/bin/pytest -s tests/test_suite_hostile.py

Throughout, a `heartbeat` job (every 1 s) proves the daemon still works, not just that
its process exists. `pytest -s` prints the memory figures.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.jobs.loader import load_file
from tests.daemon_helpers import wait_for
from tests.emulator_fixture import RunningEmulator
from tests.suite_helpers import (  # noqa: F401 (quiet_emulator_log: an autouse fixture)
    FULL,
    QUOTA,
    SuiteDaemon,
    drop_root_reads,
    quiet_emulator_log,
    size,
)
from tests.tool_helpers import require_faketime

CORPUS = Path(__file__).parent / "corpus" / "invalid"
HEARTBEAT = QUOTA + "schedule: {every: 1s}\n"
FAR = QUOTA + "schedule: {cron: '0 0 1 1 *'}\n"  # yearly: loaded and scheduled, never fired
MANY = size(3_000, 100_000)
STORM_S = size(3, 10)


def heartbeats(emulator: RunningEmulator) -> int:
    return sum(1 for c in emulator.calls() if ":heartbeat:" in (c["idempotency_key"] or ""))


def expectation(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect: ")


@pytest.mark.slow
def test_corpus_symlink_loops_fifo_and_unreadable_file_are_named_and_it_keeps_running(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    # Root reads a mode-000 file anyway: as root, the daemon runs without DAC override.
    prefix = drop_root_reads()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    d.prefix = prefix
    (d.jobs / "corpus").mkdir()
    for path in CORPUS.iterdir():
        shutil.copy(path, d.jobs / "corpus" / path.name)
    d.write_job("heartbeat.yaml", HEARTBEAT)
    (d.jobs / "loop").symlink_to(d.jobs)  # a directory loop
    (d.jobs / "cycle-a.yaml").symlink_to(d.jobs / "cycle-b.yaml")  # a file symlink loop
    (d.jobs / "cycle-b.yaml").symlink_to(d.jobs / "cycle-a.yaml")
    os.mkfifo(d.jobs / "pipe.yaml")
    d.write_job("unreadable.yaml", FAR).chmod(0o000)
    d.start(timeout=20)
    try:
        wait_for(lambda: heartbeats(emulator) >= 2)
        invalid = {e["path"]: e["error"] for e in d.control("/status")["invalid_files"]}
        for path in CORPUS.iterdir():
            shown = str(d.jobs / "corpus" / path.name)
            assert invalid.get(shown, "").startswith(f"{shown}:{expectation(path)}"), shown
        named = {Path(p).name: e for p, e in invalid.items()}
        assert "not a regular file" in named["pipe.yaml"]
        assert "Permission denied" in named["unreadable.yaml"]
        assert "symbolic links" in named["cycle-a.yaml"]
        assert len(invalid) == len(list(CORPUS.iterdir())) + 4  # nothing twice via the loop
        reloads = len(d.events("reload.finished"))
        d.signal(signal.SIGHUP)
        wait_for(lambda: len(d.events("reload.finished")) > reloads)
        seen = heartbeats(emulator)
        wait_for(lambda: heartbeats(emulator) >= seen + 2)
        print(f"\nhostile corpus: {len(invalid)} files named, peak RSS {d.peak_rss_mib():.0f} MiB")
        assert d.alive()
    finally:
        d.stop()


@pytest.mark.slow
def test_a_folder_of_many_files_loads_with_bounded_memory_and_names_the_bad_ones(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    bad = set(range(0, MANY, 1000))
    for i in range(MANY):
        text = QUOTA + "schedule: {cron: '61 * * * *'}\n" if i in bad else FAR
        d.write_job(f"f-{i:06d}.yaml", text)
    d.write_job("heartbeat.yaml", HEARTBEAT)
    started = time.monotonic()
    d.start(timeout=60 + MANY / 500)
    load_s = time.monotonic() - started
    try:
        wait_for(lambda: heartbeats(emulator) >= 2, timeout=30)
        summary = d.control("/status")
        named = {Path(f["path"]).name for f in summary["invalid_files"]}
        assert named == {f"f-{i:06d}.yaml" for i in bad}
        peak = d.peak_rss_mib()
        print(
            f"\nhostile many files ({'full' if FULL else 'CI'}): {MANY} files in {load_s:.1f} s, "
            f"peak RSS {peak:.0f} MiB ({(peak - 60) * 1024 / MANY:.1f} KiB per file above 60 MiB)"
        )
        # Bounded: a few KiB per job, not the files' text (measured in bench/RESULTS.md).
        assert peak < 150 + MANY * 12 / 1024
        assert d.alive()
    finally:
        d.stop(timeout=60)


@pytest.mark.slow
def test_a_file_rewritten_every_10_ms_neither_stalls_nor_grows_the_daemon(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator, env={"DUCTAPE_RUNNER_QUIET_PERIOD_S": "0.1"})
    d.write_job("heartbeat.yaml", HEARTBEAT)
    storm = d.write_job("storm.yaml", storm_text(0))
    d.start()
    wait_for(lambda: heartbeats(emulator) >= 2)
    before_rss, before_beats = d.rss_mib(), heartbeats(emulator)
    version, deadline = 0, time.monotonic() + STORM_S
    while time.monotonic() < deadline:
        version += 1
        storm.write_text(storm_text(version) if version % 7 else "kind: quota\nschedule: [\n")
        time.sleep(0.01)
    try:
        beats = heartbeats(emulator) - before_beats
        assert beats >= STORM_S - 2, f"heartbeat stalled: {beats} calls in {STORM_S} s"
        storm.write_text("kind: quota\nschedule: {every: 0}\n")  # turns invalid: named, kept
        wait_for(lambda: "storm.yaml" in str(d.control("/status")["invalid_files"]))
        final = storm_text(version + 1)
        storm.write_text(final)
        digest = load_file(storm, data=final.encode()).jobs[0].digest
        wait_for(
            lambda: d.query("SELECT definition_hash FROM jobs WHERE name = 'storm'") == [(digest,)]
        )
        time.sleep(1.0)
        growth = d.rss_mib() - before_rss
        print(f"\nhostile storm: {version} rewrites in {STORM_S} s, RSS growth {growth:.1f} MiB")
        assert growth < 40
        assert d.alive()
    finally:
        d.stop()


def storm_text(version: int) -> str:
    return QUOTA + f"schedule: {{cron: '0 0 1 1 *'}}\ninput: {{version: {version}}}\n"


# ---- a hostile environment (issue 13) ------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    """A tiny file system of its own (root only): fills up for real."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write until the file system is full; returns the filler to delete later."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return filler


def probe(d: SuiteDaemon, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(d.tmp_path / "control.sock"))
    with httpx.Client(transport=transport, base_url="http://daemon", timeout=10) as client:
        return client.get(path)


def test_a_full_disk_starts_nothing_unwritten_goes_unhealthy_once_and_recovers(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    with tmpfs(tmp_path / "small") as small:
        state = small / "state.sqlite3"
        d = SuiteDaemon(tmp_path, emulator, env={"DUCTAPE_RUNNER_STATE": str(state)})
        d.state = state
        d.write_job("heartbeat.yaml", HEARTBEAT)
        d.start()
        try:
            wait_for(lambda: heartbeats(emulator) >= 2)
            filler = fill(small)
            unhealthy = wait_for(lambda: (r := probe(d, "/healthz")).status_code == 503 and r)
            assert str(state) in unhealthy.json()["detail"]
            assert "full" in unhealthy.json()["detail"]
            time.sleep(0.5)  # a call in flight when the disk filled may still land
            during = heartbeats(emulator)
            time.sleep(3)
            assert heartbeats(emulator) == during, "called Ductape with the disk full"
            failed = d.events("state.write_failed")
            assert len(failed) == 1 and failed[0]["level"] == "error"
            filler.unlink()
            wait_for(lambda: probe(d, "/healthz").status_code == 200)
            wait_for(lambda: heartbeats(emulator) >= during + 2)
            assert d.events("state.write_recovered")
            # Every call made has its occurrence in the state file: written before the call.
            wait_for(lambda: d.open_occurrences() == 0)
            keys = {k for (k,) in d.query("SELECT idempotency_key FROM occurrences")}
            called = {c["idempotency_key"] for c in emulator.calls()}
            assert called <= keys, f"calls without an occurrence on disk: {called - keys}"
            assert d.alive()
        finally:
            d.stop()


def test_a_state_file_deleted_while_running_makes_it_unhealthy_and_starts_nothing(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    d.write_job("heartbeat.yaml", HEARTBEAT)
    d.start()
    try:
        wait_for(lambda: heartbeats(emulator) >= 2)
        for path in tmp_path.glob("state.sqlite3*"):  # rm state.sqlite3*
            path.unlink()
        unhealthy = wait_for(lambda: (r := probe(d, "/healthz")).status_code == 503 and r)
        assert f"{d.state} was deleted" in unhealthy.json()["detail"]
        time.sleep(0.5)
        during = heartbeats(emulator)
        time.sleep(2.5)
        assert heartbeats(emulator) == during, "kept calling with its state file gone"
        lost = d.events("state.file_lost")
        assert len(lost) == 1 and lost[0]["level"] == "error"
    finally:
        d.stop()


def run_once(d: SuiteDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`ductape-runner run` expected to refuse to start: its exit status and stderr."""
    return subprocess.run(
        [*d.prefix, sys.executable, "-m", "runner", "run", *args],
        env=d.env,
        cwd=d.tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_a_state_file_truncated_to_zero_is_refused_unless_reset_state(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    d.write_job("far.yaml", FAR)
    d.start()
    d.stop()
    d.state.write_bytes(b"")  # truncated while the daemon was down
    refused = run_once(d)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert str(d.state) in refused.stderr and "--reset-state" in refused.stderr
    assert d.state.stat().st_size == 0  # left as it was
    d.args = ("--reset-state",)
    d.start()
    try:
        assert d.query("SELECT name FROM jobs") == [("far",)]
        assert list(tmp_path.glob("state.sqlite3.reset-*"))  # the empty file, moved aside
    finally:
        d.stop()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("damage", ["foreign", "truncated", "corrupt"])
def test_a_foreign_truncated_or_corrupt_state_file_is_one_line_naming_it(
    tmp_path: Path, emulator: RunningEmulator, damage: str
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    for i in range(200):  # enough rows for several pages
        d.write_job(f"far-{i:03d}.yaml", FAR)
    d.start()
    d.stop()
    data = d.state.read_bytes()
    if damage == "foreign":
        d.state.write_text("name,schedule\nreport,daily\n" * 200)
    elif damage == "truncated":
        d.state.write_bytes(data[: len(data) // 2])
    else:  # a page in the middle overwritten
        d.state.write_bytes(data[:4096] + b"\xa5" * 4096 + data[8192:])
    assert_one_line_error(run_once(d), str(d.state), "--reset-state")


def test_a_read_only_state_folder_is_one_line_naming_it(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    with tmpfs(tmp_path / "small") as small:
        d = SuiteDaemon(tmp_path, emulator, env={"DUCTAPE_RUNNER_STATE": str(small / "s.db")})
        d.write_job("far.yaml", FAR)
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        assert_one_line_error(run_once(d), str(small / "s.db"), "write access", "--state")
        subprocess.run(["mount", "-o", "remount,rw", str(small)], check=True)
        d.start()  # a file made while writable, in a folder turned read-only since
        d.stop()
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        assert_one_line_error(run_once(d), str(small / "s.db"), "write access", "--state")


def test_the_state_file_and_its_wal_and_shm_are_0600_under_umask_022(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    d.prefix = ("sh", "-c", 'umask 022 && exec "$@"', "sh")
    d.write_job("heartbeat.yaml", HEARTBEAT)
    d.start()
    try:
        wait_for(lambda: heartbeats(emulator) >= 1)
        for suffix in ("", "-wal", "-shm"):
            mode = Path(f"{d.state}{suffix}").stat().st_mode & 0o777
            assert mode == 0o600, f"state.sqlite3{suffix} is {mode:o}"
    finally:
        d.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ctl(
    d: SuiteDaemon, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env={**d.env, **(env or {})},
        cwd=d.tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_another_local_user_cannot_pause_or_trigger_over_tcp_without_the_token(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    d = SuiteDaemon(tmp_path, emulator, env={"DUCTAPE_RUNNER_CONTROL_TCP": f"127.0.0.1:{port}"})
    d.write_job("far.yaml", FAR)
    d.start()
    try:
        with httpx.Client(base_url=url, trust_env=False) as anyone:
            assert anyone.get("/healthz").status_code == 200
            assert anyone.get("/metrics").status_code == 200
            assert anyone.post("/jobs/far/pause").status_code == 401
            assert anyone.post("/jobs/far/trigger").status_code == 401
            wrong = {"Authorization": "Bearer " + "x" * 43}
            assert anyone.post("/jobs/far/trigger", headers=wrong).status_code == 401
        token_file = tmp_path / "control.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token not in d.output()
        # The CLI finds the generated token beside the socket, or takes it from the setting.
        paused = ctl(d, "pause", "far", "--url", url, "--json")
        assert paused.returncode == 0, paused.stderr
        token_file.unlink()
        refused = ctl(d, "resume", "far", "--url", url)
        assert refused.returncode == 1 and "Bearer" in refused.stderr
        resumed = ctl(d, "resume", "far", "--url", url, env={"DUCTAPE_RUNNER_CONTROL_TOKEN": token})
        assert resumed.returncode == 0, resumed.stderr
        assert emulator.calls() == []
    finally:
        d.stop()


def test_the_default_socket_is_in_a_private_folder_and_a_squatted_one_is_refused(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    d = SuiteDaemon(tmp_path, emulator, env={"XDG_RUNTIME_DIR": str(xdg)})
    del d.env["DUCTAPE_RUNNER_CONTROL_SOCKET"]
    d.write_job("far.yaml", FAR)
    folder = xdg / "ductape-runner"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)  # another user made it first
    refused = run_once(d)
    assert refused.returncode == 2 and f"{folder}: belongs to uid 65534" in refused.stderr
    folder.rmdir()
    d.start()
    try:
        assert folder.stat().st_mode & 0o777 == 0o700
        assert (folder / "control.sock").is_socket()
        status = ctl(d, "status", "--json")
        assert status.returncode == 0, status.stderr
    finally:
        d.stop()


def test_the_cli_does_not_talk_to_a_socket_another_user_owns(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a socket to another user needs root")
    squatted = tmp_path / "shared" / "ductape-runner.sock"
    squatted.parent.mkdir(mode=0o1777)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as impostor:
        impostor.bind(str(squatted))
        impostor.listen()
        os.chown(squatted, 65534, 65534)
        d = SuiteDaemon(tmp_path, emulator)
        result = ctl(d, "pause", "far", "--socket", str(squatted))
        assert result.returncode == 2
        assert "belongs to uid 65534" in result.stderr
        impostor.setblocking(False)
        with pytest.raises(BlockingIOError):
            impostor.accept()  # the CLI never connected


def test_proxy_headers_are_ignored_even_with_forwarded_allow_ips_star(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    port = free_port()
    env = {"DUCTAPE_RUNNER_CONTROL_TCP": f"127.0.0.1:{port}", "FORWARDED_ALLOW_IPS": "*"}
    d = SuiteDaemon(tmp_path, emulator, env=env)
    d.write_job("far.yaml", FAR)
    d.start()
    try:
        token = (tmp_path / "control.token").read_text().strip()
        bearer = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            # Had the header been believed, this loopback client would be "remote": 403.
            claimed = {**bearer, "X-Forwarded-For": "192.0.2.7", "Forwarded": "for=192.0.2.7"}
            assert client.get("/jobs", headers=claimed).status_code == 200
    finally:
        d.stop()


def test_a_history_limit_that_is_not_plain_digits_is_a_400(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    d.write_job("far.yaml", FAR)
    d.start()
    try:
        # '²' and '١٢' pass str.isdigit() but not int(): they answered 500.
        for limit in ["²", "١٢", "1" * 5000, "+5", " 5", "", "0", "1001"]:
            answer = probe(d, f"/jobs/far/history?limit={urllib.parse.quote(limit)}")
            assert answer.status_code == 400, (limit[:10], answer.text)
            assert answer.json()["error"] == "bad_request"
        assert probe(d, "/jobs/far/history?limit=5").status_code == 200
    finally:
        d.stop()


def test_a_misspelt_or_mistyped_setting_is_named_and_its_value_never_printed(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    config = tmp_path / "config.toml"
    config.write_text(
        'acces_token = "tok-VALUE-never-printed-1"\n'
        'max_concurrent_runs = "tok-VALUE-never-printed-2"\n'
        'log_level = "tok-VALUE-never-printed-3"\n'
    )
    result = run_once(d, "--config", str(config))
    assert_one_line_error(result, "acces_token", "max_concurrent_runs", "log_level", str(config))
    assert "VALUE-never-printed" not in result.stderr + result.stdout


# ---- secrets echoed back by Ductape (issue 13 item 10) ---------------------------------------

# Quotes, a backslash, a slash, a plus, a space and a non-ASCII letter: every encoding
# below then differs from the raw value. Never printed: assertions name the encoding.
ECHOED = "p\\ss'w\"rd/+ é=hunter2-SECRET-7q"


def echo_forms(secret: str) -> dict[str, str]:
    """The ways an upstream error may echo a request's secret back."""
    b64 = base64.b64encode(secret.encode()).decode()
    return {
        "raw": secret,
        "json": json.dumps(secret)[1:-1],
        "json-utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
        "repr": repr(secret)[1:-1],
        "dict-repr": repr({"password": secret}),
        "quote": urllib.parse.quote(secret),
        "quote-nosafe": urllib.parse.quote(secret, safe=""),
        "quote_plus": urllib.parse.quote_plus(secret),
        "base64": b64,
        "base64-urlsafe": base64.urlsafe_b64encode(secret.encode()).decode(),
        "base64-unpadded": b64.rstrip("="),
    }


def string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from string_leaves(item)


def post(d: SuiteDaemon, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(d.tmp_path / "control.sock"))
    with httpx.Client(transport=transport, base_url="http://daemon", timeout=10) as client:
        return client.post(path)


def leaks(where: str, text: str, forms: dict[str, str]) -> list[str]:
    return [f"{where}: {name}" for name, form in forms.items() if form in text]


def test_a_secret_echoed_by_ductape_in_any_encoding_is_redacted_everywhere(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    env = {"JOB_TOKEN": ECHOED, "DUCTAPE_RUNNER_SECRET_ENV": '["JOB_*"]'}
    d = SuiteDaemon(tmp_path, emulator, env=env)
    d.write_job("leaky.yaml", FAR + 'input: {password: "${env:JOB_TOKEN}"}\n')
    forms = echo_forms(ECHOED)
    cut = ECHOED[:14]  # what Ductape's own truncation at the end of a message leaves
    echoed = " | ".join(forms.values())
    d.start()
    try:
        # A JSON failure echoing every encoding, ending with the value cut short.
        emulator.fault(status=400, message=f"bad request {echoed} | secret={cut}")
        assert post(d, "/jobs/leaky/trigger").status_code in (200, 202)
        wait_for(lambda: len(d.events("run.finished")) >= 1)
        # A gateway's plain-text page with the raw value across its 120th byte.
        emulator.fault(status=400, raw=True, message="x" * 110 + f"secret={ECHOED} tail")
        assert post(d, "/jobs/leaky/trigger").status_code in (200, 202)
        wait_for(lambda: len(d.events("run.finished")) >= 2)
        assert len(emulator.calls()) == 2
        forms["cut"] = cut
        found: list[str] = []
        for name, result in [
            ("status", ctl(d, "status", "--json")),
            ("status leaky", ctl(d, "status", "leaky", "--json")),
            ("history", ctl(d, "history", "leaky", "--json")),
        ]:
            assert result.returncode == 0, name
            leaves = "\n".join(string_leaves(json.loads(result.stdout)))
            found += leaks(name, result.stdout + leaves, forms)
        jobs = probe(d, "/jobs").json()
        found += leaks("/jobs", "\n".join(string_leaves(jobs)), forms)
        history = d.control("/jobs/leaky/history")
        assert sum("***" in (o["last_error"] or "") for o in history) == 2
        found += state_leaks(d, forms)  # the WAL while it holds the writes
    finally:
        d.stop()
    found += state_leaks(d, forms)
    found += leaks("log", d.output() + "\n".join(string_leaves(d.events())), forms)
    assert not found, f"the secret leaked as: {sorted(set(found))}"


def state_leaks(d: SuiteDaemon, forms: dict[str, str]) -> list[str]:
    found: list[str] = []
    for suffix in ("", "-wal"):
        path = Path(f"{d.state}{suffix}")
        if path.exists():
            found += leaks(path.name, path.read_bytes().decode(errors="replace"), forms)
    return found


# ---- what a job file may read (issue 13 item 11) ----------------------------------------------

REFUSED = {  # job -> (reference, the setting the error names)
    "other-env": ("${env:OTHER_SECRET}", "secret_env"),
    "own-env": ("${env:DUCTAPE_RUNNER_ACCESS_TOKEN}", "DUCTAPE_RUNNER_"),
    "environ": ("${file:/proc/self/environ}", "secret_dirs"),
    "shadow": ("${file:/etc/shadow}", "secret_dirs"),
    "dotdot": ("${file:SECRETS/../outside.txt}", "secret_dirs"),
    "symlink": ("${file:SECRETS/link}", "secret_dirs"),
}


def test_env_and_file_references_are_refused_outside_the_allowed_names_and_folders(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "pw").write_text("allowed-file-value\n")
    (tmp_path / "outside.txt").write_text("outside-value\n")
    (secrets / "link").symlink_to(tmp_path / "outside.txt")
    env = {
        "JOB_TOKEN": "allowed-env-value",
        "OTHER_SECRET": "other-env-value",
        "DUCTAPE_RUNNER_SECRET_ENV": '["JOB_*", "DUCTAPE_RUNNER_*"]',  # own ones stay refused
        "DUCTAPE_RUNNER_SECRET_DIRS": json.dumps([str(secrets)]),
    }
    d = SuiteDaemon(tmp_path, emulator, env=env)
    for job, (ref, _) in REFUSED.items():
        d.write_job(
            f"{job}.yaml", FAR + f"input: {{a: '{ref.replace('SECRETS', str(secrets))}'}}\n"
        )
    allowed = "input: {a: '${env:JOB_TOKEN}', b: '${file:SECRETS/pw}'}\n"
    d.write_job("allowed.yaml", FAR + allowed.replace("SECRETS", str(secrets)))
    checked = ctl(d, "check", str(d.jobs))
    assert checked.returncode == 1
    for job, (_, setting) in REFUSED.items():
        line = next(x for x in checked.stdout.splitlines() if x.startswith(str(d.jobs / job)))
        assert f"{job}.yaml:6:12:" in line and "input.a" in line and setting in line, line
    assert "allowed.yaml" not in checked.stdout
    d.start()
    try:
        for job in [*REFUSED, "allowed"]:
            assert post(d, f"/jobs/{job}/trigger").status_code in (200, 202)
        wait_for(lambda: len(d.events("run.finished")) >= len(REFUSED) + 1)
        finished = {e["job"]: e for e in d.events("run.finished")}
        for job, (_, setting) in REFUSED.items():
            assert finished[job]["outcome"] == "failed"
            error = finished[job]["error"]
            assert f"job {job}: input.a:" in error and setting in error, error
        assert finished["allowed"]["outcome"] == "succeeded"
        calls = emulator.calls()
        assert len(calls) == 1 and ":allowed:" in calls[0]["idempotency_key"]
    finally:
        d.stop()
    sent = json.dumps(calls[0]["params"])
    assert "allowed-env-value" in sent and "allowed-file-value" in sent
    token = emulator.credentials.access_token.get_secret_value()
    for value in ("other-env-value", "outside-value", token, "root:"):
        assert value not in d.output()


# ---- terminal and CI log injection (issue 13 item 13) -----------------------------------------

# ESC (a colour, a title change via OSC), C1 CSI, DEL, bidi overrides and isolates.
HOSTILE_CHARS = ["\x1b", "\x07", "\x9b", "\x7f", "\u202e", "\u2066", "\u200f", "\u061c"]


def raw_controls(text: str) -> list[str]:
    """The hostile characters (and any C0 but newline) left in `text`, as escapes."""
    found = {c for c in text if c in HOSTILE_CHARS or (ord(c) < 32 and c != "\n")}
    return sorted(ascii(c) for c in found)


def test_control_and_bidi_characters_never_reach_a_terminal_or_a_ci_log(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator)
    evil = "\x1b]0;owned\x07\x1b[31m\x9b2J\x7f\u202etxt.yaml\u2066\u200f\u061c"
    d.write_job("sneaky.yaml", FAR + f"input: {{note: {json.dumps(evil)}}}\n")
    d.write_job(f"bad{evil}.yaml", "kind: quota\nschedule: {cron: '61 * * * *'}\n")
    # A newline in a file name: on a GitHub runner, a workflow command of its own.
    newline = d.write_job("x.yaml\n::warning file=a,line=1::injected\n.yaml", "kind: [\n")
    emulator.fault(status=400, message=f"bad input {evil} here")
    d.start()
    try:
        assert post(d, "/jobs/sneaky/trigger").status_code in (200, 202)
        wait_for(lambda: d.events("run.finished"))
        wait_for(lambda: len(d.control("/status")["invalid_files"]) == 2)
        human = {
            "status": on_terminal(d, "status"),
            "status sneaky": on_terminal(d, "status", "sneaky"),
            "history": on_terminal(d, "history", "sneaky"),
        }
        as_json = ctl(d, "status", "--json")
    finally:
        d.stop()
    checked = ctl(d, "check", str(d.jobs))
    human["check"] = checked.stdout + checked.stderr
    found = {name: raw_controls(text) for name, text in human.items()}
    assert not any(found.values()), found
    assert "bad\\x1b]0;owned" in human["status"] and "\\u202etxt" in human["check"]
    assert "\\x9b2J" in human["history"] and "sneaky" in human["status sneaky"]
    leaves = list(string_leaves(json.loads(as_json.stdout)))
    assert any(evil in leaf for leaf in leaves), [ascii(x) for x in leaves]  # JSON stays data
    github = ctl(d, "check", "--format", "github", str(d.jobs)).stdout
    assert not raw_controls(github)
    commands = [line for line in github.splitlines() if line.startswith("::")]
    assert all(line.startswith("::error file=") for line in commands), commands
    escaped = str(newline).replace("%", "%25").replace(":", "%3A").replace(",", "%2C")
    assert f"file={escaped.replace(chr(10), '%0A')}," in github


def on_terminal(d: SuiteDaemon, *args: str) -> str:
    """What the CLI prints to a terminal (a pseudo-terminal), carriage returns dropped."""
    main, child = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env=d.env,
        cwd=d.tmp_path,
        stdout=child,
        stderr=child,
    ) as proc:
        os.close(child)
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the child has closed its side
            while chunk := os.read(main, 65536):
                chunks.append(chunk)
        proc.wait(timeout=20)
    os.close(main)
    assert proc.returncode == 0, args
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


# ---------------------------------------------------------------- the wall clock (item 14)


def step_wall(offset_file: Path, seconds: int) -> None:
    """Move the daemon's wall clock (libfaketime re-reads the file on every call)."""
    offset_file.write_text(f"{seconds:+d}\n")


def test_wall_clock_steps_back_and_forward_keep_an_every_job_running_without_a_burst(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    library = require_faketime()
    offset = tmp_path / "faketime.rc"
    step_wall(offset, 0)
    d = SuiteDaemon(
        tmp_path,
        emulator,
        env={
            "LD_PRELOAD": library,
            "FAKETIME_TIMESTAMP_FILE": str(offset),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # only the wall clock steps
        },
    )
    d.write_job("heartbeat.yaml", HEARTBEAT)
    d.start()
    try:
        wait_for(lambda: heartbeats(emulator) >= 3)
        step_wall(offset, -3600)  # an hour back: every-jobs used to stop for the hour
        before = heartbeats(emulator)
        wait_for(lambda: heartbeats(emulator) >= before + 3, timeout=6.0)
        back = d.events("clock.jump")[0]
        assert back["direction"] == "backward" and back["elapsed_jobs"] == 1
        step_wall(offset, 0)  # and forward again: no burst of "missed" seconds
        wait_for(lambda: len(d.events("clock.jump")) == 2, timeout=5.0)
        before = heartbeats(emulator)
        time.sleep(3.0)
        assert 1 <= heartbeats(emulator) - before <= 5, "a burst or a stop after the step"
        keys = [c["idempotency_key"] for c in emulator.calls()]
        assert len(keys) == len(set(keys)), "an instant ran twice under one key"
        assert d.alive()
    finally:
        d.stop()


# ---------------------------------------------------------------- the door (item 8)


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte, as a slowloris client holds them."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.append(sock)
    return held


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_a_flood_of_idle_connections_neither_starves_runs_of_descriptors_nor_floods_the_log(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    port = free_port()
    d = SuiteDaemon(tmp_path, emulator, env={"DUCTAPE_RUNNER_CONTROL_TCP": f"127.0.0.1:{port}"})
    d.prefix = ("prlimit", "--nofile=256:256", "--")  # a small budget makes exhaustion quick
    d.write_job("heartbeat.yaml", HEARTBEAT)
    d.start()
    held: list[socket.socket] = []
    try:
        wait_for(lambda: heartbeats(emulator) >= 2)
        held = open_idle(port, 400)  # more than the daemon has descriptors
        before = heartbeats(emulator)
        wait_for(lambda: heartbeats(emulator) >= before + 3, timeout=6.0)
        assert probe(d, "/healthz").status_code == 200  # the unix socket has its own bound
        assert not d.events("run.failed"), "runs failed while the door was flooded"
        # Past the bound, connections are closed at once; the rest once their request
        # deadline (10 s) passes without a request.
        assert sum(closed_by_server(s) for s in held) >= 400 - 128
        wait_for(lambda: all(closed_by_server(s) for s in held), timeout=15.0, every=0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as anyone:
            assert anyone.get("/healthz").status_code == 200
        closed = d.events("control.connections_closed")
        assert 1 <= len(closed) <= 3, "the refusals were logged per connection"
        assert len(d.output()) < 200_000
    finally:
        for sock in held:
            sock.close()
        d.stop()


def test_a_request_sent_too_slowly_is_cut_off_and_the_daemon_answers_others(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    port = free_port()
    d = SuiteDaemon(tmp_path, emulator, env={"DUCTAPE_RUNNER_CONTROL_TCP": f"127.0.0.1:{port}"})
    d.write_job("far.yaml", FAR)
    d.start()
    try:
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as anyone:
            assert anyone.get("/healthz").status_code == 200
        wait_for(lambda: closed_by_server(slow), timeout=15.0, every=0.5)
        assert time.monotonic() - started >= 9.0, "cut off before its deadline"
        slow.close()
    finally:
        d.stop()
