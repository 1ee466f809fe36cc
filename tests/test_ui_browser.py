"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
daemon and the emulator: sign in by the login URL, read the jobs and an invalid file's
error, trigger, pause and resume, see runs and file changes arrive without a reload,
and be refused without the token. Writes the README's screenshots to docs/screenshots/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.daemon_helpers import DaemonProcess, control_get, ctl, wait_for
from tests.emulator_fixture import RunningEmulator
from tests.tool_helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
SECRET = "s3cret-value-never-shown"
LIVE_S = 2.0  # the bound: a change shows within 2 s
ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
JOBS = {
    "ping.yaml": "kind: action\napp: status\nevent: ping\nschedule: {cron: '0 0 1 1 *'}\n",
    "flaky.yaml": "kind: quota\ntag: q\nschedule: {cron: '30 2 * * *', tz: Asia/Kolkata}\n",
    "monthly-report.yaml": (
        "kind: workflow\nworkflow: report\nschedule: {cron: '0 3 1 * *', tz: Europe/Amsterdam}\n"
    ),
    "tick.yaml": "kind: action\napp: status\nevent: tick\nschedule: {every: 2s}\n",
    "with-secret.yaml": (
        "kind: action\napp: vault\nevent: use\ninput: {note: '${env:JOB_API_KEY}'}\n"
        "schedule: {cron: '0 0 1 1 *'}\n"
    ),
    "broken.yaml": "kind: quota\ntag: q\nschedule:\n  cron: '61 * * * *'\n",
}


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, emulator_server: RunningEmulator
) -> Iterator[DaemonProcess]:
    env = {
        "JOB_API_KEY": SECRET,
        "DUCTAPE_RUNNER_SECRET_ENV": '["JOB_*"]',
        "DUCTAPE_RUNNER_PRODUCT": "shop",
        "DUCTAPE_RUNNER_ENV": "prd",
        "DUCTAPE_RUNNER_JOBS_DIR": "jobs.d",  # relative to the daemon's cwd: short paths shown
    }
    d = DaemonProcess(
        tmp_path_factory.mktemp("ui"), emulator_server, "--control-tcp", "127.0.0.1:0", env=env
    )
    for name, text in JOBS.items():
        d.write_job(name, text)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def base(daemon: DaemonProcess) -> str:
    return f"http://{daemon.events('control.listening')[0]['tcp']}"


@pytest.fixture(scope="module")
def token(daemon: DaemonProcess) -> str:
    return (daemon.tmp_path / "control.token").read_text().strip()


