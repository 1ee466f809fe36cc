"""The SDK-proxy wire format: envelope, body encoding and response parsing."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime

import pytest

from runner.ductape import wire

PUBLIC_KEY = "demo-public-key"
IV = bytes(range(16))
PAYLOAD = {
    "module": "actions",
    "method": "run",
    "params": [
        {
            "product": "shop",
            "env": "prd",
            "app": "mailer",
            "action": "send",
            "input": {"to": "ops@example.com"},
        }
    ],
    "user_id": "demo-user",
}
# Made independently with OpenSSL (the same primitive Node's crypto uses):
#   KEY=$(printf %s demo-public-key | openssl dgst -sha256 -hex | awk '{print $2}')
#   printf %s "$(compact JSON of PAYLOAD)" \
#     | openssl enc -aes-256-cbc -K $KEY -iv 000102030405060708090a0b0c0d0e0f -base64 -A
KNOWN_CIPHERTEXT = (
    "H04YcPXIFX8yrPHnFzzozp+bPX6ZqGS8w7D1Nh5544bGTu2A3O6F4oowQ7MlCoU2CuNXqmYQECjD8lnqL/qcmY+8"
    "AxXFzjms/OMgqQtvSJJ+uxeaV0/7s9oYcAAuFHR3KRL/4iUs9IoNLPeFhZ2VFy8dsH/MiBSqVXhWUyBJ4VI0Akfk"
    "bXU1kNqA/CRwMp6HSYZdE+Bdj+du9WRm18soouxWDAkjdFj65Yl9f7mnCwA="
)
KNOWN_ENVELOPE = f"{IV.hex()}:{KNOWN_CIPHERTEXT}"


def test_it_round_trips_a_payload_with_a_random_iv() -> None:
    first = wire.encrypt_payload(PAYLOAD, PUBLIC_KEY)
    second = wire.encrypt_payload(PAYLOAD, PUBLIC_KEY)
    assert first != second  # a fresh IV each time
    assert wire.decrypt_payload(first, PUBLIC_KEY) == PAYLOAD
    assert wire.decrypt_payload(second, PUBLIC_KEY) == PAYLOAD


def test_it_decrypts_a_known_openssl_vector() -> None:
    assert wire.decrypt_payload(KNOWN_ENVELOPE, PUBLIC_KEY) == PAYLOAD


def test_it_encrypts_to_the_known_vector_with_a_fixed_iv() -> None:
    assert wire.encrypt_payload(PAYLOAD, PUBLIC_KEY, iv=IV) == KNOWN_ENVELOPE


def test_the_envelope_is_lowercase_hex_iv_colon_base64() -> None:
    iv_hex, _, sealed = wire.encrypt_payload(PAYLOAD, PUBLIC_KEY).partition(":")
    assert len(iv_hex) == 32
    assert iv_hex == iv_hex.lower()
    assert len(sealed) % 4 == 0


@pytest.mark.parametrize(
    "envelope",
    [
        "",
        "no-colon",
        "zz:AAAA",
        f"{IV.hex()}:not base64!",
        f"{IV.hex()[:-2]}:{KNOWN_CIPHERTEXT}",
        f"{IV.hex()}:AAAA",
    ],
)
def test_it_rejects_a_damaged_envelope(envelope: str) -> None:
    with pytest.raises(wire.WireError):
        wire.decrypt_payload(envelope, PUBLIC_KEY)


def test_a_wrong_public_key_does_not_decrypt() -> None:
    with pytest.raises(wire.WireError, match="does not decrypt"):
        wire.decrypt_payload(KNOWN_ENVELOPE, "another-key")


def test_it_rejects_an_iv_of_the_wrong_size() -> None:
    with pytest.raises(wire.WireError, match="16 bytes"):
        wire.encrypt_payload(PAYLOAD, PUBLIC_KEY, iv=b"short")


def test_dates_from_yaml_and_toml_travel_as_iso_8601() -> None:
    payload = {"at": datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "day": date(2026, 3, 29)}
    text = wire.dumps(payload).decode()
    assert json.loads(text) == {"at": "2026-03-29T01:30:00+00:00", "day": "2026-03-29"}


def test_the_request_body_carries_identity_beside_the_envelope() -> None:
    body = wire.build_request_body(
        PAYLOAD, workspace_id="ws", user_id="demo-user", public_key=PUBLIC_KEY, iv=IV
    )
    assert body == {
        "encrypted_payload": KNOWN_ENVELOPE,
        "workspace_id": "ws",
        "user_id": "demo-user",
        "public_key": PUBLIC_KEY,
    }


@pytest.mark.parametrize(
    ("size", "compressed"),
    [
        (0, False),
        (wire.GZIP_THRESHOLD - 1, False),
        (wire.GZIP_THRESHOLD, False),  # "over 200 KiB": exactly 200 KiB stays plain
        (wire.GZIP_THRESHOLD + 1, True),
        (4 * wire.GZIP_THRESHOLD, True),
    ],
)
def test_bodies_over_200_kib_are_gzipped(size: int, compressed: bool) -> None:
    content = b"x" * size
    sent, encoding = wire.maybe_gzip(content)
    assert (encoding == "gzip") is compressed
    assert (gzip.decompress(sent) if compressed else sent) == content


def test_encode_body_says_gzip_in_the_headers_and_decode_body_inverts_it() -> None:
    big = {"blob": "y" * (wire.GZIP_THRESHOLD + 10)}
    encoded = wire.encode_body(big)
    assert encoded.headers == {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    assert len(encoded.content) < wire.GZIP_THRESHOLD
    assert wire.decode_body(encoded.content, "gzip") == big
    small = wire.encode_body({"a": 1})
    assert small.headers == {"Content-Type": "application/json"}
    assert wire.decode_body(small.content, None) == {"a": 1}


@pytest.mark.parametrize("content", [b"", b"[1]", b"{nope", b"\x1f\x8b broken"])
def test_decode_body_rejects_what_is_not_a_json_object(content: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_body(content, "gzip" if content.startswith(b"\x1f") else None)


def test_a_success_response_yields_the_operation_result() -> None:
    body = wire.success_body({"ok": True}, execution_time_ms=12, request_id="r-1")
    parsed = wire.parse_response(200, wire.dumps(body))
    assert parsed == wire.ProxySuccess({"ok": True}, 12.0, "r-1")


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (
            200,
            b'{"status": false, "message": "slow down", "code": "RATE_LIMITED"}',
            wire.ProxyFailure(200, "RATE_LIMITED", "slow down"),
        ),
        (
            401,
            b'{"status": false, "message": "bad token", "code": "UNAUTHORIZED"}',
            wire.ProxyFailure(401, "UNAUTHORIZED", "bad token"),
        ),
        (
            502,
            b"<html>Bad Gateway</html>",
            wire.ProxyFailure(
                502, None, "HTTP 502 with a non-JSON body: '<html>Bad Gateway</html>'"
            ),
        ),
        (503, b"", wire.ProxyFailure(503, None, "HTTP 503 with a non-JSON body")),
        (500, b'{"status": true, "data": {}}', wire.ProxyFailure(500, None, "HTTP 500")),
    ],
)
def test_a_failure_is_a_failure_whatever_the_http_status(
    status: int, content: bytes, expected: wire.ProxyFailure
) -> None:
    assert wire.parse_response(status, content) == expected
