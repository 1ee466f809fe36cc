"""The control API over a real unix socket and loopback TCP, and `ctl` against it."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.cli.ctl import run_ctl
from runner.daemon.control import (
    ControlServer,
    ControlSocketError,
    build_control_app,
    job_dict,
    occurrence_dict,
    parse_tcp,
    serve_control,
    summary_dict,
)
from runner.daemon.metrics import Metrics
from runner.jobs.model import JOB_ADAPTER, Job
from runner.jobs.secrets import SecretRegistry
from runner.store import JobRecord, Occurrence

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MS0 = int(T0.timestamp() * 1000)
SECRET = "tok-s3cr3t-value"
TOKEN = "control-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def make_job(name: str, **extra: Any) -> Job:
    spec = {"name": name, "kind": "quota", "tag": "q", "retries": 2, **extra}
    return JOB_ADAPTER.validate_python(spec)


class FakeView:
    """The daemon's side of the protocol, over plain records."""

    def __init__(self) -> None:
        self.live, self.loaded = True, True
        self.defs = {
            "report": make_job("report", schedule={"cron": "0 9 * * *", "limit": 10}),
            "frozen": make_job("frozen", suspend=True),
        }
        self.records = {
            "report": JobRecord("report", "d1", "s1", MS0, anchor_ms=MS0, path="jobs.d/r.yaml"),
            "frozen": JobRecord("frozen", "d2", "s2", MS0, anchor_ms=MS0, status="suspended"),
        }
        self.records["report"].last_error = f"401 from Ductape: bad token {SECRET}"
        self.records["report"].next_fire_ms = MS0 + 86_400_000
        self.occurrences = {
            "report": [Occurrence("report", MS0, "k1", state="succeeded", attempts=1)],
            "frozen": [],
        }

    def healthy(self) -> tuple[bool, str]:
        return self.live, "heartbeat 0.1s ago" if self.live else "heartbeat 95s ago"

    def ready(self) -> tuple[bool, str]:
        return self.loaded, "state loaded" if self.loaded else "loading state"

    def jobs(self) -> list[dict[str, Any]]:
        return [self._dict(name) for name in sorted(self.records)]

    def job(self, name: str) -> dict[str, Any] | None:
        return self._dict(name) if name in self.records else None

    def history(self, name: str, limit: int) -> list[dict[str, Any]] | None:
        if name not in self.occurrences:
            return None
        return [occurrence_dict(o) for o in self.occurrences[name][:limit]]

    def trigger(self, name: str) -> dict[str, Any]:
        if self.defs[name].suspend:
            raise ValueError(f"job {name!r} is suspended in its file; unsuspend it first")
        occ = Occurrence(name, MS0 + 1, "k2", state="running", trigger="manual")
        self.occurrences[name].insert(0, occ)
        return occurrence_dict(occ)

    def pause(self, name: str) -> dict[str, Any]:
        self.records[name].paused, self.records[name].status = True, "paused"
        return self._dict(name)

    def resume(self, name: str) -> dict[str, Any]:
        self.records[name].paused, self.records[name].status = False, "scheduled"
        return self._dict(name)

    def summary(self) -> dict[str, Any]:
        return summary_dict(self.jobs(), {"jobs.d/bad.yaml": "jobs.d/bad.yaml:3:7: cron: bad"})

    def _dict(self, name: str) -> dict[str, Any]:
        return job_dict(self.records[name], self.defs[name], None)


class Daemon:
    """A served control app: its view, socket, TCP address and clients."""

    def __init__(self, view: FakeView, server: ControlServer, metrics: Metrics) -> None:
        self.view, self.server, self.metrics = view, server, metrics
        assert server.unix_socket is not None and server.tcp_address is not None
        self.socket = server.unix_socket
        host, port = server.tcp_address
        self.url = f"http://{host}:{port}"
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.socket), base_url="http://control"
        )

    async def ctl(
        self, command: str, job: str | None = None, **kwargs: Any
    ) -> tuple[int, str, str]:
        """Run the blocking client in a thread: the server lives on this loop."""
        out = kwargs.pop("out", io.StringIO())
        err = io.StringIO()
        where = {"socket": self.socket, "url": None, "as_json": None} | kwargs
        code = await asyncio.to_thread(run_ctl, command, job, out=out, err=err, **where)
        return code, out.getvalue(), err.getvalue()