@pytest.fixture(scope="module")
def browser(daemon: DaemonProcess) -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=require_tool("chromium"), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser: Browser, base: str, token: str) -> Iterator[Page]:
    """One signed-in tab: the login URL was opened once."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.goto(f"{base}/ui/?token={token}")
    yield tab
    context.close()


def finished_runs(daemon: DaemonProcess, job: str) -> list[dict[str, object]]:
    return [e for e in daemon.events("run.finished") if e["job"] == job]


def shot(tab: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{name}.png"))


def test_without_the_token_it_shows_a_login_page_and_no_job_data(
    browser: Browser, base: str
) -> None:
    context = browser.new_context()
    tab = context.new_page()
    for path in ("/ui/", "/ui/?token=wrong", "/ui/jobs/ping", "/ui/folder", "/ui/changes"):
        response = tab.goto(base + path)
        assert response.status == 401, path
        assert "Sign in" in tab.content()
        assert "ping" not in tab.inner_text("body")
    refused = httpx.post(f"{base}/ui/jobs/ping/trigger", data={"csrf": "x"}, timeout=5)
    assert refused.status_code == 401
    context.close()


def test_the_login_url_sets_a_strict_httponly_cookie_and_drops_the_token(
    page: Page, base: str, token: str
) -> None:
    assert page.url == f"{base}/ui/"
    cookies = page.context.cookies()
    assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]
    assert token not in cookies[0]["value"]
    assert token not in page.content()


def test_the_jobs_page_lists_the_jobs_and_the_invalid_files_error(page: Page) -> None:
    page.goto(page.url.split("/ui/")[0] + "/ui/")
    table = page.inner_text("table.jobs")
    for name in ("ping", "flaky", "monthly-report", "tick", "with-secret"):
        assert name in table
    assert "daily at 02:30" in table and "Asia/Kolkata" in table
    invalid = page.inner_text("#invalid-files")
    assert "jobs.d/broken.yaml:4:9: schedule.cron: bad minute field '61'" in invalid


def test_a_triggered_run_appears_live_in_another_tab(page: Page, daemon: DaemonProcess) -> None:
    base = page.url.split("/ui/")[0]
    watcher = page.context.new_page()
    watcher.goto(f"{base}/ui/jobs/ping")
    assert watcher.locator("#history-empty").count() == 1
    watcher.evaluate("window.notReloaded = true")
    page.goto(f"{base}/ui/jobs/ping")
    page.click("button[value=trigger]")
    expect(page.locator(".notice")).to_contain_text("Triggered")
    wait_for(lambda: finished_runs(daemon, "ping"))
    finished = time.monotonic()
    expect(watcher.locator("table.history")).to_contain_text("manual", timeout=5000)
    assert time.monotonic() - finished <= LIVE_S + 0.5
    assert watcher.evaluate("window.notReloaded") is True
    expect(watcher.locator("table.history")).to_contain_text("succeeded")
    shot(watcher, "job")
    watcher.close()


def test_a_failed_run_sorts_first(
    page: Page, daemon: DaemonProcess, emulator_server: RunningEmulator
) -> None:
    base = page.url.split("/ui/")[0]
    emulator_server.fault(target="quotas.run", status=400, count=1)
    page.goto(f"{base}/ui/jobs/flaky")
    page.click("button[value=trigger]")
    expect(page.locator("table.history")).to_contain_text("failed", timeout=5000)
    page.goto(f"{base}/ui/")
    first = page.locator("table.jobs tbody tr").first
    expect(first).to_contain_text("flaky")
    expect(first).to_contain_text("failed")
    shot(page, "jobs")


def test_pause_and_resume(page: Page, daemon: DaemonProcess) -> None:
    base = page.url.split("/ui/")[0]
    page.goto(f"{base}/ui/jobs/monthly-report")
    page.click("button[value=pause]")
    expect(page.locator("dl.facts")).to_contain_text("paused")
    assert control_get(daemon, "/jobs/monthly-report").json()["paused"] is True
    page.click("button[value=resume]")
    expect(page.locator("dl.facts")).to_contain_text("scheduled")
    assert control_get(daemon, "/jobs/monthly-report").json()["paused"] is False
    page.evaluate("window.notReloaded = true")
    assert ctl(daemon, "pause", "monthly-report").returncode == 0  # from the command line
    expect(page.locator("dl.facts")).to_contain_text("paused", timeout=LIVE_S * 1000)
    assert ctl(daemon, "resume", "monthly-report").returncode == 0
    expect(page.locator("dl.facts")).to_contain_text("scheduled", timeout=LIVE_S * 1000)
    assert page.evaluate("window.notReloaded") is True
    upcoming = page.inner_text("table.upcoming")
    assert "DST: UTC+01:00 → UTC+02:00" in upcoming  # March 2027, within 10 months


def test_a_post_without_the_pages_csrf_value_is_refused(
    base: str, token: str, daemon: DaemonProcess
) -> None:
    bearer = {"Authorization": f"Bearer {token}"}
    for data in ({}, {"csrf": "guess"}):
        response = httpx.post(f"{base}/ui/jobs/ping/pause", data=data, headers=bearer)
        assert response.status_code == 403
    assert control_get(daemon, "/jobs/ping").json()["paused"] is False


def test_a_new_job_file_appears_live(page: Page, daemon: DaemonProcess) -> None:
    base = page.url.split("/ui/")[0]
    page.goto(f"{base}/ui/folder")
    page.evaluate("window.notReloaded = true")
    daemon.write_job("late-arrival.yaml", "kind: quota\ntag: q\nschedule: {cron: '0 6 * * 1'}\n")
    expect(page.locator("main")).to_contain_text("late-arrival", timeout=LIVE_S * 1000 + 1000)
    assert page.evaluate("window.notReloaded") is True
    assert "broken.yaml:4:" in page.inner_text("#invalid-files")
    expect(page.locator("main table tbody tr").first).to_contain_text("broken.yaml")  # first
    shot(page, "folder")


def test_the_pictures_page_draws_the_last_24_hours(page: Page, daemon: DaemonProcess) -> None:
    base = page.url.split("/ui/")[0]
    wait_for(lambda: len(daemon.events("run.finished")) >= 4)
    page.goto(f"{base}/ui/pictures")
    assert page.locator("table.timeline svg").count() >= 5
    assert page.locator("rect.cell.succeeded").count() >= 1
    assert page.locator("rect.cell.failed").count() >= 1
    assert "Lateness" in page.inner_text("main")
    shot(page, "pictures")


def test_read_only_pages_work_with_javascript_off(browser: Browser, base: str, token: str) -> None:
    context = browser.new_context(java_script_enabled=False)
    tab = context.new_page()
    tab.goto(f"{base}/ui/?token={token}")
    assert "monthly-report" in tab.inner_text("table.jobs")
    tab.goto(f"{base}/ui/jobs/with-secret")
    assert "${env:JOB_API_KEY}" in tab.inner_text("pre.definition")
    context.close()


def test_no_page_carries_a_secret_value(page: Page, daemon: DaemonProcess) -> None:
    base = page.url.split("/ui/")[0]
    page.goto(f"{base}/ui/jobs/with-secret")
    page.click("button[value=trigger]")
    wait_for(lambda: finished_runs(daemon, "with-secret"))
    for path in ("/ui/", "/ui/jobs/with-secret", "/ui/folder", "/ui/pictures"):
        page.goto(base + path)
        assert SECRET not in page.content(), path


def test_over_the_unix_socket_no_token_is_needed(daemon: DaemonProcess) -> None:
    response = control_get(daemon, "/ui/")
    assert response.status_code == 200
    assert "monthly-report" in response.text


def test_the_ui_command_prints_a_login_url_that_signs_in(daemon: DaemonProcess, base: str) -> None:
    socket = str(daemon.tmp_path / "control.sock")
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "ui", "--socket", socket],
        capture_output=True,
        text=True,
        timeout=30,
        env=daemon.env,
    )
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    assert url.startswith(f"{base}/ui/?token=")
    with httpx.Client(timeout=5) as client:
        landed = client.get(url, follow_redirects=True)
    assert landed.status_code == 200 and str(landed.url) == f"{base}/ui/"
    assert "monthly-report" in landed.text
