"""Webhook senders over HTTP, each signed by that sender's own library (the oracle, not our code).

Every test drives `create_app(runtime)` through aiohttp's test client on a real workspace in
tmp_path. A refusal must store nothing: the data folder and the spool's journal are compared
before and after, and the spool's committed count must not move.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestClient
from slack_sdk.signature import SignatureVerifier
from standardwebhooks.webhooks import Webhook

from eventrunner.runtime import Runtime
from eventrunner.server.app import create_app
from eventrunner.server.hooks import SPOOL
from eventrunner.workspace import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard key for sender tests 32").decode()
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

STRIPE_SECRET = "whsec_test_s3nderSecretForTheStripeSource"
STRIPE_OLD_SECRET = "whsec_test_theStripeSecretBeingRolledAway"
SLACK_SECRET = "5b1e0c9d7a3f48e2b6c1d0e9f8a7b6c5"
SHOPIFY_SECRET = "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"
GITLAB_TOKEN = "gitlab secret token 7d2e"

# Environment variable -> secret; every source below names one of these.
SECRETS = {
    "ER_TEST_STANDARD_SECRET": STANDARD_SECRET,
    "ER_TEST_GITHUB_SECRET": GITHUB_SECRET,
    "ER_TEST_STRIPE_SECRET": STRIPE_SECRET,
    "ER_TEST_SLACK_SECRET": SLACK_SECRET,
    "ER_TEST_SHOPIFY_SECRET": SHOPIFY_SECRET,
    "ER_TEST_GITLAB_TOKEN": GITLAB_TOKEN,
}

# Source name -> its webhook table; each source stores deliveries at "<name>/{item}".
SOURCES = {
    "standard": '{ secret_env = "ER_TEST_STANDARD_SECRET", schemes = ["standard"] }',
    "github": '{ secret_env = "ER_TEST_GITHUB_SECRET", schemes = ["github"] }',
    "any": '{ secret_env = "ER_TEST_GITHUB_SECRET" }',
    "stripe": '{ secret_env = "ER_TEST_STRIPE_SECRET", schemes = ["stripe"] }',
    "slack": '{ secret_env = "ER_TEST_SLACK_SECRET", schemes = ["slack"] }',
    "shopify": '{ secret_env = "ER_TEST_SHOPIFY_SECRET", schemes = ["shopify"] }',
    "gitlab": '{ secret_env = "ER_TEST_GITLAB_TOKEN", schemes = ["gitlab"] }',
    "gitlab_too": '{ secret_env = "ER_TEST_GITLAB_TOKEN" }',
}


def pipeline_text() -> str:
    tables = [
        f'[sources.{name}]\npattern = "{name}/{{item}}"\nwebhook = {webhook}\n'
        for name, webhook in SOURCES.items()
    ]
    return 'name = "senders"\n\n' + "\n".join(tables)


def standard_headers(body: bytes, secret: str = STANDARD_SECRET) -> dict[str, str]:
    """Standard Webhooks headers made by the reference package."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(time.time()), tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode()),
    }