def new_metrics(view: FakeView) -> Metrics:
    def snapshot() -> list[tuple[str, str, float | None]]:
        return [
            (r.name, r.status, None if r.next_fire_ms is None else r.next_fire_ms / 1000)
            for r in view.records.values()
        ]

    return Metrics(snapshot)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    view = FakeView()
    metrics = new_metrics(view)
    app = build_control_app(view, metrics, secrets=SecretRegistry([SECRET]), token=TOKEN)
    server = await serve_control(app, unix_socket=str(tmp_path / "c.sock"), tcp="127.0.0.1:0")
    handle = Daemon(view, server, metrics)
    try:
        yield handle
    finally:
        await handle.http.aclose()
        await server.close()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---- probes and metrics -------------------------------------------------------------------


async def test_probes_answer_200_when_fine_and_503_when_not(daemon: Daemon) -> None:
    assert (await daemon.http.get("/healthz")).json() == {
        "ok": True,
        "detail": "heartbeat 0.1s ago",
    }
    daemon.view.live, daemon.view.loaded = False, False
    health, ready = await daemon.http.get("/healthz"), await daemon.http.get("/readyz")
    assert (health.status_code, health.json()["ok"]) == (503, False)
    assert (ready.status_code, ready.json()) == (503, {"ok": False, "detail": "loading state"})


async def test_metrics_are_prometheus_text_with_job_series(daemon: Daemon) -> None:
    daemon.metrics.run_finished("report", "quota", "succeeded", 0.4)
    response = await daemon.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    assert 'ductape_runner_runs_total{job="report",outcome="succeeded"} 1.0' in text
    assert 'ductape_runner_jobs{status="suspended"} 1.0' in text
    assert 'ductape_runner_next_fire_timestamp_seconds{job="report"}' in text
    assert 'ductape_runner_next_fire_timestamp_seconds{job="frozen"}' not in text


# ---- jobs ------------------------------------------------------------------------------------


async def test_jobs_carry_dispatch_result_and_record_fields(daemon: Daemon) -> None:
    jobs = (await daemon.http.get("/jobs")).json()
    report = next(j for j in jobs if j["job_id"] == "report")
    assert report == {
        "job_id": "report",
        "status": "scheduled",
        "scheduled_at": "2026-03-01T09:00:00.000Z",
        "recurring": True,
        "next_run_at": "2026-03-02T09:00:00.000Z",
        "execution_count": 0,
        "limit": 10,
        "end_date": None,
        "retries": 2,
        "retry_count": 0,
        "last_error": "401 from Ductape: bad token ***",
        "kind": "quota",
        "path": "jobs.d/r.yaml",
        "paused": False,
        "suspended": False,
        "last_outcome": None,
        "last_started_at": None,
        "last_finished_at": None,
    }


async def test_secrets_never_leave_in_any_response(daemon: Daemon) -> None:
    for path in ("/jobs", "/jobs/report", "/status"):
        assert SECRET not in (await daemon.http.get(path)).text


async def test_history_lists_occurrences_and_checks_its_limit(daemon: Daemon) -> None:
    history = (await daemon.http.get("/jobs/report/history", params={"limit": 5})).json()
    assert [(o["scheduled_at"], o["state"]) for o in history] == [
        ("2026-03-01T09:00:00.000Z", "succeeded")
    ]
    for bad in ("0", "abc", "1001"):
        response = await daemon.http.get("/jobs/report/history", params={"limit": bad})
        assert (response.status_code, response.json()["error"]) == (400, "bad_request")


