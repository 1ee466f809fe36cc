"""Job → operation: one job per kind against the contract table in ductape-api.md."""

from __future__ import annotations

from typing import Any

import pytest

from runner.ductape.operations import (
    OPERATION_SPECS,
    Operation,
    OperationError,
    build_operation,
    find_spec,
)
from runner.jobs.model import CANONICAL_KINDS, JOB_ADAPTER, Job

KEY = "job-1:2026-01-01T00:00:00Z"
COMMON = {"product": "shop", "env": "prd"}


def job(**fields: Any) -> Job:
    return JOB_ADAPTER.validate_python({"name": "nightly", **fields})


def build(spec: Job, **defaults: str | None) -> Operation:
    return build_operation(
        spec,
        idempotency_key=KEY,
        default_product=defaults.get("product"),
        default_env=defaults.get("env"),
    )


# job fields → (module, method, params object)
TABLE: list[tuple[dict[str, Any], str, str, dict[str, Any]]] = [
    (
        {"kind": "action", "app": "mailer", "event": "send_digest", "input": {"to": "ops"}},
        "actions",
        "run",
        {"app": "mailer", "action": "send_digest", "input": {"to": "ops"}},
    ),
    (
        {"kind": "feature", "workflow": "close_books", "input": {"m": 1}, "retries": 2},
        "feature",
        "execute",
        {
            "tag": "close_books",
            "input": {"m": 1},
            "idempotency_key": KEY,
            "retries": 2,
            "timeout": 30_000,
        },
    ),
    (
        {"kind": "notification", "notification": "alerts", "event": "daily", "input": {}},
        "notifications",
        "send",
        {"notification": "alerts", "event": "daily", "input": {}},
    ),
    (
        {"kind": "storage", "storage": "s3", "operation": "remove", "input": {"fileName": "a"}},
        "storage",
        "remove",
        {"storage": "s3", "fileName": "a"},
    ),
    (
        {"kind": "publish", "broker": "kafka", "event": "orders", "input": {"id": 7}},
        "messageBrokers",
        "produce",
        {"event": "kafka:orders", "message": {"id": 7}},
    ),
    (
        {
            "kind": "database_action",
            "database": "pg",
            "operation": "delete",
            "input": {"table": "sessions", "where": {"expired": True}},
        },
        "databases",
        "delete",
        {"database": "pg", "entity": "sessions", "where": {"expired": True}},
    ),
    (
        {"kind": "graph", "graph": "social", "operation": "query", "input": {"cypher": "RETURN 1"}},
        "graph",
        "query",
        {"graph": "social", "cypher": "RETURN 1"},
    ),
    (
        {"kind": "quota", "tag": "sms", "input": {"n": 1}},
        "quotas",
        "run",
        {"tag": "sms", "input": {"n": 1}},
    ),
    (
        {"kind": "fallback", "tag": "pay", "input": {}},
        "fallback",
        "run",
        {"tag": "pay", "input": {}},
    ),
]


@pytest.mark.parametrize(
    ("fields", "module", "method", "params"), TABLE, ids=[row[1] for row in TABLE]
)
def test_each_kind_maps_to_its_sdk_call(
    fields: dict[str, Any], module: str, method: str, params: dict[str, Any]
) -> None:
    operation = build(job(**COMMON, **fields))
    assert operation == Operation(module, method, [{**COMMON, **params}])
    assert find_spec(module, method) is not None


def test_the_table_covers_every_canonical_kind() -> None:
    kinds = {job(**COMMON, **row[0]).canonical_kind for row in TABLE}
    assert kinds == set(CANONICAL_KINDS) == {spec.kind for spec in OPERATION_SPECS}


def test_defaults_fill_a_missing_product_and_env_and_the_job_wins() -> None:
    spec = job(kind="quota", tag="sms", env="stg")
    operation = build(spec, product="shop", env="prd")
    assert operation.params[0]["product"] == "shop"
    assert operation.params[0]["env"] == "stg"


@pytest.mark.parametrize(
    ("fields", "defaults", "missing"),
    [
        ({}, {}, "no `product` and `env`"),
        ({"env": "prd"}, {}, "no `product`"),
        ({"product": "shop"}, {"product": "other"}, "no `env`"),
    ],
)
def test_it_refuses_a_job_without_product_or_env(
    fields: dict[str, str], defaults: dict[str, str], missing: str
) -> None:
    with pytest.raises(OperationError, match=f"job 'nightly': {missing}"):
        build(job(kind="fallback", tag="pay", **fields), **defaults)


def test_session_and_cache_pass_through_and_secret_refs_stay_unresolved() -> None:
    spec = job(
        **COMMON,
        kind="action",
        app="crm",
        event="sync",
        session="users:${env:SESSION_TOKEN}",
        cache="crm-sync",
        input={"user": "$Session{users}{email}", "at": "$Now()", "key": "${file:/run/key}"},
    )
    params = build(spec).params[0]
    assert params["session"] == {"tag": "users", "token": "${env:SESSION_TOKEN}"}
    assert params["cache"] == "crm-sync"
    assert params["input"] == {
        "user": "$Session{users}{email}",
        "at": "$Now()",
        "key": "${file:/run/key}",
    }


def test_session_and_cache_are_absent_when_the_job_does_not_set_them() -> None:
    params = build(job(**COMMON, kind="quota", tag="sms")).params[0]
    assert "session" not in params
    assert "cache" not in params


def test_the_operation_does_not_share_input_with_the_job() -> None:
    spec = job(**COMMON, kind="action", app="a", event="e", input={"nested": {"n": 1}})
    build(spec).params[0]["input"]["nested"]["n"] = 2
    assert spec.input == {"nested": {"n": 1}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"kind": "storage", "storage": "s3", "operation": "remove", "input": {"env": "x"}},
            "input field.s. env are set by the runner",
        ),
        (
            {"kind": "graph", "graph": "g", "operation": "query", "input": {"graph": "other"}},
            "input field.s. graph are set by the runner",
        ),
        (
            {
                "kind": "database",
                "database": "pg",
                "operation": "query",
                "input": {"table": "a", "entity": "b"},
            },
            "both `table` and `entity`",
        ),
    ],
)
def test_input_that_collides_with_runner_fields_is_refused(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(OperationError, match=message):
        build(job(**COMMON, **fields))


@pytest.mark.parametrize(
    ("module", "method", "known"),
    [
        ("actions", "run", True),
        ("actions", "execute", False),
        ("storage", "listFiles", True),
        ("storage", "format", False),
        ("databases", "upsert", True),
        ("databases", "drop table", False),
        ("graph", "shortestPath", True),
        ("jobs", "schedule", False),
    ],
)
def test_find_spec_knows_the_proxy_methods(module: str, method: str, known: bool) -> None:
    assert (find_spec(module, method) is not None) is known
