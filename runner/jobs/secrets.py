"""Secret references: resolving ${env:}, ${file:}, ${credential:}, and redacting their values."""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import PydanticCustomError

from runner.errors import SecretError
from runner.jobs.model import find_secret_refs
from runner.settings import Settings

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words in every log line
MIN_CUT_PREFIX = 6  # a secret cut short at the end of a text is hidden from this length on
# What may follow a value cut short: a closing quote (repr), an ellipsis, a broken character.
_AFTER_CUT = " \t\r\n'\"….\ufffd"
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
        self._forms: tuple[str, ...] = ()
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
            forms = {form for value in self._values for form in encodings(value)}
            self._forms = tuple(sorted(forms, key=len, reverse=True))

    def values(self) -> tuple[str, ...]:
        """A snapshot, longest first; safe to iterate while other threads add."""
        return self._ordered

    def forms(self) -> tuple[str, ...]:
        """Every value in every encoding an echo may carry (see `encodings`), longest
        first: what `redact` is given."""
        return self._forms

    def __len__(self) -> int:
        return len(self._ordered)


def encodings(value: str) -> set[str]:
    """`value` as an upstream error may echo it (issue 13 item 10): raw, JSON-escaped,
    as a Python repr, URL-encoded (quote, quote_plus), base64 (standard and urlsafe,
    padded or not), and one level of JSON or repr around each escaped form (a repr'd
    body that held JSON). Forms shorter than MIN_SECRET_LENGTH are left out."""
    escaped = {value, *_json_forms(value), *_repr_forms(value)}
    nested = {form for e in escaped - {value} for form in (*_json_forms(e), *_repr_forms(e))}
    forms = escaped | nested | _url_forms(value) | _base64_forms(value)
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def _json_forms(value: str) -> set[str]:
    ascii_form = json.dumps(value)[1:-1]
    return {ascii_form, json.dumps(value, ensure_ascii=False)[1:-1], ascii_form.replace("/", "\\/")}


def _repr_forms(value: str) -> set[str]:
    """Inside single quotes a quote is escaped, inside double quotes it is not; which
    one repr picks depends on the whole string the value sits in."""
    text = repr(value)
    inner = text[1:-1]
    if text[0] == '"':
        return {inner, inner.replace("'", "\\'")}
    return {inner, inner.replace("\\'", "'")}


def _url_forms(value: str) -> set[str]:
    forms = {
        urllib.parse.quote(value),
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        urllib.parse.quote_plus(value, safe="/"),
    }
    return forms | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}


def _base64_forms(value: str) -> set[str]:
    raw = value.encode()
    forms = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return forms | {form.rstrip("=") for form in forms}


def _parts(value: str) -> list[str]:
    lines = [line.strip() for line in value.splitlines()]
    return [value, *lines] if len(lines) > 1 else [value]


OWN_ENV_PREFIX = "DUCTAPE_RUNNER_"


@dataclass(frozen=True)
class SecretPolicy:
    """What a job file may read (issue 13 item 11): `${env:NAME}` only for names in
    `env` (exact, or a prefix ending in `*`), never the runner's own DUCTAPE_RUNNER_*;
    `${file:/path}` only under `dirs` or `credentials_dir`, symbolic links and `..`
    resolved first. The default refuses both; `${credential:}` is always allowed."""

    env: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()
    credentials_dir: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretPolicy:
        return cls(
            env=tuple(settings.secret_env),
            dirs=tuple(str(d) for d in settings.secret_dirs),
            credentials_dir=settings.credentials_directory,
        )

    def refusal(self, scheme: str, arg: str) -> str | None:
        """Why the reference may not be read, naming the setting to change; None if it may."""
        if scheme == "env":
            return self._env_refusal(arg)
        if scheme == "file" and self.allowed_file(arg) is None:
            real = os.path.realpath(arg)
            shown = arg if real == arg else f"{arg} (which is {real})"
            return (
                f"{shown} is outside $CREDENTIALS_DIRECTORY and the secret_dirs setting; "
                "add its folder to secret_dirs to allow it"
            )
        return None

    def _env_refusal(self, name: str) -> str | None:
        if name.upper().startswith(OWN_ENV_PREFIX):
            return f"the runner's own {OWN_ENV_PREFIX}* variables are never sent"
        if any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in self.env):
            return None
        return f"{name} is not allowed by the secret_env setting; add it (or a prefix, e.g. JOB_*)"

    def allowed_file(self, arg: str) -> str | None:
        """The resolved path of `arg` if it lies in an allowed folder, else None."""
        real = os.path.realpath(arg)
        roots = [*self.dirs, *([self.credentials_dir] if self.credentials_dir else [])]
        for root in roots:
            top = os.path.realpath(root)
            if real == top or real.startswith(top.rstrip("/") + "/"):
                return real
        return None