class Sender:
    """One sender as its own library signs: a body for an event, and the headers for a body.

    `delivery` is the id the sender gives one event, the same on every retry (in the body or
    in a header, wherever that sender puts it); `timestamp` is None for the sender's "now".
    """

    name: str  # the scheme, and the source that accepts only it
    secret: str
    required: tuple[str, ...]  # headers whose absence is refused
    timestamped: bool
    signs_body = True  # GitLab's token proves the sender, not the body

    def body(self, delivery: str) -> bytes:
        raise NotImplementedError

    def headers(
        self, body: bytes, delivery: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        raise NotImplementedError


class StripeSender(Sender):
    """Signed by `stripe.WebhookSignature.generate_signature_header`; the id is the event's."""

    name, secret, required, timestamped = "stripe", STRIPE_SECRET, ("Stripe-Signature",), True

    def body(self, delivery: str) -> bytes:
        event = {"id": delivery, "object": "event", "type": "invoice.paid", "data": {}}
        return json.dumps(event).encode()

    def headers(
        self, body: bytes, delivery: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        header = stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret or self.secret, timestamp=timestamp or int(time.time())
        )
        return {"Stripe-Signature": header, "Content-Type": "application/json"}


class SlackSender(Sender):
    """Signed by slack_sdk's `SignatureVerifier.generate_signature`; an Events API callback."""

    name, secret, timestamped = "slack", SLACK_SECRET, True
    required = ("X-Slack-Signature", "X-Slack-Request-Timestamp")

    def body(self, delivery: str) -> bytes:
        callback = {"type": "event_callback", "event_id": delivery, "event": {"type": "message"}}
        return json.dumps(callback).encode()

    def headers(
        self, body: bytes, delivery: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        stamp = str(timestamp or int(time.time()))
        verifier = SignatureVerifier(secret or self.secret)
        signature = verifier.generate_signature(timestamp=stamp, body=body)
        assert signature is not None
        return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}


def shopify_hmac(secret: str, body: bytes) -> str:
    """Shopify's documented procedure: base64 of the HMAC-SHA256 of the raw body.

    Shopify ships no signer; this one is pinned to go-shopify's published example below.
    """
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


class ShopifySender(Sender):
    """Signed by Shopify's documented HMAC procedure; the id is X-Shopify-Webhook-Id."""

    name, secret, required, timestamped = (
        "shopify",
        SHOPIFY_SECRET,
        ("X-Shopify-Hmac-Sha256",),
        False,
    )

    def body(self, delivery: str) -> bytes:
        return json.dumps({"id": 820982911946154508, "email": "jon@example.com"}).encode()

    def headers(
        self, body: bytes, delivery: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        return {
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": shopify_hmac(secret or self.secret, body),
            "X-Shopify-Shop-Domain": "example.myshopify.com",
            "X-Shopify-Webhook-Id": delivery,
            "X-Shopify-API-Version": "2025-01",
        }


class GitLabSender(Sender):
    """The delivery headers GitLab documents; the secret token travels as it is."""

    name, secret, required, timestamped = "gitlab", GITLAB_TOKEN, ("X-Gitlab-Token",), False
    signs_body = False

    def body(self, delivery: str) -> bytes:
        return json.dumps({"object_kind": "push", "ref": "refs/heads/main"}).encode()

    def headers(
        self, body: bytes, delivery: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        return {
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Instance": "https://gitlab.example.com",
            "X-Gitlab-Webhook-UUID": "02affd2d-2cba-4033-917d-ec22d5dc4b38",
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),  # GitLab: unique per (non-recursive) event
            "Idempotency-Key": delivery,  # GitLab: the same on every retry
            "X-Gitlab-Token": secret or self.secret,
        }


SENDERS: dict[str, Sender] = {
    s.name: s for s in (StripeSender(), SlackSender(), ShopifySender(), GitLabSender())
}


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Stored:
    """What the intake has kept: every file under the data root, the journal, commits."""

    files: dict[str, bytes]
    journal_bytes: int
    committed: float


@dataclass
class Server:
    """An in-process app on a runtime, with its workspace."""

    ws: Path
    client: TestClient[Any, Any]

    @property
    def data(self) -> Path:
        return self.ws / "data"

    async def post(
        self, source: str, body: bytes, headers: Mapping[str, str] | None = None, item: str = "x"
    ) -> aiohttp.ClientResponse:
        return await self.client.post(
            f"/hooks/senders/{source}", data=body, headers=headers, params={"item": item}
        )

    def stored(self) -> Stored:
        files = {
            str(p.relative_to(self.data)): p.read_bytes()
            for p in self.data.rglob("*")
            if p.is_file()
        }
        journals = (self.ws / ".eventrunner" / "spool").glob("journal-*.log")
        return Stored(
            files,
            sum(p.stat().st_size for p in journals),
            self.client.app[SPOOL].stats["committed"],
        )

    async def delivered(self, source: str, item: str, body: bytes) -> None:
        """Wait until an acknowledged delivery is at its path with its body."""
        path = self.data / source / item
        await eventually(lambda: path.is_file() and path.read_bytes() == body)

    async def refused(
        self, source: str, body: bytes, headers: Mapping[str, str], *, item: str = "refused"
    ) -> str:
        """Post, expect 401 in the error shape and nothing stored; return the message."""
        before = self.stored()
        resp = await self.post(source, body, headers, item)
        assert resp.status == 401, await resp.text()
        error = (await resp.json())["error"]
        assert error["code"] == "unauthorized" and error["message"]
        assert self.stored() == before
        message: str = error["message"]
        return message


@pytest.fixture
async def server(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Server]:
    for env, secret in SECRETS.items():
        monkeypatch.setenv(env, secret)
    ws = tmp_path / "ws"
    (ws / "pipelines").mkdir(parents=True)
    (ws / "pipelines" / "senders.toml").write_text(pipeline_text())
    (ws / "eventrunner.toml").write_text(textwrap.dedent('data_root = "data"\n'))
    (ws / "data").mkdir()
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        try:
            yield Server(ws, client)
        finally:
            await client.close()  # the spool drains before the runtime stops


# -- choosing the scheme -----------------------------------------------------------------------


async def test_headers_of_a_scheme_the_source_does_not_accept_are_refused(
    server: Server,
) -> None:
    # Given a source that accepts only GitHub, When Standard Webhooks headers arrive
    body = b'{"n": 1}'
    message = await server.refused("github", body, standard_headers(body))
    # Then the answer says which scheme was refused and which one is accepted
    assert "standard" in message and "accepts github" in message
    # And the source's own scheme is still taken
    resp = await server.post("github", b"Hello, World!", {"X-Hub-Signature-256": GITHUB_SIGNATURE})
    assert resp.status == 202, await resp.text()
    await server.delivered("github", "x", b"Hello, World!")


async def test_a_source_without_schemes_takes_any_scheme_whose_headers_are_present(
    server: Server,
) -> None:
    resp = await server.post("any", b"Hello, World!", {"X-Hub-Signature-256": GITHUB_SIGNATURE})
    assert resp.status == 202, await resp.text()
    await server.delivered("any", "x", b"Hello, World!")


async def test_headers_of_two_schemes_in_one_request_are_refused(server: Server) -> None:
    body = b"Hello, World!"
    headers = {**standard_headers(body), "X-Hub-Signature-256": GITHUB_SIGNATURE}
    message = await server.refused("any", body, headers)
    assert "several signature schemes" in message


# -- every sender: stored, refused, replayed --------------------------------------------------


def new_id(sender: Sender) -> str:
    return {"stripe": "evt_", "slack": "Ev"}.get(sender.name, "") + uuid.uuid4().hex


@pytest.mark.parametrize("sender", SENDERS.values(), ids=SENDERS)
async def test_a_delivery_signed_by_the_senders_library_is_stored(
    server: Server, sender: Sender
) -> None:
    delivery = new_id(sender)
    body = sender.body(delivery)
    resp = await server.post(sender.name, body, sender.headers(body, delivery), "ok")
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert (answer["entity"], answer["path"]) == ("ok", f"{sender.name}/ok")
    await server.delivered(sender.name, "ok", body)


def refusals(sender: Sender) -> list[str]:
    cases = (["tampered body"] if sender.signs_body else []) + ["wrong secret"]
    cases += [f"missing {h}" for h in sender.required]
    return cases + (["6 minutes old", "6 minutes ahead"] if sender.timestamped else [])


REFUSALS = [(s, case) for s in SENDERS.values() for case in refusals(s)]


@pytest.mark.parametrize(
    ("sender", "case"), REFUSALS, ids=[f"{s.name}-{case}" for s, case in REFUSALS]
)
async def test_a_refused_delivery_answers_401_and_stores_nothing(
    server: Server, sender: Sender, case: str
) -> None:
    delivery = new_id(sender)
    body = sender.body(delivery)
    headers = sender.headers(body, delivery)
    if case == "tampered body":
        body += b" "  # one byte more, still the same JSON or form: only the bytes are signed
    elif case == "wrong secret":
        headers = sender.headers(body, delivery, secret=sender.secret + "-not-ours")
    elif case.startswith("missing "):
        del headers[case.removeprefix("missing ")]
    else:
        skew = 360 if case.endswith("ahead") else -360
        headers = sender.headers(body, delivery, timestamp=int(time.time()) + skew)
    message = await server.refused(sender.name, body, headers)
    assert sender.secret not in message


@pytest.mark.parametrize("sender", SENDERS.values(), ids=SENDERS)
async def test_a_replayed_or_retried_delivery_answers_duplicate_and_stores_nothing(
    server: Server, sender: Sender
) -> None:
    # Given one delivery that was stored
    delivery = new_id(sender)
    body = sender.body(delivery)
    headers = sender.headers(body, delivery)
    assert (await server.post(sender.name, body, headers, "once")).status == 202
    await server.delivered(sender.name, "once", body)
    before = server.stored()
    # When the same request is replayed, and the sender retries it freshly signed a second later
    retried = sender.headers(body, delivery, timestamp=int(time.time()) + 1)
    for again in (headers, retried):
        resp = await server.post(sender.name, body, again, "twice")
        # Then both answer 200 duplicate, and nothing is stored for either
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"duplicate": True}
    assert server.stored() == before
    assert not (server.data / sender.name / "twice").exists()


@pytest.mark.parametrize("sender", SENDERS.values(), ids=SENDERS)
async def test_a_senders_headers_are_refused_by_a_source_that_accepts_another_scheme(
    server: Server, sender: Sender
) -> None:
    delivery = new_id(sender)
    body = sender.body(delivery)
    message = await server.refused("github", body, sender.headers(body, delivery))
    assert f"{sender.name} signature headers are not accepted" in message


# -- Stripe ------------------------------------------------------------------------------------


async def test_stripe_while_a_secret_is_rolled_both_signatures_and_both_secrets_are_taken(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = SENDERS["stripe"]
    # Given Stripe signing with the old and the new secret, one v1 entry each
    body = sender.body(new_id(sender))
    old = sender.headers(body, "", secret=STRIPE_OLD_SECRET)["Stripe-Signature"]
    new = sender.headers(body, "")["Stripe-Signature"]
    header = old + "," + new.partition(",")[2]
    # Then a server holding only the new secret takes it
    assert (await server.post("stripe", body, {"Stripe-Signature": header}, "both")).status == 202
    # And a server holding both secrets takes a delivery signed with either alone
    monkeypatch.setenv("ER_TEST_STRIPE_SECRET", f"{STRIPE_SECRET} {STRIPE_OLD_SECRET}")
    body = sender.body(new_id(sender))
    resp = await server.post("stripe", body, sender.headers(body, "", secret=STRIPE_OLD_SECRET))
    assert resp.status == 202, await resp.text()
    await server.delivered("stripe", "x", body)


# -- Slack -------------------------------------------------------------------------------------


async def test_slack_url_verification_is_answered_with_its_challenge_and_stores_nothing(
    server: Server,
) -> None:
    # Given the handshake Slack sends when the request URL is pasted into the app's settings
    body = json.dumps(
        {
            "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
            "challenge": "3eZbrw1aBm2rZgRNFdxV",
            "type": "url_verification",
        }
    ).encode()
    headers = SENDERS["slack"].headers(body, "")
    before = server.stored()
    # When it arrives signed (with or without the entity's query parameters)
    for resp in (
        await server.post("slack", body, headers),
        await server.client.post("/hooks/senders/slack", data=body, headers=headers),
    ):
        # Then it is answered with the challenge, and nothing is stored or remembered
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV"}
    assert server.stored() == before


async def test_slack_url_verification_with_a_bad_signature_is_refused(server: Server) -> None:
    body = b'{"type": "url_verification", "challenge": "never-echoed-unsigned"}'
    headers = SENDERS["slack"].headers(body, "", secret="not the signing secret")
    message = await server.refused("slack", body, headers)
    assert "X-Slack-Signature does not match" in message
    assert "never-echoed-unsigned" not in message


async def test_slack_a_replayed_slash_command_is_a_duplicate_and_a_new_one_is_stored(
    server: Server,
) -> None:
    # Given a slash command: a form post with no id of its own
    sender = SENDERS["slack"]
    body = b"command=%2Fdeploy&text=now&user_id=U2CERLKJA"
    headers = sender.headers(body, "")
    assert (await server.post("slack", body, headers, "cmd")).status == 202
    await server.delivered("slack", "cmd", body)
    # When the very same request is replayed inside the window, Then it is a duplicate
    resp = await server.post("slack", body, headers, "cmd")
    assert (resp.status, await resp.json()) == (200, {"duplicate": True})
    # While the same command typed again a second later (a new signature) is stored again
    again = sender.headers(body, "", timestamp=int(time.time()) + 1)
    assert (await server.post("slack", body, again, "cmd2")).status == 202
    await server.delivered("slack", "cmd2", body)


# -- Shopify -----------------------------------------------------------------------------------


def test_shopify_test_signer_reproduces_go_shopifys_published_example() -> None:
    # bold-commerce/go-shopify, oauth_test.go TestVerifyWebhookRequest: secret "hush", its
    # client's JSON-encoded body, the expected X-Shopify-Hmac-Sha256.
    assert shopify_hmac("hush", b'"my secret message"') == (
        "hMTq0K2x7oyOjoBwGYeTj5oxfnaVYXzbanUG9aajpKI="
    )


async def test_shopify_published_example_is_taken_over_http(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ER_TEST_SHOPIFY_SECRET", "hush")
    body = b'"my secret message"'
    headers = {"X-Shopify-Hmac-Sha256": "hMTq0K2x7oyOjoBwGYeTj5oxfnaVYXzbanUG9aajpKI="}
    assert (await server.post("shopify", body, headers, "vector")).status == 202
    await server.delivered("shopify", "vector", body)
    await server.refused("shopify", b'"my invalid message"', headers)


async def test_shopify_a_delivery_without_a_webhook_id_is_stored_each_time(server: Server) -> None:
    # Shopify always sends X-Shopify-Webhook-Id; without one there is nothing to de-duplicate by
    sender = SENDERS["shopify"]
    body = sender.body("")
    headers = {"X-Shopify-Hmac-Sha256": shopify_hmac(SHOPIFY_SECRET, body)}
    for item in ("first", "second"):
        assert (await server.post("shopify", body, headers, item)).status == 202
        await server.delivered("shopify", item, body)


# -- GitLab ------------------------------------------------------------------------------------


async def test_gitlab_a_wrong_token_is_refused_and_neither_token_is_echoed(server: Server) -> None:
    sender = SENDERS["gitlab"]
    body = sender.body("")
    for token in ("gitlab secret token 7d2", "a token of another project"):
        message = await server.refused("gitlab", body, sender.headers(body, "k", secret=token))
        assert token not in message and GITLAB_TOKEN not in message


async def test_gitlab_without_idempotency_key_the_event_uuid_de_duplicates(server: Server) -> None:
    # Given a GitLab older than 17.4: no Idempotency-Key, only X-Gitlab-Event-UUID
    sender = SENDERS["gitlab"]
    body = sender.body("")
    headers = sender.headers(body, "")
    del headers["Idempotency-Key"]
    assert (await server.post("gitlab", body, headers, "old")).status == 202
    await server.delivered("gitlab", "old", body)
    # When the same event arrives again, Then it is a duplicate
    resp = await server.post("gitlab", body, headers, "again")
    assert (resp.status, await resp.json()) == (200, {"duplicate": True})


async def test_gitlab_the_token_proves_the_sender_not_the_body(server: Server) -> None:
    # GitLab signs nothing: whoever holds the token (anyone who read one request) can send
    # any body, which is why the README asks for HTTPS in front of a GitLab source.
    sender = SENDERS["gitlab"]
    body = b'{"object_kind": "anything at all"}'
    assert (await server.post("gitlab", body, sender.headers(body, "any"), "any")).status == 202


async def test_one_event_delivered_to_two_sources_is_stored_by_both(server: Server) -> None:
    # Given GitLab sending one event, under one Idempotency-Key, to two sources' webhooks
    sender = SENDERS["gitlab"]
    body = sender.body("")
    headers = sender.headers(body, "one-event-two-hooks")
    # Then each source stores it once: delivery ids are scoped to their source
    for source in ("gitlab", "gitlab_too"):
        assert (await server.post(source, body, headers, "shared")).status == 202
        await server.delivered(source, "shared", body)
        resp = await server.post(source, body, headers, "shared")
        assert (resp.status, await resp.json()) == (200, {"duplicate": True})
