"""POST /hooks/{pipeline}/{source}: signed, size-limited, durable, idempotent webhook intake.

Order matters: size limit before buffering, signature on the raw body before anything else,
then the entity, then the durable write; 202 only once the body is on disk. Handlers never run
inside the request: the stored file is an event like any file drop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from eventrunner.core.errors import (
    PatternError,
    SignatureError,
    StorageError,
    UnknownName,
    http_status_for,
)
from eventrunner.core.graph import Source
from eventrunner.core.patterns import entity_id
from eventrunner.core.redact import SECRETS
from eventrunner.run.events import Webhook
from eventrunner.server.keys import METRICS, RUNTIME, SPOOL
from eventrunner.server.signatures import Verified, check_request
from eventrunner.server.spool import Spool, SpoolRecord
from eventrunner.service.watch import ChangeKind, FileChange
from eventrunner.state.contain import DataRoot
from eventrunner.state.hashing import hash_bytes

if TYPE_CHECKING:
    from eventrunner.service.runtime import Runtime


def _find_source(rt: Runtime, pipeline: str, name: str) -> Source:
    for src in rt.ws.graph.sources.values():
        if src.pipeline == pipeline and src.name == name and src.webhook is not None:
            return src
    raise UnknownName(f"no webhook source {name!r} in pipeline {pipeline!r}")


def _secrets(env_name: str) -> list[str]:
    """Secrets from the environment; several `whsec_` secrets separated by spaces while rotating.

    Standard Webhooks and Stripe secrets (whsec_...) hold no spaces, so a list of them is a
    rotation. Any other value is one secret, spaces included: GitHub and GitLab secrets are free
    text (GitHub's own test secret is "It's a Secret to Everybody"), and splitting one would
    accept its fragments.
    """
    value = os.environ.get(env_name, "").strip()
    parts = value.split()
    found = parts if len(parts) > 1 and all(p.startswith("whsec_") for p in parts) else [value]
    found = [secret for secret in found if secret]
    SECRETS.add_all([*found, *(s.removeprefix("whsec_") for s in found), value])
    return found


# Ids of these schemes stay bare, as before per-source keys: the spool's dedup records from
# earlier versions keep matching. Every newer scheme's ids are scoped to their source.
_BARE_IDS = frozenset({"standard", "github"})


def _dedup_key(verified: Verified, pipeline: str, source: str) -> str | None:
    """The spool's de-duplication key for a verified delivery (None: no id, no de-duplication).

    A sender delivers one event to each endpoint under the same id (Stripe's event id,
    GitLab's Idempotency-Key), so a key is the source's as well as the sender's: the same
    event sent to two sources is stored by both.
    """
    if verified.message_id is None or verified.scheme in _BARE_IDS:
        return verified.message_id
    return f"{pipeline}/{source}:{verified.scheme}:{verified.message_id}"


async def _read_limited(request: web.Request, limit: int, timeout: float) -> bytes:
    """The body, refused over `limit` bytes (413) or when it takes over `timeout` s (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    # StreamReader.read(n) returns what is buffered (one TCP read), not n bytes: loop to EOF.
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):  # a body trickled byte by byte (issue 14.4)
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                chunks.append(chunk)
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="request body took too long") from None
    return b"".join(chunks)


CONTAINMENT: web.AppKey[DataRoot] = web.AppKey("containment")


async def hook(request: web.Request) -> web.Response:
    """Webhook intake; counts every answer by status in /metrics."""
    rt = request.app[RUNTIME]
    pipeline, source = request.match_info["pipeline"], request.match_info["source"]
    status = 500
    try:
        resp = await _intake(request, rt, pipeline, source)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    except ConnectionError:
        status = 499  # the sender went away mid-body (nginx's "client closed request")
        raise
    except (SignatureError, UnknownName, PatternError, StorageError) as exc:
        status = http_status_for(exc)
        raise
    except Exception:
        status = 503
        raise
    finally:
        known = any(
            s.pipeline == pipeline and s.name == source for s in rt.ws.graph.sources.values()
        )
        labels = (pipeline, source) if known else ("unknown", "unknown")  # bounded label values
        request.app[METRICS].webhooks.labels(*labels, str(status)).inc()


async def _intake(request: web.Request, rt: Runtime, pipeline: str, source: str) -> web.Response:
    src = _find_source(rt, pipeline, source)
    spec = src.webhook
    limit = spec.max_body or rt.settings.server.body_limit
    body = await _read_limited(request, limit, rt.settings.server.body_timeout)
    message_id: str | None = None
    if spec.secret_env:
        secrets = _secrets(spec.secret_env)
        if not secrets:
            # Misconfiguration on our side: the sender should keep the delivery and retry.
            raise StorageError(
                f"webhook secret {spec.secret_env} is not set in the server's environment"
            )
        verified = check_request(secrets, request.headers, body, accepted=spec.schemes)
        if verified.challenge is not None:
            # A signed handshake (Slack's URL verification): answered, never stored.
            return web.json_response({"challenge": verified.challenge}, status=200)
        message_id = _dedup_key(verified, pipeline, source)
    else:
        message_id = request.headers.get("webhook-id") or request.headers.get("X-GitHub-Delivery")
    pattern = src.pattern
    missing = [v for v in pattern.variables if v not in request.query]
    if missing:
        raise PatternError(f"missing query parameter(s) for the entity: {', '.join(missing)}")
    values = {v: request.query[v] for v in pattern.variables}
    relpath = pattern.format(values)
    # Refused here with a 400 before anything is stored; the spool's write checks again, in
    # the same operation as the write itself (a folder swapped for a symlink meanwhile).
    request.app[CONTAINMENT].check(relpath)
    eid = entity_id(pattern.variables, values)
    record = SpoolRecord(
        relpath=relpath,
        body=body,
        message_id=message_id,
        meta={"pipeline": pipeline, "source": source, "entity": eid},
    )
    result = await request.app[SPOOL].put(record)
    if result.duplicate:
        return web.json_response({"duplicate": True}, status=200)
    return web.json_response(
        {"entity": eid, "path": relpath, "event_id": result.event_id}, status=202
    )


def intake_degraded(app: web.Application) -> dict[str, Any] | None:
    """What health reports while acknowledged webhooks are not in their files yet (disk full,
    read-only folder: the spool retries them); None when intake is healthy."""
    spool = app.get(SPOOL)
    if spool is None or not spool.unwritten:
        return None
    return {"unwritten_webhooks": spool.unwritten, "reason": spool.last_error}


def _known_source(runtime: Runtime, relpath: str) -> bool:
    """True when the index already has this source file: a delivery then modifies it, else it
    creates it (the `changed` event says "added"). The index, not a stat: the file is on disk
    by now, and the index knows every source file from the start-up scan and the events since."""
    index = runtime.index
    assert index is not None
    for key, src in runtime.ws.graph.sources.items():
        values = src.pattern.match(relpath)
        if values is not None:
            return entity_id(src.pattern.variables, values) in index.instances[key].items
    return False


def setup_hooks(app: web.Application, runtime: Runtime) -> None:
    """Route and spool lifecycle (opened with the app, drained and closed with it)."""
    app.router.add_post("/hooks/{pipeline}/{source}", hook)
    settings = runtime.settings
    for src in runtime.ws.graph.sources.values():
        if src.webhook is not None and src.webhook.secret_env:
            _secrets(src.webhook.secret_env)  # known to the log filter from the start
    app[CONTAINMENT] = DataRoot(settings.data_root, runtime.ws.reserved)

    def materialised(record: SpoolRecord, event_id: str) -> None:
        if runtime.engine is not None and runtime.index is not None:
            kind: ChangeKind = "modified" if _known_source(runtime, record.relpath) else "added"
            # We wrote this content: record its hash so that planning it costs one stat, not
            # a read and hash of the file on the event loop (as the engine does for outputs).
            runtime.index.file_written(record.relpath, hash_bytes(record.body))
            runtime.events.emit(Webhook.of(record.relpath, event_id, record.meta))
            runtime.on_change(FileChange(kind, record.relpath))

    async def spool_ctx(app: web.Application) -> AsyncIterator[None]:
        spool = Spool(
            settings.state_dir / "spool",
            settings.data_root,
            fsync=settings.server.intake_fsync,
            max_pending=settings.server.intake_max_pending,
            on_materialised=materialised,
            reserved=runtime.ws.reserved,
        )
        async with spool:
            app[SPOOL] = spool
            yield

    app.cleanup_ctx.append(spool_ctx)
