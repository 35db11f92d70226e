"""Stock handlers (shell, http, feeds, markdown, json) end to end through real workspaces."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import MakeWorkspace, Workspace

HOSTILE = "a b;rm -rf victim"


def _failure(ws: Workspace, entity: str, stage: str) -> tuple[str, dict[str, Any]]:
    """(state, failure record) of one (stage, entity) from `explain --json`."""
    row = ws.explain(entity, stage)
    assert row["failure"] is not None, row
    return row["state"], row["failure"]


# -- shell -------------------------------------------------------------------------------------

SHELL_PIPELINE = """\
name = "sh"

[stages.upper]
handler = "shell"
inputs  = { src = "in/{name}.txt" }
output  = "upper/{name}.txt"
params  = { command = "tr a-z A-Z < {input.src}" }

[stages.copy]
handler = "shell"
inputs  = { src = "upper/{name}.txt" }
output  = "copy/{name}.txt"
params  = { command = "cp {input.src} {output} && echo ignored", who = "$(touch pwned) 'x'" }

[stages.greet]
handler = "shell"
inputs  = { src = "in/{name}.txt" }
output  = "greet/{name}.txt"
params  = { command = "printf '%s|%s|%s' \\"$GREETING\\" {vars.name} {params.who}", who = "$(touch pwned) 'x'", env = { GREETING = "hi" } }

