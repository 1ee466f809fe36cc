"""Secret references: resolving ${env:}, ${file:}, ${credential:}, and redacting their values."""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from pydantic_core import PydanticCustomError

from runner.errors import SecretError
from runner.jobs.model import find_secret_refs

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words in every log line
_REF = re.compile(r"\$\{([^}]*)\}")  # same shape as runner.jobs.model's, which validates them
SECRET_KEYS = frozenset(
    {
        "token",
        "accesstoken",
        "xaccesstoken",
        "sessiontoken",
        "privatekey",
        "password",
        "secret",
        "clientsecret",
        "apikey",
        "authorization",
    }
)

Processor = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]


class SecretRegistry:
    """Thread-safe set of resolved secret values that the log redactor must hide."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._ordered: tuple[str, ...] = ()
        self.add_all(values)

    def add(self, value: str) -> None:
        """Remember `value` (and each line of a multi-line one); short values are ignored."""
        self.add_all([value])

    def add_all(self, values: Iterable[str]) -> None:
        fresh = {part for v in values for part in _parts(v) if len(part) >= MIN_SECRET_LENGTH}
        with self._lock:
            if fresh <= self._values:
                return
            self._values |= fresh
            # Longest first, so a secret that contains another is hidden whole.
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def values(self) -> tuple[str, ...]:
        """A snapshot, longest first; safe to iterate while other threads add."""
        return self._ordered

    def __len__(self) -> int:
        return len(self._ordered)


def _parts(value: str) -> list[str]:
    lines = [line.strip() for line in value.splitlines()]
    return [value, *lines] if len(lines) > 1 else [value]


def resolve(
    value: Any,
    *,
    environ: Mapping[str, str],
    credentials_dir: str | None,
    registry: SecretRegistry | None = None,
) -> Any:
    """Deep copy of `value` with every secret reference in its strings replaced.

    `${env:NAME}` reads `environ`, `${file:/path}` reads the file, `${credential:NAME}` reads
    NAME inside `credentials_dir` (systemd's $CREDENTIALS_DIRECTORY). One trailing newline of
    file contents is dropped. Resolved values are added to `registry` for log redaction.
    """
    if isinstance(value, str):
        return _resolve_text(value, environ, credentials_dir, registry)
    if isinstance(value, Mapping):
        return {
            k: resolve(v, environ=environ, credentials_dir=credentials_dir, registry=registry)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [
            resolve(v, environ=environ, credentials_dir=credentials_dir, registry=registry)
            for v in value
        ]
    return copy.deepcopy(value)


def _resolve_text(
    text: str,
    environ: Mapping[str, str],
    credentials_dir: str | None,
    registry: SecretRegistry | None,
) -> str:
    if "${" not in text:
        return text
    try:
        find_secret_refs(text)
    except PydanticCustomError as exc:
        raise SecretError(_first_ref(text), exc.message()) from None

    def substitute(match: re.Match[str]) -> str:
        scheme, _, arg = match.group(1).partition(":")
        secret = read_secret(scheme, arg, environ=environ, credentials_dir=credentials_dir)
        if registry is not None:
            registry.add(secret)
        return secret

    return _REF.sub(substitute, text)


def _first_ref(text: str) -> str:
    match = _REF.search(text)
    return match.group(0) if match else text


def read_secret(
    scheme: str, arg: str, *, environ: Mapping[str, str], credentials_dir: str | None
) -> str:
    """The value behind one reference; errors name the reference, never a value."""
    ref = f"${{{scheme}:{arg}}}"
    if scheme == "env":
        if arg not in environ:
            raise SecretError(ref, "environment variable is not set")
        return environ[arg]
    if scheme == "file":
        return _read_file(ref, Path(arg))
    if scheme == "credential":
        if not credentials_dir:
            raise SecretError(ref, "no credentials directory ($CREDENTIALS_DIRECTORY is not set)")
        if "/" in arg or arg in (".", ".."):
            raise SecretError(ref, "credential name must be a plain file name")
        return _read_file(ref, Path(credentials_dir) / arg)
    raise SecretError(ref, "unknown scheme: use env, file or credential")


def _read_file(ref: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(ref, f"file {path} does not exist") from None
    except PermissionError:
        raise SecretError(ref, f"file {path} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(ref, f"file {path} cannot be read ({type(exc).__name__})") from None
    return text.removesuffix("\n").removesuffix("\r")


def is_secret_key(key: object) -> bool:
    """'x-access-token', 'Access_Token' and 'accessToken' all name a secret."""
    if not isinstance(key, str):
        return False
    return key.lower().replace("-", "").replace("_", "").replace(" ", "") in SECRET_KEYS


def redact(value: Any, secrets: tuple[str, ...]) -> Any:
    """Copy of `value` with secret values inside strings and under secret-named keys hidden."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if is_secret_key(k) and v is not None else redact(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v, secrets) for v in value)
    return value


def redact_processor(registry: SecretRegistry) -> Processor:
    """A structlog processor; put it after format_exc_info, just before the renderer."""

    def processor(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        secrets = registry.values()
        for key, value in list(event_dict.items()):
            if is_secret_key(key) and value is not None:
                event_dict[key] = REDACTED
            else:
                event_dict[key] = redact(value, secrets)
        return event_dict

    return processor
