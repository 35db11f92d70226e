"""Webhook senders over HTTP, each signed by that sender's own library (the oracle, not our code).

Every test drives `create_app(runtime)` through aiohttp's test client on a real workspace in
tmp_path. A refusal must store nothing: the data folder and the spool's journal are compared
before and after, and the spool's committed count must not move.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sender_helpers import (
    GITHUB_SIGNATURE,
    GITLAB_TOKEN,
    SECRETS,
    SENDERS,
    SHOPIFY_SECRET,
    STRIPE_OLD_SECRET,
    STRIPE_SECRET,
    AiohttpClient,
    Sender,
    Server,
    new_id,
    refusals,
    refused_request,
    serving,
    shopify_hmac,
    standard_headers,
)


@pytest.fixture
async def server(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Server]:
    for env, secret in SECRETS.items():
        monkeypatch.setenv(env, secret)
    async with serving(tmp_path, aiohttp_client) as server:
        yield server


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


REFUSALS = [(s, case) for s in SENDERS.values() for case in refusals(s)]


@pytest.mark.parametrize(
    ("sender", "case"), REFUSALS, ids=[f"{s.name}-{case}" for s, case in REFUSALS]
)
async def test_a_refused_delivery_answers_401_and_stores_nothing(
    server: Server, sender: Sender, case: str
) -> None:
    body, headers = refused_request(sender, case)
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


# -- secrets -----------------------------------------------------------------------------------


async def test_no_senders_secret_reaches_logs_answers_or_state(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[bytes] = []
    # Given every sender delivering once well and once with each kind of refusal
    for sender in SENDERS.values():
        delivery = new_id(sender)
        body = sender.body(delivery)
        resp = await server.post(sender.name, body, sender.headers(body, delivery), "good")
        assert resp.status == 202
        answers.append(await resp.read())
        for case in refusals(sender):
            resp = await server.post(sender.name, *refused_request(sender, case))
            assert resp.status == 401
            answers.append(await resp.read())
        await server.delivered(sender.name, "good", body)
    await server.client.close()  # the spool's last checkpoint and dedup records are written
    # Then no secret, nor the base of one, appears in what was answered, logged or kept
    state = [p.read_bytes() for p in (server.ws / ".eventrunner").rglob("*") if p.is_file()]
    haystacks = [*answers, caplog.text.encode(), *state]
    for secret in (s.secret for s in SENDERS.values()):
        for form in {secret, secret[:-1], secret.removeprefix("whsec_")}:
            assert not any(form.encode() in hay for hay in haystacks), form