async def test_pause_and_resume_change_the_status(daemon: Daemon) -> None:
    paused = (await daemon.http.post("/jobs/report/pause")).json()
    assert (paused["status"], paused["paused"]) == ("paused", True)
    resumed = (await daemon.http.post("/jobs/report/resume")).json()
    assert (resumed["status"], resumed["paused"]) == ("scheduled", False)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/history"),
        ("POST", "/jobs/nope/trigger"),
        ("POST", "/jobs/nope/pause"),
        ("POST", "/jobs/nope/resume"),
    ],
)
async def test_unknown_job_is_a_json_404(daemon: Daemon, method: str, path: str) -> None:
    response = await daemon.http.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no job named 'nope'"}


async def test_triggering_a_suspended_job_is_a_409(daemon: Daemon) -> None:
    response = await daemon.http.post("/jobs/frozen/trigger")
    assert response.status_code == 409
    assert response.json()["detail"] == "job 'frozen' is suspended in its file; unsuspend it first"


async def test_unknown_routes_and_methods_answer_json(daemon: Daemon) -> None:
    missing, wrong = await daemon.http.get("/nothing"), await daemon.http.get("/jobs/report/pause")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


async def test_a_failing_view_is_a_500_and_the_server_keeps_serving(daemon: Daemon) -> None:
    def broken(name: str) -> dict[str, Any]:
        raise RuntimeError("boom")

    def no_summary() -> dict[str, Any]:
        raise KeyError("jobs")

    daemon.view.pause = broken  # type: ignore[method-assign]
    daemon.view.summary = no_summary  # type: ignore[method-assign]
    for method, path in (("POST", "/jobs/report/pause"), ("GET", "/status")):
        response = await daemon.http.request(method, path)
        assert (response.status_code, response.json()["error"]) == (500, "internal")
    assert (await daemon.http.get("/healthz")).status_code == 200


# ---- sockets ---------------------------------------------------------------------------------


async def test_the_unix_socket_is_mode_0660(daemon: Daemon) -> None:
    mode = (await asyncio.to_thread(Path(daemon.socket).stat)).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_tcp_on_loopback_serves_the_same_api_with_the_token(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, trust_env=False, headers=BEARER) as client:
        assert (await client.get("/jobs/report")).json()["job_id"] == "report"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer"])