def resolve(
    value: Any,
    *,
    environ: Mapping[str, str],
    credentials_dir: str | None,
    registry: SecretRegistry | None = None,
    policy: SecretPolicy | None = None,
) -> Any:
    """Deep copy of `value` with every secret reference in its strings replaced.

    `${env:NAME}` reads `environ`, `${file:/path}` reads the file, `${credential:NAME}` reads
    NAME inside `credentials_dir` (systemd's $CREDENTIALS_DIRECTORY), each only where
    `policy` allows (default: credentials only). One trailing newline of file contents is
    dropped. Resolved values are added to `registry` for log redaction. A SecretError
    names the field (`input.password`) holding the reference.
    """
    policy = policy if policy is not None else SecretPolicy(credentials_dir=credentials_dir)
    return _resolve(value, (), _Reader(environ, credentials_dir, registry, policy))


@dataclass(frozen=True)
class _Reader:
    environ: Mapping[str, str]
    credentials_dir: str | None
    registry: SecretRegistry | None
    policy: SecretPolicy


def _resolve(value: Any, path: tuple[str, ...], reader: _Reader) -> Any:
    if isinstance(value, str):
        try:
            return _resolve_text(value, reader)
        except SecretError as exc:
            raise exc.at(".".join(path)) if path and exc.field is None else exc from None
    if isinstance(value, Mapping):
        return {k: _resolve(v, (*path, str(k)), reader) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_resolve(v, (*path, str(i)), reader) for i, v in enumerate(value)]
    if value is None or isinstance(value, int | float):  # immutable (bool is an int)
        return value
    return copy.deepcopy(value)


def _resolve_text(text: str, reader: _Reader) -> str:
    if "${" not in text:
        return text
    try:
        find_secret_refs(text)
    except PydanticCustomError as exc:
        raise SecretError(_first_ref(text), exc.message()) from None

    def substitute(match: re.Match[str]) -> str:
        scheme, _, arg = match.group(1).partition(":")
        refused = reader.policy.refusal(scheme, arg)
        if refused is not None:
            raise SecretError(match.group(0), f"refused: {refused}")
        if scheme == "file":  # read what was checked, not a link swapped in since
            arg = reader.policy.allowed_file(arg) or arg
        secret = read_secret(
            scheme, arg, environ=reader.environ, credentials_dir=reader.credentials_dir
        )
        if reader.registry is not None:
            reader.registry.add(secret)
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
    return isinstance(key, str) and _is_secret_name(key)


@functools.lru_cache(maxsize=4096)  # log keys and input keys repeat on every line and call
def _is_secret_name(key: str) -> bool:
    return key.lower().replace("-", "").replace("_", "").replace(" ", "") in SECRET_KEYS


def redact(value: Any, secrets: tuple[str, ...], *, cut_ends: bool = False) -> Any:
    """Copy of `value` with secret values inside strings and under secret-named keys hidden.

    `secrets` is SecretRegistry.forms(): every encoding, longest first. With `cut_ends`
    (for errors from upstream, which are often truncated in the middle of what they
    echo), a form cut short (MIN_CUT_PREFIX characters or more) at the end of a string is
    hidden too; not elsewhere, where a job named like a secret's start would vanish.
    """
    if isinstance(value, str):
        return _redact_text(value, secrets, cut_ends)
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if is_secret_key(k) and v is not None
            else redact(v, secrets, cut_ends=cut_ends)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secrets, cut_ends=cut_ends) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v, secrets, cut_ends=cut_ends) for v in value)
    return value


def _redact_text(text: str, secrets: tuple[str, ...], cut_ends: bool) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for secret in secrets if cut_ends else ():
        if len(secret) > MIN_CUT_PREFIX:
            text = _hide_cut_end(text, secret)
    return text


def _hide_cut_end(text: str, secret: str) -> str:
    """`text` ending (but for a closing quote or an ellipsis) with a prefix of `secret`
    of at least MIN_CUT_PREFIX characters: that prefix replaced."""
    body = text.rstrip(_AFTER_CUT)
    start = body.find(secret[:MIN_CUT_PREFIX], max(0, len(body) - len(secret) + 1))
    while start != -1:
        if secret.startswith(body[start:]):
            return text[:start] + REDACTED + text[len(body) :]
        start = body.find(secret[:MIN_CUT_PREFIX], start + 1)
    return text


_NUMBERS = (int, float, bool)


def redact_processor(registry: SecretRegistry) -> Processor:
    """A structlog processor; put it after format_exc_info, just before the renderer."""

    def processor(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        secrets = registry.forms()
        for key, value in list(event_dict.items()):
            if value is None:
                continue
            if is_secret_key(key):
                event_dict[key] = REDACTED
            elif type(value) is str:  # most values: spare redact()'s type tests
                if secrets:
                    event_dict[key] = _redact_text(value, secrets, False)
            elif type(value) not in _NUMBERS:
                event_dict[key] = redact(value, secrets)
        return event_dict

    return processor
