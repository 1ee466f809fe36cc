"""The dashboard's pure parts: schedules in words, order and filter, DST marks, the token,
the cookie and the CSRF check, and the last redaction pass over a page."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from runner.daemon.decisions import recurrence_of
from runner.daemon.runs import Entry, JobRuns
from runner.daemon.ui.auth import COOKIE, UiAuth
from runner.daemon.ui.html import seal
from runner.daemon.ui.rows import cron_words, duration_words, page_of, select, upcoming
from runner.daemon.ui.svg import buckets, outcome_of
from runner.jobs.loader import LoadedJob
from runner.jobs.model import JOB_ADAPTER
from runner.store import JobRecord
from tests.daemon_helpers import DaemonProcess, control_get
from tests.emulator_fixture import RunningEmulator

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
TOKEN = "the-control-token"


def entry(name: str, schedule: dict[str, Any], **record: Any) -> Entry:
    job = JOB_ADAPTER.validate_python(
        {"name": name, "kind": "quota", "tag": "t", "schedule": schedule}
    )
    rec = JobRecord(name, "d", "s", 0, path=f"jobs.d/{name}.yaml", **record)
    return Entry(
        LoadedJob(job, f"jobs.d/{name}.yaml", 1, "d"), rec, recurrence_of(job, 0), JobRuns()
    )


# ---- schedules in words -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("* * * * *", "every minute"),
        ("*/5 * * * *", "every 5 min"),
        ("15 * * * *", "hourly at :15"),
        ("0 9 * * *", "daily at 09:00"),
        ("30 2 * * 1-5", "weekly on 1-5 at 02:30"),
        ("0 3 1 * *", "monthly on day 1 at 03:00"),
        ("0 0 1 1 *", "yearly on 1 Jan at 00:00"),
        ("0 0 L * *", "cron"),  # last day of the month: shown raw beside it
        ("0 0 * * 5#3", "cron"),
        ("@daily", "daily at 00:00"),
        ("0 0 0 1 * *", "cron (with seconds)"),
    ],
)
def test_common_cron_shapes_read_as_words(cron: str, words: str) -> None:
    assert cron_words(cron) == words


@pytest.mark.parametrize(
    ("ms", "words"), [(10_000, "10 s"), (300_000, "5 min"), (7_200_000, "2 h"), (1500, "1500 ms")]
)
def test_every_reads_in_the_largest_whole_unit(ms: int, words: str) -> None:
    assert duration_words(ms) == words


# ---- order, filter, pages ---------------------------------------------------------------


def test_failures_come_first_then_last_good_versions_then_by_name() -> None:
    entries = [
        entry("alpha", {"cron": "0 9 * * *"}),
        entry("kept", {"cron": "0 9 * * *"}),
        entry("zulu", {"cron": "0 9 * * *"}, last_outcome="failed"),
        entry("beta", {"cron": "0 9 * * *"}, last_outcome="succeeded"),
    ]
    ordered = select(entries, {"kept"}, query="", status="", sort="attention")
    assert [e.record.name for e in ordered] == ["zulu", "kept", "alpha", "beta"]
    failed = select(entries, {"kept"}, query="", status="failed", sort="name")
    assert [e.record.name for e in failed] == ["zulu"]
    assert [e.record.name for e in select(entries, set(), query="BET", status="", sort="")] == [
        "beta"
    ]


def test_a_page_number_out_of_range_is_clamped() -> None:
    items = list(range(250))
    assert page_of(items, 0)[1:] == (1, 3)
    shown, page, pages = page_of(items, 99)
    assert (shown[0], len(shown), page, pages) == (200, 50, 3, 3)
    assert page_of([], 1) == ([], 1, 1)


def test_the_next_fire_times_mark_the_dst_change_between_them() -> None:
    monthly = entry("report", {"cron": "0 3 1 * *", "tz": "Europe/Amsterdam"})
    times = upcoming(monthly, NOW)
    assert len(times) == 10
    marked = [(t.local.strftime("%Y-%m-%d %H:%M %Z"), t.transition) for t in times if t.transition]
    assert marked == [("2027-04-01 03:00 CEST", "DST: UTC+01:00 → UTC+02:00")]
    assert times[0].utc.isoformat() == "2026-12-01T02:00:00+00:00"


# ---- pictures -----------------------------------------------------------------------------


def test_a_cell_shows_a_failure_over_successes_and_buckets_are_log_spaced() -> None:
    assert outcome_of({"succeeded": 5, "failed": 1}) == "failed"
    assert outcome_of({}) == "none"
    counts = buckets([0, 10, 11, 1000, 999_999])
    assert (counts[0], counts[1], counts[5], counts[-1]) == (2, 1, 1, 1)


# ---- who may see it ------------------------------------------------------------------------


def request(
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    unix: bool = False,
    method: str = "GET",
) -> Request:
    scope = {
        "type": "http",
        "method": method,
        "path": "/ui/",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "server": ("/run/control.sock", None) if unix else ("127.0.0.1", 9464),
        "client": None if unix else ("127.0.0.1", 50000),
    }
    return Request(scope)


def test_the_bearer_token_or_the_session_cookie_signs_in_and_nothing_else() -> None:
    auth = UiAuth(TOKEN)
    assert auth.signed_in(request(headers={"Authorization": f"Bearer {TOKEN}"}))
    assert auth.signed_in(request(headers={"Cookie": f"{COOKIE}={auth.session()}"}))
    assert auth.signed_in(request(unix=True))
    assert TOKEN not in auth.session()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Cookie": f"{COOKIE}={TOKEN}"},
    ):
        assert not auth.signed_in(request(headers=headers)), headers
    assert not UiAuth(None).signed_in(request(headers={"Authorization": "Bearer "}))


def test_the_login_url_redirects_without_the_token_and_keeps_the_rest() -> None:
    auth = UiAuth(TOKEN)
    response = auth.login_redirect(request(query=f"token={TOKEN}&sort=next"))
    assert response is not None and response.status_code == 303
    assert response.headers["location"] == "/ui/?sort=next"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert auth.login_redirect(request(query="token=nope")) is None


def test_a_post_needs_the_pages_csrf_value_and_a_matching_origin() -> None:
    auth = UiAuth(TOKEN)
    same = {"Origin": "http://127.0.0.1:9464", "Host": "127.0.0.1:9464"}
    assert auth.post_allowed(request(headers=same, method="POST"), auth.csrf)
    assert not auth.post_allowed(request(headers=same, method="POST"), "guess")
    evil = {"Origin": "http://evil.example", "Host": "127.0.0.1:9464"}
    assert not auth.post_allowed(request(headers=evil, method="POST"), auth.csrf)
    null = {"Origin": "null", "Host": "127.0.0.1:9464"}
    assert not auth.post_allowed(request(headers=null, method="POST"), auth.csrf)


def test_the_last_pass_removes_secrets_as_written_and_as_html_escaped() -> None:
    page = "<code>a&lt;b&amp;c</code> and a<b&c and fine"
    assert seal(page, ("a<b&c",)) == "<code>***</code> and *** and fine"


def test_without_control_tcp_the_ui_command_says_so_and_the_socket_serves_the_pages(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    daemon = DaemonProcess(tmp_path, emulator)
    daemon.write_job("later.yaml", "kind: quota\ntag: q\nschedule: {cron: '0 0 1 1 *'}\n")
    daemon.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "ui", "--socket", str(tmp_path / "control.sock")],
            capture_output=True,
            text=True,
            timeout=30,
            env=daemon.env,
        )
        assert (proc.returncode, proc.stdout) == (1, "")
        assert "control_tcp" in proc.stderr
        assert "later" in control_get(daemon, "/ui/").text
    finally:
        assert daemon.stop() == 0
