"""DuctapeClient against the real emulator over loopback: success per kind, failure classes."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from runner.ductape import wire
from runner.ductape.client import (
    Credentials,
    DuctapeClient,
    PermanentError,
    RetryableError,
    is_retryable,
    parse_retry_after,
)
from runner.ductape.operations import Operation, build_operation
from runner.jobs.model import JOB_ADAPTER
from tests import emulator_fixture
from tests.emulator_fixture import RunningEmulator

# Fixtures by assignment until the lead registers tests.emulator_fixture in conftest.py.
emulator = emulator_fixture.emulator
emulator_server = emulator_fixture.emulator_server

ACTION = Operation(
    "actions", "run", [{"product": "shop", "env": "prd", "app": "a", "action": "e", "input": {}}]
)
NOW = datetime(2026, 10, 21, 7, 26, 30, tzinfo=UTC)
JOBS: list[dict[str, Any]] = [
    {"kind": "action", "app": "mailer", "event": "digest", "input": {"to": "ops"}},
    {"kind": "workflow", "workflow": "close_books", "input": {}},
    {"kind": "notification", "notification": "alerts", "event": "daily"},
    {"kind": "storage", "storage": "s3", "operation": "listFiles", "input": {"prefix": "x/"}},
    {"kind": "event", "broker": "kafka", "event": "orders", "input": {"id": 1}},
    {"kind": "database", "database": "pg", "operation": "count", "input": {"table": "users"}},
    {"kind": "graph", "graph": "social", "operation": "query", "input": {"q": "MATCH"}},
    {"kind": "quota", "tag": "sms", "session": "users:tok-123", "cache": "c1"},
    {"kind": "fallback", "tag": "payments"},
]


async def call(
    emu: RunningEmulator, op: Operation = ACTION, *, timeout_s: float = 2.0, key: str = "k-1"
) -> Any:
    async with DuctapeClient(emu.credentials, clock=lambda: NOW) as client:
        return await client.execute(op, idempotency_key=key, timeout_s=timeout_s)


@pytest.mark.parametrize("fields", JOBS, ids=[str(j["kind"]) for j in JOBS])
async def test_one_call_per_kind_succeeds(
    emulator: RunningEmulator, fields: dict[str, Any]
) -> None:
    job = JOB_ADAPTER.validate_python({"name": "j", **fields})
    op = build_operation(job, idempotency_key="key-9", default_product="shop", default_env="prd")
    result = await call(emulator, op, key="key-9")
    assert result.data == {"ok": True, "echo": op.name}
    assert result.http_status == 200
    assert result.request_id
    [recorded] = emulator.calls()
    assert (recorded["module"], recorded["method"]) == (op.module, op.method)
    assert recorded["params"] == op.params
    assert recorded["outcome"] == "ok"


@pytest.mark.parametrize("status", [503, 502, 504, 500, 408, 425, 429])
async def test_retryable_http_statuses(emulator: RunningEmulator, status: int) -> None:
    emulator.fault(status=status)
    with pytest.raises(RetryableError) as caught:
        await call(emulator)
    assert caught.value.http_status == status
    assert caught.value.retry_after_s is None
    assert emulator.calls()[0]["outcome"] == f"fault:status={status}"


async def test_429_carries_retry_after_seconds(emulator: RunningEmulator) -> None:
    emulator.fault(status=429, retry_after=2)
    with pytest.raises(RetryableError, match=r"HTTP 429, code RATE_LIMITED.*retry after 2s"):
        await call(emulator)


async def test_429_carries_retry_after_as_an_http_date(emulator: RunningEmulator) -> None:
    emulator.fault(status=429, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    with pytest.raises(RetryableError) as caught:
        await call(emulator)
    assert caught.value.retry_after_s == 90.0


@pytest.mark.parametrize("code", ["RATE_LIMITED", "TIMEOUT", "SERVICE_UNAVAILABLE"])
async def test_retryable_proxy_codes_even_with_http_200(
    emulator: RunningEmulator, code: str
) -> None:
    emulator.fault(code=code)
    with pytest.raises(RetryableError) as caught:
        await call(emulator)
    assert (caught.value.http_status, caught.value.code) == (200, code)


async def test_a_gateway_page_instead_of_json_is_retryable(emulator: RunningEmulator) -> None:
    emulator.fault(status=502, raw=True, message="Bad Gateway")
    with pytest.raises(RetryableError, match="non-JSON body"):
        await call(emulator)


async def test_connect_error_to_a_closed_port_is_retryable(emulator: RunningEmulator) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = emulator.credentials.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    async with DuctapeClient(closed) as client:
        with pytest.raises(RetryableError, match=r"connection failed.*ConnectError"):
            await client.execute(ACTION, idempotency_key="k", timeout_s=2)


async def test_a_hung_call_times_out_as_retryable(emulator: RunningEmulator) -> None:
    emulator.fault(hang=True)
    started = asyncio.get_running_loop().time()
    with pytest.raises(RetryableError, match="timed out"):
        await call(emulator, timeout_s=0.3)
    assert asyncio.get_running_loop().time() - started < 2
    assert emulator.calls()[0]["outcome"] == "fault:hang"


async def test_a_connection_reset_is_retryable(emulator: RunningEmulator) -> None:
    emulator.fault(reset=True)
    with pytest.raises(RetryableError, match="connection failed") as caught:
        await call(emulator)
    assert caught.value.http_status is None
    assert emulator.calls()[0]["outcome"] == "fault:reset"


async def test_the_pool_recovers_after_a_reset(emulator: RunningEmulator) -> None:
    emulator.fault(reset=True)
    async with DuctapeClient(emulator.credentials, max_connections=1) as client:
        with pytest.raises(RetryableError):
            await client.execute(ACTION, idempotency_key="k", timeout_s=2)
        result = await client.execute(ACTION, idempotency_key="k", timeout_s=2)
    assert result.data["ok"] is True


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"status": 400}, 400, "BAD_REQUEST"),
        ({"status": 404}, 404, "NOT_FOUND"),
        ({"code": "VALIDATION_ERROR"}, 200, "VALIDATION_ERROR"),
        ({"code": "UNAUTHORIZED"}, 200, "UNAUTHORIZED"),
        ({"status": 503, "code": "FORBIDDEN"}, 503, "FORBIDDEN"),  # a named code wins
        ({"code": "SOMETHING_NEW"}, 200, "SOMETHING_NEW"),  # unknown codes are permanent
    ],
)
async def test_permanent_failures(
    emulator: RunningEmulator, fault: dict[str, Any], status: int, code: str
) -> None:
    emulator.fault(**fault)
    with pytest.raises(PermanentError) as caught:
        await call(emulator)
    assert (caught.value.http_status, caught.value.code) == (status, code)


async def test_a_wrong_access_token_is_permanent_and_never_printed(
    emulator: RunningEmulator,
) -> None:
    wrong = emulator.credentials.model_copy(update={"access_token": SecretStr("wrong-token-xyz")})
    async with DuctapeClient(wrong) as client:
        with pytest.raises(PermanentError) as caught:
            await client.execute(ACTION, idempotency_key="k", timeout_s=2)
    assert (caught.value.http_status, caught.value.code) == (401, "UNAUTHORIZED")
    assert "wrong-token-xyz" not in str(caught.value)
    assert "wrong-token-xyz" not in repr(wrong)
    assert emulator.calls()[0]["outcome"] == "rejected:UNAUTHORIZED"


@pytest.mark.parametrize(
    ("update", "status"), [({"workspace_id": "other"}, 403), ({"public_key": "other"}, 401)]
)
async def test_a_wrong_identity_is_permanent(
    emulator: RunningEmulator, update: dict[str, str], status: int
) -> None:
    creds = emulator.credentials.model_copy(update=update)
    async with DuctapeClient(creds) as client:
        with pytest.raises(PermanentError) as caught:
            await client.execute(ACTION, idempotency_key="k", timeout_s=2)
    assert caught.value.http_status == status


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        (Operation("actions", "explode", ACTION.params), "unknown operation actions.explode"),
        (Operation("actions", "run", [{"app": "a"}]), "missing field.s. product, env"),
        (
            Operation(
                "messageBrokers", "produce", [{**ACTION.params[0], "event": "x", "message": {}}]
            ),
            "broker:topic",
        ),
    ],
)
async def test_the_emulator_validates_calls(
    emulator: RunningEmulator, op: Operation, problem: str
) -> None:
    with pytest.raises(PermanentError, match=problem) as caught:
        await call(emulator, op)
    assert caught.value.code == "VALIDATION_ERROR"


async def test_the_idempotency_key_header_is_recorded(emulator: RunningEmulator) -> None:
    await call(emulator, key="nightly:2026-01-01T00:00:00Z")
    [recorded] = emulator.calls()
    assert recorded["idempotency_key"] == "nightly:2026-01-01T00:00:00Z"
    assert datetime.fromisoformat(recorded["received_at"]).tzinfo is not None


async def test_a_gzipped_body_over_200_kib_is_accepted(emulator: RunningEmulator) -> None:
    blob = "z" * (wire.GZIP_THRESHOLD + 1)
    op = Operation("actions", "run", [{**ACTION.params[0], "input": {"blob": blob}}])
    async with DuctapeClient(emulator.credentials) as client:
        assert "Content-Encoding" in client.encode(op).headers
        await client.execute(op, idempotency_key="big", timeout_s=5)
    assert emulator.calls()[0]["params"][0]["input"]["blob"] == blob


async def test_faults_count_down_and_match_their_target(emulator: RunningEmulator) -> None:
    emulator.fault(target="actions.run", status=503, count=2)
    other = Operation("quotas", "run", [{"product": "p", "env": "e", "tag": "t", "input": {}}])
    assert (await call(emulator, other)).data["echo"] == "quotas.run"
    for _ in range(2):
        with pytest.raises(RetryableError):
            await call(emulator)
    assert (await call(emulator)).data["ok"] is True
    outcomes = [c["outcome"] for c in emulator.calls()]
    assert outcomes == ["ok", "fault:status=503", "fault:status=503", "ok"]


async def test_a_delay_fault_still_answers(emulator: RunningEmulator) -> None:
    emulator.fault(delay_ms=50)
    result = await call(emulator)
    assert result.duration_ms >= 50
    assert emulator.calls()[0]["outcome"] == "fault:delay_ms=50"


async def test_concurrent_calls_share_a_small_pool(emulator: RunningEmulator) -> None:
    async with DuctapeClient(emulator.credentials, max_connections=4) as client:
        results = await asyncio.gather(
            *(client.execute(ACTION, idempotency_key=f"k{n}", timeout_s=5) for n in range(40))
        )
    assert len(results) == 40
    assert len({c["idempotency_key"] for c in emulator.calls()}) == 40


def test_a_bad_fault_spec_is_refused(emulator: RunningEmulator) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        emulator.fault(status=99)
    with pytest.raises(httpx.HTTPStatusError):
        emulator.fault(explode=True)


def test_credentials_never_print_the_token() -> None:
    creds = Credentials(
        workspace_id="w", user_id="u", public_key="k", access_token=SecretStr("s3cr3t-token")
    )
    assert "s3cr3t-token" not in repr(creds)
    assert "s3cr3t-token" not in str(creds.model_dump())


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", 90.0),
        ("Wed, 21 Oct 2026 07:00:00 GMT", 0.0),  # in the past
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (200, "rate-limited", True),
        (200, "Service_Unavailable", True),
        (200, "CONNECTION_ERROR", True),
        (200, "NOT_FOUND", False),
        (200, "FORBIDDEN", False),
        (200, "UNHEARD_OF", False),
        (503, "UNHEARD_OF", True),  # the gateway's retryable status wins over an unknown code
        (429, "VALIDATION_ERROR", False),  # a named permanent code wins over everything
        (501, None, False),
        (413, None, False),
        (401, None, False),
    ],
)
def test_classification_table(status: int, code: str | None, retryable: bool) -> None:
    assert is_retryable(status, code) is retryable


def test_retry_after_in_the_far_future_is_relative_to_the_clock() -> None:
    later = NOW + timedelta(hours=1)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(header, NOW) == 3600.0


def test_recorded_calls_are_kept_as_json_text_out_of_the_cyclic_gcs_way() -> None:
    # Issue 12: tens of thousands of recorded calls held as dicts made each full
    # collection stall the emulator for hundreds of milliseconds.
    import gc
    import json

    from runner.ductape.emulator_state import EmulatorConfig, EmulatorState

    state = EmulatorState(EmulatorConfig())
    first = {"module": "quotas", "idempotency_key": "k1", "params": [{"input": {"é": [1, None]}}]}
    state.record(first, "ok")
    state.record({"module": "quotas", "idempotency_key": "k1"}, "fault:hang")
    assert not any(gc.is_tracked(call) for call in state.calls)
    calls = json.loads(state.calls_json())
    assert calls[0] == {**first, "outcome": "ok"}
    assert [c["outcome"] for c in calls] == ["ok", "fault:hang"]
    assert len(state.keys) == 1
    state.clear_calls()
    assert json.loads(state.calls_json()) == [] and not state.keys