[stages.all]
handler = "shell"
inputs  = { src = "in/{name}.txt" }
output  = "all.txt"
params  = { command = "cat {input.src}" }
"""


def test_shell_quotes_hostile_names_and_values_and_uses_stdout_or_output(
    make_workspace: MakeWorkspace,
) -> None:
    # Given input names and params that would run commands if they were not quoted
    ws = make_workspace(
        {
            "pipelines/sh.toml": SHELL_PIPELINE,
            f"in/{HOSTILE}.txt": "hello\n",
            "in/plain.txt": "world\n",
            "victim": "still here\n",
        }
    )
    # When the stock shell stages run
    report = ws.run()
    # Then every value reached the command as one word and nothing was executed
    assert report["failed"] == 0 and report["succeeded"] == 7
    assert ws.read("victim") == "still here\n"
    assert not ws.exists("pwned")
    assert ws.read(f"upper/{HOSTILE}.txt") == "HELLO\n"  # stdout became the output
    assert ws.read(f"copy/{HOSTILE}.txt") == "HELLO\n"  # {output} written, stdout ignored
    assert ws.read(f"greet/{HOSTILE}.txt") == f"hi|{HOSTILE}|$(touch pwned) 'x'"
    # A fan-in input is every member path, each quoted, in entity id order
    assert ws.read("all.txt") == "hello\nworld\n"


def test_shell_nonzero_exit_records_exit_code_and_stderr_tail(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/sh.toml": """\
                name = "sh"
                [stages.fail]
                handler = "shell"
                inputs  = { src = "in/{name}.txt" }
                output  = "out/{name}.txt"
                params  = { command = "for i in $(seq 1 30); do echo \\"line $i\\" >&2; done; exit 3" }
            """,
            "in/one.txt": "x\n",
        }
    )
    report = ws.run(expect=1)
    assert report["failed"] == 1
    state, failure = _failure(ws, "one", "sh.fail")
    # A failing command may succeed later: it backs off rather than dying at once
    assert state == "failed" and not failure["dead"]
    error = failure["error"]
    assert error.startswith("CommandFailed: shell: command failed with exit code 3")
    assert "line 11\n" in error and error.endswith("line 30")
    assert "line 10\n" not in error  # only the last 20 lines are kept
    assert not ws.exists("out/one.txt")


def test_shell_timeout_kills_the_whole_process_group(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/sh.toml": """\
                name = "sh"
                [stages.slow]
                handler = "shell"
                inputs  = { src = "in/{name}.txt" }
                output  = "out/{name}.txt"
                params  = { command = "sleep 30 & echo $! > bg.pid; echo started >&2; wait", timeout = "300ms" }
            """,
            "in/one.txt": "x\n",
        }
    )
    ws.run(expect=1)
    state, failure = _failure(ws, "one", "sh.slow")
    assert state == "failed"
    assert failure["error"].startswith("HandlerTimeout: shell: command timed out after 0.3s")
    assert "started" in failure["error"]
    # The background child held the output pipe; the handler returned only once it was gone.
    pid = int(ws.read("bg.pid"))
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1][0] in "ZX"


def test_shell_missing_program_is_dead_and_named(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/sh.toml": """\
                name = "sh"
                [stages.tool]
                handler = "shell"
                inputs  = { src = "in/{name}.txt" }
                output  = "out/{name}.txt"
                params  = { command = "no-such-tool-4711 --in {input.src}" }
            """,
            "in/one.txt": "x\n",
        }
    )
    ws.run(expect=1)
    state, failure = _failure(ws, "one", "sh.tool")
    assert state == "dead" and failure["dead"]
    assert failure["error"].startswith(
        "PermanentError: shell: program not found: no-such-tool-4711 (exit code 127)"
    )


def test_shell_unknown_placeholder_is_dead_and_names_it(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/sh.toml": """\
                name = "sh"
                [stages.typo]
                handler = "shell"
                inputs  = { src = "in/{name}.txt" }
                output  = "out/{name}.txt"
                params  = { command = "cat {input.source} | awk '{print $1}'" }
            """,
            "in/one.txt": "x\n",
        }
    )
    ws.run(expect=1)
    state, failure = _failure(ws, "one", "sh.typo")
    assert state == "dead"
    assert "unknown placeholder {input.source}" in failure["error"]
    assert "{input.src}" in failure["error"]  # the known ones are listed


# -- http --------------------------------------------------------------------------------------

TOKEN = "hook-token-5f3a9c"  # the secret part of every URL


@dataclass
class HookServer:
    """A real aiohttp server on 127.0.0.1 in a thread, recording what it received."""

    base: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)


def _routes(server: HookServer) -> web.Application:
    async def record(request: web.Request) -> dict[str, Any]:
        body = await request.read()
        seen = {"path": request.path, "method": request.method, "body": body}
        seen["content_type"] = request.headers.get("Content-Type", "")
        server.received.append(seen)
        return seen

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        # Servers often echo the request path: the handler must not record it.
        return web.json_response({"ok": True, "you_called": str(request.url)})

    async def busy(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=429, text="slow down", headers={"Retry-After": "120"})

    async def boom(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500, text=f"internal error while handling {request.path}")

    async def gone(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=404, text=f"no route for {request.url}")

    app = web.Application()
    app.router.add_route("*", f"/{TOKEN}/ok", ok)
    app.router.add_route("*", f"/{TOKEN}/busy", busy)
    app.router.add_route("*", f"/{TOKEN}/boom", boom)
    app.router.add_route("*", f"/{TOKEN}/gone", gone)
    return app


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    server = HookServer()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_routes(server), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    server.base = f"http://{host}:{port}/{TOKEN}"
    thread = threading.Thread(target=loop.run_forever, name="hook-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _http_stage(name: str, secret: str, extra: str = "") -> str:
    return f"""
