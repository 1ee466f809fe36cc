"""Secret references resolve from env, files and systemd credentials; logs never show them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import structlog

from runner.errors import SecretError
from runner.jobs.secrets import (
    REDACTED,
    SecretPolicy,
    SecretRegistry,
    is_secret_key,
    redact,
    redact_processor,
    resolve,
)

ENVIRON = {"DB_PASSWORD": "hunter2-pw", "EMPTY": "", "DUCTAPE_RUNNER_ACCESS_TOKEN": "tok-own"}
OPEN = SecretPolicy(env=("*",), dirs=("/",))  # every name and file but the runner's own


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "session-token").write_text("tok-from-systemd\n")
    return directory


def test_it_resolves_each_scheme_inside_nested_values(tmp_path: Path, creds: Path) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text("file-secret-value\n")
    value: dict[str, Any] = {
        "session": {"tag": "users", "token": "${credential:session-token}"},
        "input": {
            "dsn": "postgres://app:${env:DB_PASSWORD}@db/app",
            "keys": ["${file:" + str(key_file) + "}", 7, None, True],
        },
    }
    resolved = resolve(value, environ=ENVIRON, credentials_dir=str(creds), policy=OPEN)
    assert resolved == {
        "session": {"tag": "users", "token": "tok-from-systemd"},
        "input": {
            "dsn": "postgres://app:hunter2-pw@db/app",
            "keys": ["file-secret-value", 7, None, True],
        },
    }
    assert value["session"]["token"] == "${credential:session-token}"  # input untouched


def test_it_returns_a_deep_copy_even_without_references() -> None:
    value = {"a": {"b": [1, 2]}}
    resolved = resolve(value, environ={}, credentials_dir=None, policy=OPEN)
    resolved["a"]["b"].append(3)
    assert value == {"a": {"b": [1, 2]}}


def test_only_one_trailing_newline_of_a_file_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "pem"
    path.write_text("line one\nline two\n\n")
    assert resolve("${file:" + str(path) + "}", environ={}, credentials_dir=None, policy=OPEN) == (
        "line one\nline two\n"
    )


def test_ductape_operators_and_plain_dollars_pass_through() -> None:
    value = {"user": "$Session{users}{email}", "at": "$Now()", "price": "$5", "env": "${env:EMPTY}"}
    assert resolve(value, environ=ENVIRON, credentials_dir=None, policy=OPEN) == {
        **value,
        "env": "",
    }


@pytest.mark.parametrize(
    ("reference", "credentials_dir", "reason"),
    [
        ("${env:MISSING}", None, "environment variable is not set"),
        ("${file:/nonexistent/secret}", None, "does not exist"),
        ("${credential:session-token}", None, "no credentials directory"),
        ("${credential:absent}", "CREDS", "does not exist"),
        ("${credential:../etc/passwd}", "CREDS", "must be a plain file name"),
        ("${vault:kv/x}", None, "invalid secret reference"),
    ],
)
def test_failures_name_the_reference_and_never_a_value(
    reference: str, credentials_dir: str | None, reason: str, creds: Path
) -> None:
    directory = str(creds) if credentials_dir == "CREDS" else credentials_dir
    value = {"token": f"prefix {reference}", "other": "${env:DB_PASSWORD}"}
    with pytest.raises(SecretError, match=reason) as caught:
        resolve(value, environ=ENVIRON, credentials_dir=directory, policy=OPEN)
    assert reference[2:-1] in str(caught.value)
    assert "hunter2-pw" not in str(caught.value)
    assert "tok-from-systemd" not in str(caught.value)


def test_an_unreadable_file_is_reported_without_its_contents(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(SecretError, match="cannot be read"):
        resolve("${file:" + str(directory) + "}", environ={}, credentials_dir=None, policy=OPEN)


def test_resolved_values_are_registered_for_redaction(creds: Path) -> None:
    registry = SecretRegistry()
    resolve(
        ["${env:DB_PASSWORD}", "${credential:session-token}"],
        environ=ENVIRON,
        credentials_dir=str(creds),
        registry=registry,
        policy=OPEN,
    )
    assert set(registry.values()) == {"hunter2-pw", "tok-from-systemd"}


def test_the_registry_ignores_short_values_and_keeps_lines_of_multiline_ones() -> None:
    registry = SecretRegistry(["abc", "abcd", "first-line\nsecond-line"])
    assert set(registry.values()) == {
        "abcd",
        "first-line\nsecond-line",
        "first-line",
        "second-line",
    }
    assert registry.values()[0] == "first-line\nsecond-line"  # longest first


def test_the_registry_is_safe_to_fill_from_many_threads() -> None:
    registry = SecretRegistry()

    def fill(start: int) -> None:
        for n in range(start, start + 200):
            registry.add(f"secret-{n:05d}")

    threads = [threading.Thread(target=fill, args=(k * 200,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry) == 1600


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("token", True),
        ("access_token", True),
        ("Access-Token", True),
        ("accessToken", True),
        ("x-access-token", True),
        ("X_Access_Token", True),
        ("session_token", True),
        ("private_key", True),
        ("PASSWORD", True),
        ("secret", True),
        ("Authorization", True),
        ("idempotency_key", False),
        ("token_count", False),
        ("event", False),
    ],
)
def test_secret_named_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def run_processor(registry: SecretRegistry, event: dict[str, Any]) -> dict[str, Any]:
    return dict(redact_processor(registry)(None, "info", event))


def test_the_processor_hides_registered_values_anywhere_in_the_event() -> None:
    registry = SecretRegistry(["hunter2-pw", "tok-from-systemd"])
    event = {
        "event": "run.failed",
        "error": "auth failed for postgres://app:hunter2-pw@db",
        "params": [{"session": {"tag": "users", "token": "tok-from-systemd"}, "n": 3}],
        "pair": ("hunter2-pw", 1),
        "attempt": 2,
    }
    assert run_processor(registry, event) == {
        "event": "run.failed",
        "error": f"auth failed for postgres://app:{REDACTED}@db",
        "params": [{"session": {"tag": "users", "token": REDACTED}, "n": 3}],
        "pair": (REDACTED, 1),
        "attempt": 2,
    }


def test_the_processor_hides_secret_named_keys_even_when_unregistered() -> None:
    event = {
        "event": "http.request",
        "headers": {"x-access-token": "never-seen-before", "Accept": "json"},
        "password": "p",
        "token": None,
    }
    assert run_processor(SecretRegistry(), event) == {
        "event": "http.request",
        "headers": {"x-access-token": REDACTED, "Accept": "json"},
        "password": REDACTED,
        "token": None,
    }


def test_it_works_in_a_structlog_chain(capsys: pytest.CaptureFixture[str]) -> None:
    registry = SecretRegistry(["hunter2-pw"])
    logger = structlog.wrap_logger(
        structlog.PrintLogger(),
        processors=[redact_processor(registry), structlog.processors.JSONRenderer()],
    )
    logger.info("run.failed", error="bad password hunter2-pw", access_token="abc123")
    out = capsys.readouterr().out
    assert "hunter2-pw" not in out
    assert "abc123" not in out
    assert '"error": "bad password ***"' in out


def test_every_encoding_of_a_value_and_its_cut_end_are_hidden() -> None:
    from tests.test_suite_hostile import ECHOED, echo_forms

    forms = SecretRegistry([ECHOED]).forms()
    for name, form in echo_forms(ECHOED).items():
        assert ECHOED not in (hidden := redact(f"echo: {form}.", forms)), name
        assert REDACTED in hidden and form not in hidden, name
    cut = f"body: 'secret={ECHOED[:9]}'"
    assert redact(cut, forms, cut_ends=True) == f"body: 'secret={REDACTED}'"
    assert redact(cut, forms) == cut  # only upstream errors are cut: a job name is kept
    assert redact(f"secret={ECHOED[:5]}", forms, cut_ends=True) == f"secret={ECHOED[:5]}"
    middle = f"{ECHOED[:9]} in the middle"
    assert redact(middle, forms, cut_ends=True) == middle


@pytest.mark.parametrize(
    ("reference", "allowed"),
    [
        ("${env:JOB_TOKEN}", True),
        ("${env:DB_PASSWORD}", True),
        ("${env:DB_PASSWORD_2}", False),
        ("${env:OTHER}", False),
        ("${env:DUCTAPE_RUNNER_ACCESS_TOKEN}", False),  # even though DUCTAPE_* is allowed
        ("${file:ALLOWED/pw}", True),
        ("${file:CREDS/session-token}", True),
        ("${file:ALLOWED/../outside}", False),
        ("${file:ALLOWED/link}", False),
        ("${file:ALLOWED-sibling/pw}", False),
        ("${file:/proc/self/environ}", False),
        ("${file:/etc/shadow}", False),
    ],
)
def test_the_policy_allows_only_named_variables_and_files_under_allowed_folders(
    tmp_path: Path, creds: Path, reference: str, allowed: bool
) -> None:
    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "pw").write_text("pw-value")
    (tmp_path / "outside").write_text("outside-value")
    (folder / "link").symlink_to(tmp_path / "outside")
    policy = SecretPolicy(
        env=("JOB_*", "DB_PASSWORD", "DUCTAPE_*"), dirs=(str(folder),), credentials_dir=str(creds)
    )
    ref = reference.replace("ALLOWED", str(folder)).replace("CREDS", str(creds))
    environ = {**ENVIRON, "JOB_TOKEN": "job-value", "OTHER": "x" * 8, "DB_PASSWORD_2": "y" * 8}
    value = {"input": {"a": ref}}
    if allowed:
        resolve(value, environ=environ, credentials_dir=str(creds), policy=policy)
        return
    with pytest.raises(SecretError, match="refused") as caught:
        resolve(value, environ=environ, credentials_dir=str(creds), policy=policy)
    assert str(caught.value).startswith("input.a: secret reference")
    assert ("secret_env" if "env:" in ref else "secret_dirs") in str(caught.value) or (
        "DUCTAPE_RUNNER_" in str(caught.value)
    )
    assert "value" not in str(caught.value)


def test_without_a_policy_only_credentials_are_read(creds: Path) -> None:
    assert resolve("${credential:session-token}", environ={}, credentials_dir=str(creds))
    with pytest.raises(SecretError, match="secret_env"):
        resolve("${env:DB_PASSWORD}", environ=ENVIRON, credentials_dir=str(creds))
