"""The dashboard through aiohttp's test client on a real runtime: every page, its assets, the
escaping of outside names, CSRF and origin checks, sign-in, keyset pages, bulk actions by
filter, the coalesced live stream and the execution history behind the activity page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from dashboard_helpers import HOSTILE, Page, dashboard_workspace, entity_links

from eventrunner.server.app import create_app
from eventrunner.server.dashboard.security import COOKIE, CSP
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
TOKEN_ENV = "ER_TEST_DASH_TOKEN"
TOKEN = "dash-token-5b2e91c0"
PAGES = [
    "/",
    "/graph",
    "/stages/p.upper",
    "/stages/p.upper?state=fresh",
    "/stages/p.upper?reason=MISSING",
    "/stages/p.count?id=e00*",
    "/entities/e000",
    "/entities/flaky?stage=p.upper",
    "/failures",
    "/events",
    "/activity",
    "/activity?stage=p.upper&outcome=failed",
    "/actions/preview?action=retry&stage=p.upper&state=failed",
    "/actions/preview?action=rerun_down&stage=p.upper&entity=e000",
]


@dataclass
class Dash:
    """A started runtime, its app behind a test client, and the workspace."""

    ws: Path
    rt: Runtime
    client: TestClient[Any, Any]

    @property
    def origin(self) -> str:
        return f"http://{self.client.host}:{self.client.port}"

    async def html(self, path: str, status: int = 200, **headers: str) -> str:
        resp = await self.client.get(path, headers=headers, allow_redirects=False)
        text = await resp.text()
        assert resp.status == status, (path, resp.status, text[:500])
        return text

    async def csrf(self, path: str = "/") -> str:
        token = Page(await self.html(path)).hidden("csrf")
        if token is None:  # pages without a form: the preview page always has one
            token = Page(await self.html("/actions/preview?action=retry&stage=p.upper")).hidden(
                "csrf"
            )
        assert token
        return token

    async def post(self, path: str, data: dict[str, str], status: int, **headers: str) -> str:
        headers = {"Origin": self.origin, **headers}
        resp = await self.client.post(path, data=data, headers=headers, allow_redirects=False)
        text = await resp.text()
        assert resp.status == status, (path, resp.status, text[:500])
        return text

    async def idle(self) -> None:
        assert self.rt.engine is not None
        await self.rt.engine.wait_idle()


async def _dash(root: Path, aiohttp_client: AiohttpClient) -> AsyncIterator[Dash]:
    async with Runtime(load_workspace(root), watch=False) as rt:
        client = await aiohttp_client(create_app(rt))  # as serve does: the app, then start
        await rt.start()
        try:
            dash = Dash(root, rt, client)
            await dash.idle()
            yield dash
        finally:
            await client.close()


@pytest.fixture
async def dash(tmp_path: Path, aiohttp_client: AiohttpClient) -> AsyncIterator[Dash]:
    async for d in _dash(dashboard_workspace(tmp_path / "ws"), aiohttp_client):
        yield d


@pytest.fixture
async def guarded(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Dash]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    root = dashboard_workspace(tmp_path / "ws")
    toml = root / "eventrunner.toml"
    toml.write_text(f'[server]\ntoken_env = "{TOKEN_ENV}"\n\n' + toml.read_text())
    async for d in _dash(root, aiohttp_client):
        yield d


# -- pages, assets, CSP ---------------------------------------------------------------------------


async def test_every_page_answers_html_under_a_strict_csp_with_no_inline_code(dash: Dash) -> None:
    for path in PAGES:
        resp = await dash.client.get(path)
        html = await resp.text()
        assert resp.status == 200, (path, html[:300])
        assert resp.content_type == "text/html"
        assert resp.headers["Content-Security-Policy"] == CSP
        assert "default-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert resp.headers["X-Frame-Options"] == "DENY"
        page = Page(html)
        assert page.inline_scripts == [], path  # no inline <script> or <style>
        names = page.attr_names()
        assert "style" not in names, path
        assert not [n for n in names if n.startswith("on") or n.startswith("hx-on")], path


async def test_pages_load_only_same_origin_assets_that_exist(dash: Dash) -> None:
    assets: set[str] = set()
    for path in PAGES:
        for url in Page(await dash.html(path)).urls():
            assert url.startswith(("/", "#")) and not url.startswith("//"), (path, url)
            if url.startswith("/static/"):
                assets.add(url)
    assert {a.split("?")[0] for a in assets} >= {
        "/static/htmx.min.js",
        "/static/live.js",
        "/static/dashboard.css",
        "/static/favicon.svg",
    }
    for url in assets:
        resp = await dash.client.get(url)
        assert resp.status == 200, url
        assert "immutable" in resp.headers["Cache-Control"]
    htmx = await (await dash.client.get("/static/htmx.min.js")).text()
    assert htmx.startswith("/*! htmx 2.0.11") and "0BSD" in htmx.splitlines()[2]
    assert (await dash.client.get("/static/..%2Fapp.py")).status == 404


async def test_an_unknown_stage_or_entity_answers_an_html_404(dash: Dash) -> None:
    for path in ("/stages/p.nope", "/entities/nobody", "/stages/p.upper?state=bogus"):
        resp = await dash.client.get(path)
        assert resp.status in (404, 400), path
        assert resp.content_type == "text/html"


async def test_an_entity_id_with_markup_and_quotes_is_escaped_on_every_page(dash: Dash) -> None:
    # Given an entity whose id holds <script> and both quote characters, and which failed
    escaped = "&lt;script&gt;alert(&#34;x&#39;y&#34;)&lt;"
    pages = [
        "/",
        "/stages/p.upper",
        "/stages/p.upper?state=failed",
        f"/entities/{quote(HOSTILE, safe='')}",
        "/failures",
        "/events",
        "/activity",
        f"/actions/preview?action=retry&stage=p.upper&id={quote(HOSTILE[:8])}",
    ]
    for path in pages:
        html = await dash.html(path)
        # Then it shows up escaped, never as markup
        assert "<script>alert" not in html, path
        assert escaped in html, path
    assert HOSTILE in entity_links(await dash.html("/stages/p.upper"))


# -- CSRF, origin, host ---------------------------------------------------------------------------


async def test_a_dashboard_post_needs_the_sessions_csrf_token(dash: Dash) -> None:
    form = {"stage": "p.upper", "entity": "flaky"}
    await dash.post("/actions/retry", form, 403)
    await dash.post("/actions/retry", {**form, "csrf": "0" * 64}, 403)
    assert dash.rt.index is not None and "flaky" in dash.rt.index.failures["p.upper"]
    csrf = await dash.csrf()
    await dash.post("/actions/retry", {**form, "csrf": csrf, "next": "/entities/flaky"}, 303)
    await dash.idle()
    assert dash.rt.index.failures["p.upper"]["flaky"].attempts == 1  # cleared, then failed anew


async def test_a_post_from_another_origin_is_refused_on_the_dashboard_and_the_api(
    dash: Dash,
) -> None:
    csrf = await dash.csrf()
    form = {"stage": "p.upper", "state": "failed", "csrf": csrf}
    evil = {"Origin": "http://evil.example"}
    assert "cross-site" in await dash.post("/actions/retry", form, 403, **evil)
    resp = await dash.client.post(
        "/api/pipelines/_/retry",
        data=json.dumps({}),
        headers={**evil, "Content-Type": "text/plain"},
    )
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
    # No Origin and no Referer: a dashboard form cannot be told apart from a forgery.
    resp = await dash.client.post("/actions/retry", data=form, allow_redirects=False)
    assert resp.status == 403
    assert dash.rt.index is not None and dash.rt.index.failures["p.upper"]


async def test_without_a_token_only_loopback_host_names_are_served(dash: Dash) -> None:
    # A rebound DNS name pointing at 127.0.0.1 must not make another site same-origin.
    await dash.html("/", 403, Host="attacker.example:8700")
    await dash.html("/", 200, Host="localhost:8700")


# -- sign-in ----------------------------------------------------------------------------------------


async def test_with_a_token_a_page_sends_the_browser_to_the_login_form(guarded: Dash) -> None:
    resp = await guarded.client.get("/stages/p.upper?state=failed", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?next=%2Fstages%2Fp.upper%3Fstate%3Dfailed"
    login = await guarded.html("/login")
    page = Page(login)
    forms = [attrs for tag, attrs in page.tags if tag == "form"]
    assert forms and all(f.get("method") == "post" for f in forms)  # the token goes in a body
    assert (await guarded.client.get("/live?view=overview")).status == 401
    assert (await guarded.client.get("/static/live.js")).status == 200


async def test_login_exchanges_the_token_for_an_httponly_strict_signed_cookie(
    guarded: Dash,
) -> None:
    csrf = Page(await guarded.html("/login")).hidden("csrf")
    assert csrf
    form = {"token": TOKEN, "csrf": csrf, "next": "/failures"}
    resp = await guarded.client.post(
        "/login", data=form, headers={"Origin": guarded.origin}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/failures"
    assert TOKEN not in resp.headers["Location"]
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie
    # Signed in: pages, the stream and API reads work with the cookie alone...
    for path in PAGES:
        html = await guarded.html(path)
        assert TOKEN not in html
    async with guarded.client.get("/api/events") as stream:
        assert stream.status == 200
    assert (await guarded.client.get("/api/history")).status == 200
    # ...but the cookie never authorises a POST to the JSON API: that needs the Bearer token.
    resp = await guarded.client.post(
        "/api/pipelines/_/retry", data="{}", headers={"Origin": guarded.origin}
    )
    assert resp.status == 401


async def test_a_wrong_token_or_a_forged_cookie_signs_nobody_in(guarded: Dash) -> None:
    csrf = Page(await guarded.html("/login")).hidden("csrf")
    assert csrf
    body = await guarded.post("/login", {"token": "guess", "csrf": csrf}, 401)
    assert "not the server" in body
    # A cookie claiming to be signed in, with a made-up signature, is ignored.
    import base64

    payload = base64.urlsafe_b64encode(
        json.dumps({"sid": "x", "auth": True, "exp": time.time() + 99}).encode()
    ).decode()
    guarded.client.session.cookie_jar.update_cookies({COOKIE: f"{payload}.{'0' * 64}"})
    resp = await guarded.client.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")


async def test_changing_the_token_signs_every_session_out(
    guarded: Dash, monkeypatch: pytest.MonkeyPatch
) -> None:
    csrf = Page(await guarded.html("/login")).hidden("csrf")
    assert csrf
    await guarded.post("/login", {"token": TOKEN, "csrf": csrf}, 303)
    await guarded.html("/", 200)
    monkeypatch.setenv(TOKEN_ENV, "a-new-token-after-rotation")
    await guarded.html("/", 303)


# -- listings, actions ------------------------------------------------------------------------------


async def test_a_stage_lists_its_entities_in_keyset_pages_of_fifty(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    async for dash in _dash(dashboard_workspace(tmp_path / "ws", n=120), aiohttp_client):
        frag = {"HX-Request": "true", "HX-Target": "entities"}
        every = sorted([HOSTILE, "flaky", "gone", *(f"e{i:03d}" for i in range(120))])
        first = await dash.html("/stages/p.count", **frag)
        ids = entity_links(first)
        assert ids == every[:50]  # ordered by id ("<" sorts before letters)
        assert "<h1>" not in first  # an htmx request for the listing gets only the listing
        after = quote(ids[-1])
        second = entity_links(await dash.html(f"/stages/p.count?after={after}", **frag))
        assert second == every[50:100]
        before = quote(second[0])
        back = entity_links(await dash.html(f"/stages/p.count?before={before}", **frag))
        assert back == ids
        glob = entity_links(await dash.html("/stages/p.count?id=e1?5", **frag))
        assert glob == ["e105", "e115"]
        prefix = entity_links(await dash.html("/stages/p.count?id=e11", **frag))
        assert prefix == [f"e11{i}" for i in range(10)]
        failed = entity_links(await dash.html("/stages/p.upper?state=failed", **frag))
        assert sorted(failed) == sorted(["flaky", HOSTILE])
        waiting = entity_links(await dash.html("/stages/p.count?reason=UPSTREAM_NOT_FRESH", **frag))
        assert sorted(waiting) == sorted(["flaky", "gone", HOSTILE])


async def test_a_bulk_retry_is_previewed_then_run_by_filter_on_the_server(dash: Dash) -> None:
    assert dash.rt.index is not None
    html = await dash.html("/actions/preview?action=retry&stage=p.upper&state=failed")
    assert "Retry: 2 states" in html and "flaky" in html
    page = Page(html)
    form = {
        "stage": page.hidden("stage") or "",
        "state": page.hidden("state") or "",
        "csrf": page.hidden("csrf") or "",
    }
    assert form["state"] == "failed"  # the filter goes back, not a list of ids
    assert page.hidden("entity") is None
    done = await dash.post("/actions/retry", form, 200)
    assert "2 states" in done
    await dash.idle()
    # Both ran again (and failed again: attempt 1 of a fresh failure record).
    fails = dash.rt.index.failures["p.upper"]
    assert {e: f.attempts for e, f in fails.items() if not f.dead} == {"flaky": 1, HOSTILE: 1}
    assert fails["gone"].dead  # the dead one was not selected


async def test_rerun_with_downstream_lists_the_states_below_first(dash: Dash) -> None:
    html = await dash.html("/actions/preview?action=rerun_down&stage=p.upper&entity=e001")
    assert "Downstream: 1 state" in html and "p.count" in html
    whole = await dash.html("/actions/preview?action=rerun_down&stage=p.upper")
    assert "every state of" in whole and "p.count" in whole


async def test_holding_an_entity_from_its_page_stops_it_being_rerun(dash: Dash) -> None:
    csrf = await dash.csrf("/entities/e002")
    await dash.post("/actions/hold", {"stage": "p.upper", "entity": "e002", "csrf": csrf}, 200)
    await dash.post("/actions/rerun", {"stage": "p.upper", "entity": "e002", "csrf": csrf}, 200)
    await dash.idle()
    html = await dash.html("/entities/e002?stage=p.upper")
    assert "badge st-held" in html and "Release" in html
    assert "INVALIDATED" in html  # stale underneath, but held: nothing ran


# -- entity page ----------------------------------------------------------------------------------


async def test_the_entity_page_shows_reasons_traceback_retry_time_and_lineage(dash: Dash) -> None:
    html = await dash.html("/entities/flaky")
    assert "ValueError: boom in &#39;flaky&#39;" in html
    assert "Traceback (most recent call last)" in html
    assert "Next retry" in html and "<time datetime=" in html
    assert "BACKOFF" in html
    ok = await dash.html("/entities/e001")
    assert "inbox/e001.txt" in ok and "(source)" in ok  # up: the source file
    assert "HELLO NUMBER 1" in ok  # the output preview
    assert 'href="/entities/e001?stage=p.count"' in ok  # down: the next stage's state


# -- live stream ----------------------------------------------------------------------------------


async def _frames(
    resp: Any, until: Callable[[list[tuple[str, Any, float]]], bool]
) -> list[tuple[str, Any, float]]:
    """Read SSE frames (kind, data, arrival time) until `until(frames)` holds (10 s at most)."""
    frames: list[tuple[str, Any, float]] = []
    kind = ""
    deadline = time.monotonic() + 10
    while not until(frames):
        line = await asyncio.wait_for(
            resp.content.readline(), max(0.1, deadline - time.monotonic())
        )
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            kind = text[7:]
        elif text.startswith("data: "):
            frames.append((kind, json.loads(text[6:]), time.monotonic()))
    return frames


async def test_the_live_stream_sends_changed_counts_at_most_once_a_second(dash: Dash) -> None:
    async with dash.client.get("/live?view=overview") as resp:
        assert resp.content_type == "text/event-stream"
        first = await _frames(resp, lambda f: any(k == "counts" for k, _, _ in f))
        counts = next(d for k, d, _ in first if k == "counts")
        assert counts["p.upper"]["fresh"] == 3 and counts["p.upper"]["dead"] == 1
        # When a state is held, then released (each a change the overview shows)
        csrf = await dash.csrf()
        form = {"stage": "p.upper", "entity": "e000", "csrf": csrf}
        await dash.post("/actions/hold", form, 200)
        held = await _frames(resp, lambda f: any(k == "counts" for k, _, _ in f))
        await dash.post("/actions/release", form, 200)
        released = await _frames(resp, lambda f: any(k == "counts" for k, _, _ in f))
    # Then only the changed cells come, and never two updates within a second
    (d1, t1), (d2, t2) = [
        next((d, t) for k, d, t in frames if k == "counts") for frames in (held, released)
    ]
    # (the held state's downstream waits for it)
    assert d1 == {"p.upper": {"fresh": 2, "held": 1}, "p.count": {"fresh": 2, "waiting": 4}}
    assert d2 == {"p.upper": {"fresh": 3, "held": 0}, "p.count": {"fresh": 3, "waiting": 3}}
    assert t2 - t1 >= 0.9


async def test_the_events_stream_resumes_after_the_last_event_shown(dash: Dash) -> None:
    html = await dash.html("/events")
    assert "failed" in html and "flaky" in html  # the last events, without JavaScript
    seq = int(html.split('data-since="', 1)[1].split('"', 1)[0])
    csrf = await dash.csrf()
    await dash.post("/actions/rerun", {"stage": "p.upper", "entity": "e000", "csrf": csrf}, 200)
    await dash.idle()
    async with dash.client.get(f"/live?view=events&since={seq}") as resp:
        frames = await _frames(resp, lambda f: any(k == "events" for k, _, _ in f))
    shown = next(d for k, d, _ in frames if k == "events")["events"]
    assert [e["kind"] for e in shown if e["entity"] == "e000"][:2] == ["queued", "started"]
    assert all(e["seq"] > seq for e in shown)


# -- graph, failure groups -------------------------------------------------------------------------


def _overlap(a: Any, b: Any) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


@pytest.mark.parametrize("engine", ["grandalf", "dot"])
async def test_the_graph_is_laid_out_by_a_library_without_overlaps(
    dash: Dash, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from eventrunner.server.dashboard import graph

    if engine == "dot" and shutil.which("dot") is None:
        pytest.skip("Graphviz dot is not installed (apt-get install graphviz)")
    if engine == "grandalf":
        monkeypatch.setattr(graph.shutil, "which", lambda name: None)  # as without Graphviz
    graph._CACHE.clear()
    layout = graph.layout(dash.rt.ws.graph)
    assert layout.engine == engine
    labels = [n.label for n in layout.nodes]
    assert labels == ["inbox/{name}.txt", "p.upper", "p.count"]
    source, upper, count = layout.nodes
    assert source.y < upper.y < count.y  # upstream above downstream
    assert not any(_overlap(a, b) for a in layout.nodes for b in layout.nodes if a is not b)
    assert len(layout.edges) == 2
    assert all(n.x >= 0 and n.x + n.w <= layout.width + 1 for n in layout.nodes)
    html = await dash.html("/graph")
    assert f"laid out by {engine}" in html
    assert 'href="/stages/p.upper"' in html and 'data-bar="p.count"' in html


async def test_failures_group_by_stage_and_error_with_the_entity_and_numbers_blurred(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    extra = {"inbox/other.txt": "boom again\n", "inbox/gone2.txt": "fatal too\n"}
    async for dash in _dash(dashboard_workspace(tmp_path / "ws", n=1, extra=extra), aiohttp_client):
        html = await dash.html("/failures", **{"HX-Request": "true", "HX-Target": "groups"})
        groups = html.split('<section class="card group"')[1:]
        texts = sorted(g.split('class="error-line">', 1)[1].split("<", 1)[0] for g in groups)
        assert texts == [
            "PermanentError: fatal input in …: code #",
            "ValueError: boom in &#39;…&#39;",
        ]
        boom = next(g for g in groups if "ValueError" in g)
        assert "failed</span> 3" in boom  # flaky, other and the hostile one
        key = boom.split("error=", 1)[1].split("&", 1)[0].split('"', 1)[0]
        listed = await dash.html(
            f"/stages/p.upper?error={key}", **{"HX-Request": "true", "HX-Target": "entities"}
        )
        assert sorted(entity_links(listed)) == sorted([HOSTILE, "flaky", "other"])


async def test_a_reason_filter_looks_at_a_bounded_number_of_states_per_page(
    dash: Dash, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventrunner.server.dashboard import queries

    monkeypatch.setattr(queries, "SCAN_BUDGET", 2)
    csrf = await dash.csrf()
    await dash.post("/actions/hold", {"stage": "p.upper", "entity": "e001", "csrf": csrf}, 200)
    frag = {"HX-Request": "true", "HX-Target": "entities"}
    # Sorted, the non-fresh states are: the hostile id, e001 (held: no MISSING), flaky, gone.
    first = await dash.html("/stages/p.upper?reason=MISSING", **frag)
    assert entity_links(first) == [HOSTILE]
    assert "1 shown of 2 looked at" in first
    assert 'rel="next" href="/stages/p.upper?after=e001' in first  # goes on after e001
    second = await dash.html("/stages/p.upper?reason=MISSING&after=e001", **frag)
    assert entity_links(second) == ["flaky", "gone"]
    assert 'rel="next"' not in second and 'rel="prev"' in second