[stages.{name}]
handler = "http"
inputs  = {{ msg = "in/{{name}}.json" }}
output  = "sent/{name}/{{name}}.json"
params  = {{ url_secret = "{secret}"{extra} }}
"""


HTTP_PIPELINE = (
    'name = "hook"\n'
    + _http_stage("ok", "HOOK_OK")
    + _http_stage("busy", "HOOK_BUSY")
    + _http_stage("boom", "HOOK_BOOM")
    + _http_stage("gone", "HOOK_GONE")
    + _http_stage("down", "HOOK_DOWN", ', timeout = "5s"')
    + _http_stage("form", "HOOK_OK", ', form = true, body = { text = "New: {vars.name}", n = 3 }')
)


def test_http_maps_statuses_to_outputs_and_failure_classes_without_leaking_the_url(
    make_workspace: MakeWorkspace,
    hook_server: HookServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given one stage per server behaviour, each URL held in a secret
    for secret, path in (("OK", "ok"), ("BUSY", "busy"), ("BOOM", "boom"), ("GONE", "gone")):
        monkeypatch.setenv(f"HOOK_{secret}", f"{hook_server.base}/{path}")
    monkeypatch.setenv("HOOK_DOWN", f"http://127.0.0.1:{_closed_port()}/{TOKEN}/down")
    name = 'say "hi" & go'
    ws = make_workspace(
        {"pipelines/hook.toml": HTTP_PIPELINE, f"in/{name}.json": '{"text": "hello"}\n'}
    )
    # When they run
    res = ws.cli("run", "--json")
    assert res.code == 1, res.err
    # Then 2xx is an output with the status and the start of the response
    sent = json.loads(ws.read(f"sent/ok/{name}.json"))
    assert sent["status"] == 200
    assert json.loads(sent["response"]) == {"ok": True, "you_called": "<url from secret>"}
    to_ok = [r for r in hook_server.received if r["path"].endswith("/ok")]
    posted = next(r for r in to_ok if r["content_type"] == "application/json")
    assert posted["method"] == "POST"
    assert json.loads(posted["body"]) == {"text": "hello"}
    # ... a params.body table is rendered per string, then sent as a form
    form = next(r for r in to_ok if "form" in r["content_type"])
    assert form["body"] == b"text=New%3A+say+%22hi%22+%26+go&n=3"
    # ... 429 retries after the server's Retry-After, 5xx and refused connections back off
    state, failure = _failure(ws, name, "hook.busy")
    assert state == "failed" and failure["error"].startswith("RetryLater: http: HTTP 429")
    assert failure["next_retry"] - failure["last_failed"] == pytest.approx(120, abs=1)
    state, failure = _failure(ws, name, "hook.boom")
    assert state == "failed" and failure["error"].startswith("RetryLater: http: HTTP 500")
    state, failure = _failure(ws, name, "hook.down")
    assert state == "failed" and failure["error"].startswith("RetryLater: http: request failed")
    # ... and any other 4xx is permanent
    state, failure = _failure(ws, name, "hook.gone")
    assert state == "dead" and failure["error"].startswith("PermanentError: http: HTTP 404")
    # And the URL appears in no output, manifest, failure record or printed line
    for file in ws.root.rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes(), file
    assert TOKEN not in res.out + res.err + caplog.text
    assert "HTTP 404" in caplog.text  # the failures were logged, redacted
    assert "<url from secret>" in failure["error"]  # the 404 page quoted the URL


def test_http_unset_secret_is_dead_and_names_the_variable(
    make_workspace: MakeWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOK_UNSET_4711", raising=False)
    ws = make_workspace(
        {
            "pipelines/hook.toml": 'name = "hook"\n' + _http_stage("ok", "HOOK_UNSET_4711"),
            "in/one.json": "{}",
        }
    )
    ws.run(expect=1)
    state, failure = _failure(ws, "one", "hook.ok")
    assert state == "dead" and "'HOOK_UNSET_4711' is not set" in failure["error"]


def test_http_retry_after_reads_seconds_and_http_dates() -> None:
    from eventrunner_handlers.http import retry_after

    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert retry_after("120") == 120.0
    assert retry_after("Tue, 14 Nov 2023 22:15:20 GMT", now=now) == pytest.approx(120.0)
    assert retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # already past
    assert retry_after("soon") is None
    assert retry_after(None) is None


# -- feeds -------------------------------------------------------------------------------------

RSS = """\
<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <channel>
    <title>Example News</title>
    <link>https://news.example.org/</link>
    <description>Things that happened</description>
    <item>
      <title>Rates rise &amp; markets fall</title>
      <link>https://news.example.org/2024/05/rates</link>
      <guid isPermaLink="false">news-2024-0501-rates</guid>
      <pubDate>Wed, 01 May 2024 09:30:00 +0200</pubDate>
      <dc:creator>Ann Writer</dc:creator>
      <description><![CDATA[<p>The central bank <b>raised</b> rates.</p>]]></description>
    </item>
    <item>
      <title>Weather: / sunny ../ later</title>
      <link>https://news.example.org/2024/05/weather</link>
      <pubDate>Thu, 02 May 2024 06:00:00 GMT</pubDate>
      <description>Sun all day.</description>
    </item>
    <item>
      <title>Rates rise &amp; markets fall</title>
      <link>https://news.example.org/2024/05/rates</link>
      <guid isPermaLink="false">news-2024-0501-rates</guid>
      <description>Listed twice by the feed</description>
    </item>
  </channel>
