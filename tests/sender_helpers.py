"""Webhook senders for the HTTP tests: each signs as its own library does, and a server.

Stripe signs through `stripe`, Slack through `slack_sdk`, Shopify by its documented HMAC
procedure (pinned to a published example in the tests), GitLab sends its documented headers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import stripe
from aiohttp import web
from aiohttp.test_utils import TestClient
from slack_sdk.signature import SignatureVerifier
from standardwebhooks.webhooks import Webhook

from eventrunner.server.app import create_app
from eventrunner.server.hooks import SPOOL
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

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


def new_id(sender: Sender) -> str:
    return {"stripe": "evt_", "slack": "Ev"}.get(sender.name, "") + uuid.uuid4().hex


def refusals(sender: Sender) -> list[str]:
    cases = (["tampered body"] if sender.signs_body else []) + ["wrong secret"]
    cases += [f"missing {h}" for h in sender.required]
    return cases + (["6 minutes old", "6 minutes ahead"] if sender.timestamped else [])


def refused_request(sender: Sender, case: str) -> tuple[bytes, dict[str, str]]:
    """A body and headers that `sender`'s source must refuse, for one case of `refusals`."""
    delivery = new_id(sender)
    body = sender.body(delivery)
    headers = sender.headers(body, delivery)
    if case == "tampered body":
        body += b" "  # one byte more, still the same JSON or form: only the bytes are signed
    elif case == "wrong secret":
        headers = sender.headers(body, delivery, secret=sender.secret[:-1])
    elif case.startswith("missing "):
        del headers[case.removeprefix("missing ")]
    else:
        skew = 360 if case.endswith("ahead") else -360
        headers = sender.headers(body, delivery, timestamp=int(time.time()) + skew)
    return body, headers


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, aiohttp_client: AiohttpClient) -> AsyncIterator[Server]:
    """A workspace with every source of SOURCES, served in process (secrets already set)."""
    ws = tmp_path / "ws"
    (ws / "pipelines").mkdir(parents=True)
    (ws / "pipelines" / "senders.toml").write_text(pipeline_text())
    (ws / "eventrunner.toml").write_text('data_root = "data"\n')
    (ws / "data").mkdir()
    async with Runtime(load_workspace(ws), watch=False) as rt:
        await rt.start()
        client = await aiohttp_client(create_app(rt))
        try:
            yield Server(ws, client)
        finally:
            await client.close()  # the spool drains before the runtime stops
