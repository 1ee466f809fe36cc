"""The SDK-proxy wire format: payload encryption, request bodies, gzip and response parsing.

Everything that depends on how Ductape's `/proxy/v1/sdk-proxy/execute` encodes things lives
here so that a correction to the contract (see /work/shared/ductape-api.md) is one edit.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

EXECUTE_PATH = "/proxy/v1/sdk-proxy/execute"
ACCESS_TOKEN_HEADER = "x-access-token"
IDEMPOTENCY_HEADER = "Idempotency-Key"
GZIP_THRESHOLD = 200 * 1024  # bytes; bodies strictly larger are gzip-compressed
_IV_BYTES = 16
_BLOCK_BITS = 128
_BLOCK_BYTES = _BLOCK_BITS // 8


class WireError(ValueError):
    """A payload or body does not follow the wire format (bad envelope, bad JSON)."""


@dataclass(frozen=True)
class ProxySuccess:
    """`{"status": true, "data": {...}}`: the operation ran."""

    data: Any
    execution_time_ms: float | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class ProxyFailure:
    """Anything else: `{"status": false, ...}`, a non-2xx status or an unreadable body."""

    http_status: int
    code: str | None
    message: str


@dataclass(frozen=True)
class EncodedBody:
    """Request bytes plus the headers that describe them."""

    content: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _key(public_key: str) -> bytes:
    return hashlib.sha256(public_key.encode("utf-8")).digest()


@functools.lru_cache(maxsize=8)  # one workspace key per daemon: derive it once
def _aes(public_key: str) -> algorithms.AES:
    return algorithms.AES(_key(public_key))


def _json_default(value: Any) -> Any:
    # YAML and TOML job files can hold dates and times; Ductape receives them as ISO 8601.
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as JavaScript's JSON.stringify writes it."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return text.encode("utf-8")


def encrypt_payload(payload: dict[str, Any], public_key: str, iv: bytes | None = None) -> str:
    """Return "<hex iv>:<base64 AES-256-CBC(PKCS#7(JSON))>" keyed by sha256(public_key)."""
    iv = os.urandom(_IV_BYTES) if iv is None else iv
    if len(iv) != _IV_BYTES:
        raise WireError(f"IV must be {_IV_BYTES} bytes, got {len(iv)}")
    plain = dumps(payload)
    pad = _BLOCK_BYTES - len(plain) % _BLOCK_BYTES  # PKCS#7: 1..16 bytes, each = their count
    encryptor = Cipher(_aes(public_key), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(plain + bytes((pad,)) * pad) + encryptor.finalize()
    return f"{iv.hex()}:{binascii.b2a_base64(sealed, newline=False).decode('ascii')}"


def decrypt_payload(text: str, public_key: str) -> dict[str, Any]:
    """Invert encrypt_payload; a wrong key or a damaged envelope raises WireError."""
    iv_hex, sep, sealed_b64 = text.partition(":")
    try:
        iv = bytes.fromhex(iv_hex)
        sealed = base64.b64decode(sealed_b64, validate=True)
    except (ValueError, binascii.Error):
        raise WireError("encrypted payload is not '<hex iv>:<base64>'") from None
    if not sep or len(iv) != _IV_BYTES or not sealed or len(sealed) % 16:
        raise WireError("encrypted payload is not '<hex iv>:<base64>'")
    decryptor = Cipher(algorithms.AES(_key(public_key)), modes.CBC(iv)).decryptor()
    padded = decryptor.update(sealed) + decryptor.finalize()
    unpadder = padding.PKCS7(_BLOCK_BITS).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        payload = json.loads(plain.decode("utf-8"))
    except ValueError:  # bad padding, bad UTF-8 and bad JSON are all ValueErrors
        raise WireError("encrypted payload does not decrypt with this public key") from None
    if not isinstance(payload, dict):
        raise WireError("decrypted payload is not a JSON object")
    return payload


def build_payload(module: str, method: str, params: list[Any], user_id: str) -> dict[str, Any]:
    """The plaintext the proxy decrypts: which SDK method to call and with what."""
    return {"module": module, "method": method, "params": params, "user_id": user_id}


def build_request_body(
    payload: dict[str, Any],
    *,
    workspace_id: str,
    user_id: str,
    public_key: str,
    iv: bytes | None = None,
) -> dict[str, Any]:
    """The JSON object POSTed to the execute route."""
    return {
        "encrypted_payload": encrypt_payload(payload, public_key, iv),
        "workspace_id": workspace_id,
        "user_id": user_id,
        "public_key": public_key,
    }


def maybe_gzip(content: bytes) -> tuple[bytes, str | None]:
    """Compress bodies over GZIP_THRESHOLD; return the bytes and their Content-Encoding."""
    if len(content) > GZIP_THRESHOLD:
        return gzip.compress(content, compresslevel=6), "gzip"
    return content, None


def encode_body(body: dict[str, Any]) -> EncodedBody:
    """Serialise a request body, gzip it when large, and say so in the headers."""
    content, encoding = maybe_gzip(dumps(body))
    headers = {"Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    return EncodedBody(content, headers)


def decode_body(content: bytes, content_encoding: str | None) -> dict[str, Any]:
    """Server side of encode_body: gunzip when told to, then parse the JSON object."""
    try:
        if content_encoding and content_encoding.strip().lower() == "gzip":
            content = gzip.decompress(content)
        body = json.loads(content)
    except (OSError, EOFError, ValueError):
        raise WireError("request body is not (gzip-compressed) JSON") from None
    if not isinstance(body, dict):
        raise WireError("request body is not a JSON object")
    return body


def success_body(data: Any, *, execution_time_ms: float, request_id: str) -> dict[str, Any]:
    """What the proxy answers when the operation ran."""
    return {
        "status": True,
        "data": {"data": data, "execution_time_ms": execution_time_ms, "request_id": request_id},
    }


def failure_body(code: str, message: str) -> dict[str, Any]:
    """What the proxy answers when it refused or the operation failed."""
    return {"status": False, "message": message, "code": code}


def parse_response(http_status: int, content: bytes) -> ProxySuccess | ProxyFailure:
    """Read a proxy answer; `status: false` is a failure even with HTTP 200."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return ProxyFailure(http_status, None, _describe_unreadable(http_status, content))
    if body.get("status") is True and 200 <= http_status < 300:
        return _success(body.get("data"))
    code = body.get("code")
    message = body.get("message") or body.get("error") or f"HTTP {http_status}"
    return ProxyFailure(http_status, str(code) if code is not None else None, str(message))


def _success(data: Any) -> ProxySuccess:
    if not isinstance(data, dict):
        return ProxySuccess(data)
    elapsed = data.get("execution_time_ms")
    request_id = data.get("request_id")
    return ProxySuccess(
        data.get("data"),
        float(elapsed) if isinstance(elapsed, int | float) else None,
        str(request_id) if request_id is not None else None,
    )


# Generous: the body may echo a secret, and only the executor knows the secrets; it
# redacts, then cuts to its own bound (issue 13 item 10: a cut here left a prefix).
SNIPPET_BYTES = 4096


def _describe_unreadable(http_status: int, content: bytes) -> str:
    snippet = content[:SNIPPET_BYTES].decode("utf-8", errors="replace").strip()
    return f"HTTP {http_status} with a non-JSON body" + (f": {snippet!r}" if snippet else "")