async def test_tcp_without_the_token_gets_probes_and_metrics_only(
    daemon: Daemon, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else None
    async with httpx.AsyncClient(base_url=daemon.url, trust_env=False, headers=headers) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        refused = await client.post("/jobs/report/pause")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/jobs")).status_code == 401
    assert daemon.view.records["report"].paused is False


async def test_remote_tcp_clients_get_probes_and_metrics_only(daemon: Daemon) -> None:
    app = build_control_app(daemon.view, daemon.metrics)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://runner:9464") as remote:
        assert (await remote.get("/metrics")).status_code == 200
        assert (await remote.get("/healthz")).status_code == 200
        assert (await remote.get("/jobs")).status_code == 403
        assert (await remote.post("/jobs/report/trigger")).status_code == 403


@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
async def test_loopback_tcp_clients_get_the_whole_api(daemon: Daemon, client: str) -> None:
    app = build_control_app(daemon.view, daemon.metrics, token=TOKEN)
    transport = httpx.ASGITransport(app=app, client=(client, 40000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://runner:9464", headers=BEARER
    ) as local:
        assert (await local.post("/jobs/report/pause")).status_code == 200


async def test_socket_file_is_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = await serve_control(_app(), unix_socket=str(path), tcp=None)
    assert path.exists()
    await server.close()
    assert not path.exists()


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: what a crashed daemon leaves
    server = await serve_control(_app(), unix_socket=str(path), tcp=None)
    try:
        async with _uds_client(str(path)) as client:
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await server.close()


async def test_a_live_socket_or_a_regular_file_is_left_alone(
    daemon: Daemon, tmp_path: Path
) -> None:
    with pytest.raises(ControlSocketError, match="another process is listening"):
        await serve_control(_app(), unix_socket=daemon.socket, tcp=None)
    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await serve_control(_app(), unix_socket=str(regular), tcp=None)
    assert regular.read_text() == "keep me"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_tcp_addresses_default_to_loopback(text: str, expected: tuple[str, int]) -> None:
    assert parse_tcp(text) == expected


def test_a_bad_tcp_address_says_what_is_expected() -> None:
    with pytest.raises(ControlSocketError, match="expected HOST:PORT"):
        parse_tcp("127.0.0.1:http")


# ---- ctl -------------------------------------------------------------------------------------


async def test_ctl_status_prints_json_when_not_on_a_terminal(daemon: Daemon) -> None:
    code, out, err = await daemon.ctl("status")
    assert (code, err) == (0, "")
    payload = json.loads(out)
    assert payload["summary"]["jobs"] == 2
    assert payload["summary"]["invalid_files"][0]["path"] == "jobs.d/bad.yaml"
    assert payload["summary"]["next_run"] == {"job_id": "report", "at": "2026-03-02T09:00:00.000Z"}
    assert [j["job_id"] for j in payload["jobs"]] == ["frozen", "report"]


async def test_ctl_status_prints_an_aligned_table_on_a_terminal(daemon: Daemon) -> None:
    code, out, _ = await daemon.ctl("status", out=Terminal())
    assert code == 0
    lines = out.splitlines()
    assert lines[:4] == [
        "jobs: 2 (1 scheduled, 1 suspended)",
        "next run: report at 2026-03-02 09:00:00Z",
        "invalid files: 1",
        "  jobs.d/bad.yaml:3:7: cron: bad",
    ]
    header, *rows = lines[5:]
    assert header.split() == [
        "JOB",
        "KIND",
        "STATUS",
        "NEXT",
        "RUN",
        "LAST",
        "OUTCOME",
        "LAST",
        "FINISHED",
        "RUNS",
    ]
    assert [row.index("scheduled") for row in rows if "scheduled" in row] == [
        header.index("STATUS")
    ]
    assert rows[1].split()[:3] == ["report", "quota", "scheduled"]


async def test_ctl_json_flag_wins_over_the_terminal(daemon: Daemon) -> None:
    code, out, _ = await daemon.ctl("history", "report", as_json=True, out=Terminal())
    assert code == 0
    assert json.loads(out)[0]["state"] == "succeeded"


async def test_ctl_history_table(daemon: Daemon) -> None:
    code, out, _ = await daemon.ctl("history", "report", as_json=False)
    assert code == 0
    assert out.splitlines()[1].split()[:4] == ["2026-03-01", "09:00:00Z", "schedule", "succeeded"]


async def test_ctl_trigger_pause_resume(daemon: Daemon) -> None:
    assert (await daemon.ctl("trigger", "report", as_json=False))[1].startswith(
        "triggered report: run at 2026-03-01 09:00:00Z is running"
    )
    assert (await daemon.ctl("pause", "report", as_json=False))[
        1
    ] == "paused report (status paused)\n"
    assert (await daemon.ctl("resume", "report", as_json=False))[1].startswith("resumed report")


async def test_ctl_over_tcp(daemon: Daemon) -> None:
    code, out, _ = await daemon.ctl(
        "status", "report", url=daemon.url, socket=None, as_json=True, token=TOKEN
    )
    assert (code, json.loads(out)["job_id"]) == (0, "report")


@pytest.mark.parametrize(
    ("command", "job", "message"),
    [
        ("trigger", "nope", "error: no job named 'nope'\n"),
        ("history", "nope", "error: no job named 'nope'\n"),
        ("trigger", "frozen", "error: job 'frozen' is suspended in its file; unsuspend it first\n"),
        ("pause", None, "error: pause needs a job name\n"),
    ],
)
async def test_ctl_refusals_exit_1_with_one_line(
    daemon: Daemon, command: str, job: str | None, message: str
) -> None:
    assert await daemon.ctl(command, job) == (1, "", message)


async def test_ctl_says_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.sock")
    err = io.StringIO()
    code = run_ctl("status", None, socket=path, url=None, as_json=None, out=io.StringIO(), err=err)
    assert code == 2
    assert (
        err.getvalue()
        == f"error: cannot reach the daemon at {path}: [Errno 2] No such file or directory\n"
    )


# ---- helpers ---------------------------------------------------------------------------------


def _app() -> Any:
    view = FakeView()
    return build_control_app(view, new_metrics(view))


def _uds_client(path: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=path), base_url="http://c")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    yield