</rss>
"""

ATOM = """\
<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Dev Blog</title>
  <id>urn:uuid:60a76c80-d399-11d9-b93C-0003939e0af6</id>
  <updated>2024-03-10T18:30:02Z</updated>
  <entry>
    <title>Release 2.0</title>
    <link rel="alternate" href="https://blog.example.com/release-2"/>
    <id>tag:blog.example.com,2024:release-2</id>
    <published>2024-03-10T18:30:02Z</published>
    <updated>2024-03-11T08:00:00Z</updated>
    <author><name>Bo Coder</name></author>
    <summary>What is new in 2.0</summary>
  </entry>
  <entry>
    <title>Only updated</title>
    <link href="https://blog.example.com/only-updated"/>
    <id>tag:blog.example.com,2024:only-updated</id>
    <updated>2024-03-12T10:00:00-05:00</updated>
    <summary type="html">&lt;em&gt;short&lt;/em&gt;</summary>
  </entry>
</feed>
"""

FEEDS_PIPELINE = """\
name = "rss"

[stages.items]
handler = "feeds"
inputs  = { feed = "feeds/{feed}.xml" }
output  = "items/{feed}/{item}.json"

[stages.titled]
handler = "feeds"
inputs  = { feed = "feeds/{feed}.xml" }
output  = "titled/{feed}/{item}.json"
params  = { id_field = "title" }
"""


def _items(ws: Workspace, folder: str) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(ws.path(folder).glob("*.json"))}


def test_feeds_split_rss_and_atom_into_items_with_stable_safe_ids(
    make_workspace: MakeWorkspace,
) -> None:
    import xxhash

    ws = make_workspace(
        {
            "pipelines/rss.toml": FEEDS_PIPELINE,
            "feeds/news.xml": RSS,
            "feeds/blog.xml": ATOM,
            "feeds/broken.xml": "this is { not a feed at all\n",
        }
    )
    report = ws.run(expect=1)
    assert report["failed"] == 2  # the broken feed, in both stages
    # RSS 2.0: keyed by the hash of the guid (or the link), duplicates listed once
    news = _items(ws, "items/news")
    rates = news[xxhash.xxh3_64_hexdigest(b"news-2024-0501-rates")]
    assert rates == {
        "id": "news-2024-0501-rates",
        "title": "Rates rise & markets fall",
        "link": "https://news.example.org/2024/05/rates",
        "published": "2024-05-01T07:30:00+00:00",
        "summary": "<p>The central bank <b>raised</b> rates.</p>",
        "author": "Ann Writer",
    }
    weather = news[xxhash.xxh3_64_hexdigest(b"https://news.example.org/2024/05/weather")]
    assert weather["published"] == "2024-05-02T06:00:00+00:00" and "author" not in weather
    assert len(news) == 2
    # Atom: published when given, else updated; the author's name
    blog = _items(ws, "items/blog")
    release = blog[xxhash.xxh3_64_hexdigest(b"tag:blog.example.com,2024:release-2")]
    assert release["published"] == "2024-03-10T18:30:02+00:00"
    assert (
        release["author"] == "Bo Coder" and release["link"] == "https://blog.example.com/release-2"
    )
    only = blog[xxhash.xxh3_64_hexdigest(b"tag:blog.example.com,2024:only-updated")]
    assert only["published"] == "2024-03-12T15:00:00+00:00" and only["summary"] == "<em>short</em>"
    # id_field: the field made into a safe path segment
    assert sorted(_items(ws, "titled/news")) == ["Rates-rise-markets-fall", "Weather-sunny-later"]
    # A document that is not a feed is dead: no retry can fix it
    state, failure = _failure(ws, "broken", "rss.items")
    assert state == "dead" and "is not a readable feed" in failure["error"]


# -- markdown ----------------------------------------------------------------------------------

MARKDOWN_PIPELINE = """\
name = "md"

