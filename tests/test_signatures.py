"""Webhook signature checks against the reference Standard Webhooks package and GitHub's vector."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from eventrunner.core.errors import SignatureError
from eventrunner.server.signatures import (
    sign_github,
    sign_standard_webhook,
    verify_github,
    verify_request,
    verify_standard_webhook,
)

SECRET = "whsec_" + base64.b64encode(b"a very secret key of 32 bytes!!!").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the key we rotated away from....").decode()
NOW = 1_764_000_000.0
BODY = b'{"type": "invoice.paid", "amount": 42}'

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_EXPECTED = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def reference_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    stamp = datetime.fromtimestamp(timestamp, tz=UTC)
    return Webhook(secret).sign(msg_id, stamp, body.decode())


def standard_headers(
    secret: str = SECRET, msg_id: str = "msg_1", timestamp: int = int(NOW), body: bytes = BODY
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": reference_signature(secret, msg_id, timestamp, body),
    }


def test_reference_signature_is_accepted_and_returns_the_message_id() -> None:
    assert verify_standard_webhook(SECRET, standard_headers(), BODY, now=NOW) == "msg_1"


def test_our_signature_matches_the_reference_package() -> None:
    ours = sign_standard_webhook(SECRET, "msg_1", int(NOW), BODY)
    assert ours == reference_signature(SECRET, "msg_1", int(NOW), BODY)


def test_secret_without_whsec_prefix_is_accepted() -> None:
    raw = SECRET.removeprefix("whsec_")
    assert verify_standard_webhook(raw, standard_headers(), BODY, now=NOW) == "msg_1"


def test_header_names_are_case_insensitive() -> None:
    headers = {k.title(): v for k, v in standard_headers().items()}
    assert verify_standard_webhook(SECRET, headers, BODY, now=NOW) == "msg_1"


def test_rotated_second_signature_in_the_header_is_accepted() -> None:
    headers = standard_headers(secret=OLD_SECRET)
    headers["webhook-signature"] += " " + reference_signature(SECRET, "msg_1", int(NOW), BODY)
    assert verify_standard_webhook(SECRET, headers, BODY, now=NOW) == "msg_1"


def test_non_v1_entries_are_ignored() -> None:
    headers = standard_headers()
    headers["webhook-signature"] = "v1a,AAAA " + headers["webhook-signature"]
    assert verify_standard_webhook(SECRET, headers, BODY, now=NOW) == "msg_1"


def test_tampered_body_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify_standard_webhook(SECRET, standard_headers(), BODY + b" ", now=NOW)


def test_wrong_secret_is_refused_without_leaking_secret_or_signature() -> None:
    headers = standard_headers(secret=OLD_SECRET)
    with pytest.raises(SignatureError) as caught:
        verify_standard_webhook(SECRET, headers, BODY, now=NOW)
    expected = sign_standard_webhook(SECRET, "msg_1", int(NOW), BODY)
    message = str(caught.value)
    assert SECRET.removeprefix("whsec_") not in message
    assert expected.removeprefix("v1,") not in message


@pytest.mark.parametrize("offset", [301, -301])
def test_timestamp_outside_tolerance_is_refused(offset: int) -> None:
    headers = standard_headers(timestamp=int(NOW) + offset)
    with pytest.raises(SignatureError, match="webhook-timestamp"):
        verify_standard_webhook(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize("offset", [299, -299])
def test_timestamp_inside_tolerance_is_accepted(offset: int) -> None:
    headers = standard_headers(timestamp=int(NOW) + offset)
    assert verify_standard_webhook(SECRET, headers, BODY, now=NOW) == "msg_1"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_refused(missing: str) -> None:
    headers = standard_headers()
    del headers[missing]
    with pytest.raises(SignatureError, match=missing):
        verify_standard_webhook(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("webhook-timestamp", "yesterday"),
        ("webhook-timestamp", "1764000000.5"),
        ("webhook-timestamp", "-1764000000"),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,not base64!"),
        ("webhook-signature", "v2,AAAA"),
        ("webhook-signature", ",,,"),
        ("webhook-id", "   "),
    ],
)
def test_malformed_header_values_are_refused(name: str, value: str) -> None:
    headers = standard_headers()
    headers[name] = value
    with pytest.raises(SignatureError):
        verify_standard_webhook(SECRET, headers, BODY, now=NOW)


def test_secret_that_is_not_base64_is_refused_without_echoing_it() -> None:
    with pytest.raises(SignatureError) as caught:
        verify_standard_webhook("whsec_%%secret%%", standard_headers(), BODY, now=NOW)
    assert "%%secret%%" not in str(caught.value)


def test_github_published_test_vector() -> None:
    assert sign_github(GITHUB_SECRET, GITHUB_BODY) == GITHUB_EXPECTED
    headers = {"X-Hub-Signature-256": GITHUB_EXPECTED, "X-GitHub-Delivery": "d-1"}
    assert verify_github(GITHUB_SECRET, headers, GITHUB_BODY) == "d-1"


def test_github_without_delivery_header_returns_none() -> None:
    headers = {"x-hub-signature-256": GITHUB_EXPECTED}
    assert verify_github(GITHUB_SECRET, headers, GITHUB_BODY) is None


def test_github_uppercase_hex_is_accepted() -> None:
    headers = {"X-Hub-Signature-256": "sha256=" + GITHUB_EXPECTED[7:].upper()}
    assert verify_github(GITHUB_SECRET, headers, GITHUB_BODY) is None


@pytest.mark.parametrize(
    ("body", "secret", "header"),
    [
        (b"Hello, World?", GITHUB_SECRET, GITHUB_EXPECTED),
        (GITHUB_BODY, "another secret", GITHUB_EXPECTED),
        (GITHUB_BODY, GITHUB_SECRET, GITHUB_EXPECTED.removeprefix("sha256=")),
        (GITHUB_BODY, GITHUB_SECRET, "sha1=" + GITHUB_EXPECTED[7:]),
        (GITHUB_BODY, GITHUB_SECRET, "sha256=zz"),
        (GITHUB_BODY, GITHUB_SECRET, "sha256=é"),
        (GITHUB_BODY, GITHUB_SECRET, ""),
    ],
)
def test_github_bad_signatures_are_refused(body: bytes, secret: str, header: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify_github(secret, {"X-Hub-Signature-256": header}, body)
    assert secret not in str(caught.value)
    assert GITHUB_EXPECTED[7:] not in str(caught.value)


def test_verify_request_picks_standard_webhooks_from_the_headers() -> None:
    assert verify_request([SECRET], standard_headers(), BODY, now=NOW) == "msg_1"


def test_verify_request_picks_github_from_the_headers() -> None:
    headers = {"X-Hub-Signature-256": GITHUB_EXPECTED, "X-GitHub-Delivery": "d-2"}
    assert verify_request([GITHUB_SECRET], headers, GITHUB_BODY) == "d-2"


def test_verify_request_without_signature_headers_is_refused() -> None:
    with pytest.raises(SignatureError, match="missing signature headers"):
        verify_request([SECRET], {"content-type": "application/json"}, BODY, now=NOW)


def test_verify_request_accepts_any_secret_of_a_rotation_list() -> None:
    # Given a source that lists the new secret first and the old one second
    secrets = [SECRET, OLD_SECRET]
    # When a sender still signs with the old one, Then it is accepted
    headers = standard_headers(secret=OLD_SECRET)
    assert verify_request(secrets, headers, BODY, now=NOW) == "msg_1"
    github = {"X-Hub-Signature-256": GITHUB_EXPECTED}
    assert verify_request(["new", GITHUB_SECRET], github, GITHUB_BODY) is None


def test_verify_request_refuses_when_no_secret_of_the_list_matches() -> None:
    headers = standard_headers(secret=OLD_SECRET)
    with pytest.raises(SignatureError):
        verify_request([SECRET], headers, BODY, now=NOW)
    with pytest.raises(SignatureError):
        verify_request([], headers, BODY, now=NOW)


def test_verify_request_standard_uses_real_clock_by_default() -> None:
    import time

    stamp = int(time.time())
    headers = standard_headers(timestamp=stamp)
    assert verify_request([SECRET], headers, BODY) == "msg_1"
    assert Webhook(SECRET).verify(BODY, headers, json_parse=False) is None