[stages.page]
handler = "markdown"
inputs  = { post = "posts/{slug}.md" }
output  = "site/{slug}.html"
params  = { template = "<title>{title}</title>\\n<main>{content}</main>\\n" }

[stages.fragment]
handler = "markdown"
inputs  = { post = "posts/{slug}.md" }
output  = "fragments/{slug}.html"
"""


def test_markdown_renders_commonmark_into_the_template_with_an_escaped_title(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/md.toml": MARKDOWN_PIPELINE,
            "posts/fish.md": "Intro text.\n\n## Fish & *Chips* `<now>` <br>\n\nA {title} in the text.\n",
            "posts/plain.md": "No heading, just `code`.\n",
        }
    )
    ws.run()
    page = ws.read("site/fish.html")
    assert page.startswith(
        "<title>Fish &amp; Chips &lt;now&gt;</title>\n<main><p>Intro text.</p>\n"
    )
    # Raw HTML passes, as CommonMark says; the title keeps text and code only
    assert "<h2>Fish &amp; <em>Chips</em> <code>&lt;now&gt;</code> <br></h2>" in page
    assert "<p>A {title} in the text.</p>" in page  # placeholders inside the content stay
    assert ws.read("site/plain.html").startswith("<title>plain</title>")  # the entity id
    assert ws.read("fragments/plain.html") == "<p>No heading, just <code>code</code>.</p>\n"


# -- json --------------------------------------------------------------------------------------

JSON_PIPELINE = """\
name = "pick"

[stages.fields]
handler = "json"
inputs  = { doc = "data/{id}.json" }
output  = "fields/{id}.json"
params  = { select = { title = "item.title", first_tag = "tags.0", last_tag = "tags.-1", sub = "item.subtitle" }, defaults = { sub = "(none)" } }

[stages.strict]
handler = "json"
inputs  = { doc = "data/{id}.json" }
output  = "strict/{id}.json"
params  = { select = { title = "item.nope.title" } }
"""


def test_json_selects_dotted_paths_with_defaults_and_names_a_missing_path(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(
        {
            "pipelines/pick.toml": JSON_PIPELINE,
            "data/one.json": json.dumps({"item": {"title": "Hi"}, "tags": ["a", "b", "c"]}),
            "data/bad.json": "{not json",
        }
    )
    ws.run(expect=1)
    assert json.loads(ws.read("fields/one.json")) == {
        "title": "Hi",
        "first_tag": "a",
        "last_tag": "c",
        "sub": "(none)",
    }
    state, failure = _failure(ws, "one", "pick.strict")
    assert state == "dead" and "path 'item.nope.title'" in failure["error"]
    state, failure = _failure(ws, "bad", "pick.fields")
    assert state == "dead" and "input doc (bad.json) is not JSON" in failure["error"]


def test_json_handler_module_does_not_shadow_the_standard_library() -> None:
    import eventrunner_handlers.json as stock

    assert callable(stock.json) and stock._json is json
    assert json.dumps({"a": 1}) == '{"a": 1}'
    assert os.path.dirname(json.__file__) != os.path.dirname(stock.__file__)
