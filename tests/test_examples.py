"""The shipped example workspaces (examples/news, examples/auto-blog) run end to end.

Each test works on a temp copy of an example, runs the real CLI, checks the outputs' content,
then changes one input and checks from the manifests that exactly the expected stages re-ran.
Discord and the feed hosts are played by a real aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Workspace
from serve_helpers import FAST_RUNTIME, Server, read, wait_until

from eventrunner.server.signatures import sign_standard_webhook

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Outputs and state a developer may have left in an example folder by running it in place.
GENERATED = [".eventrunner", "__pycache__", "runs.log"]
GENERATED += ["items", "scores", "notify", "digest", "blog", "podcast", "audio"]
HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HOOK_TOKEN = "tok-3c9d1e7f0a5b"  # the secret part of the Discord webhook URL

# Items of the sample feeds that pass the keyword threshold (score >= 3), by link.
SHOW_HN = "https://github.com/example/pipeline-runner"
POOLER = "https://engineering.example.com/pooler-in-rust"
BLOG_POST = "https://engineering.tidewater.example/2024/11/25/event-driven-workers/"
NEW_ITEM = """\
<item>
<title>Python 3.14 ships a faster asyncio event loop</title>
<link>https://example.org/python-314-asyncio</link>
<pubDate>Tue, 26 Nov 2024 10:02:00 +0000</pubDate>
<comments>https://news.ycombinator.com/item?id=42244001</comments>
<description><![CDATA[<a href="https://news.ycombinator.com/item?id=42244001">Comments</a>]]></description>
</item>
"""
NEW_LINK = "https://example.org/python-314-asyncio"


# -- helpers -------------------------------------------------------------------------------------


def copy_example(name: str, dest: Path, capsys: pytest.CaptureFixture[str]) -> Workspace:
    """A fresh copy of examples/NAME without anything a previous run generated."""
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns(*GENERATED))
    return Workspace(dest, capsys)


def edit(path: Path, old: str, new: str) -> None:
    """Replace text that must be present (so a changed example fails loudly, not silently)."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def finished(ws: Workspace) -> dict[tuple[str, str], int]:
    """{(stage qualname, entity id): finished_ns} from every manifest."""
    out: dict[tuple[str, str], int] = {}
    for path in (ws.root / ".eventrunner" / "state").glob("*/*.json"):
        manifest = json.loads(path.read_bytes())
        out[(manifest["stage"], manifest["entity"])] = manifest["finished_ns"]
    return out


def reran(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> set[Any]:
    """The (stage, entity) pairs whose manifest is new or was rewritten."""
    return {key for key, ns in after.items() if before.get(key) != ns}


def item_key(ws: Workspace, source: str, link: str) -> str:
    """The fan-out key the feeds stage gave the item with this link."""
    for path in (ws.root / "items" / source).glob("*.json"):
        if json.loads(path.read_bytes())["link"] == link:
            return path.stem
    raise AssertionError(f"no item with link {link} in items/{source}")


def eid(source: str, item: str) -> str:
    return f"source={source},item={item}"


def state_of(ws: Workspace, entity: str, stage: str) -> str:
    state: str = ws.explain(entity, stage)["state"]
    return state


def retry_due(ws: Workspace, entity: str, stage: str) -> bool:
    """A failed state whose retry time has come (still `failed`, and run by the next `run`)."""
    row = ws.explain(entity, stage)
    return bool(row["state"] == "failed" and "retry due since" in row["reasons"][0]["message"])


# -- a local server playing Discord and the feed hosts --------------------------------------------


@dataclass
class FakeHost:
    """What the loopback server answers and what it received (a real HTTP server, fake content)."""

    base: str = ""
    feeds: dict[str, bytes] = field(default_factory=dict)  # /feeds/NAME -> body
    fetched: list[str] = field(default_factory=list)
    # link -> statuses to answer, in order, before the default 204 (429 comes with Retry-After: 1)
    plan: dict[str, list[int]] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)  # {"link", "status", "at", "body"}

    @property
    def webhook_url(self) -> str:
        return f"{self.base}/api/webhooks/1234567890/{HOOK_TOKEN}"

    def posts_for(self, link: str, status: int | None = None) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["link"] == link and status in (None, p["status"])]

    def posted_links(self) -> list[str]:
        """Links of every successful post, once per post."""
        return sorted(p["link"] for p in self.posts if p["status"] == 204)


def _host_app(host: FakeHost) -> web.Application:
    async def discord(request: web.Request) -> web.Response:
        body = await request.json()
        link = body["content"].rsplit("\n", 1)[-1]
        planned = host.plan.get(link, [])
        status = planned.pop(0) if planned else 204
        host.posts.append({"link": link, "status": status, "at": time.monotonic(), "body": body})
        if status == 429:
            return web.json_response(
                {"message": "You are being rate limited.", "retry_after": 1, "global": False},
                status=429,
                headers={"Retry-After": "1"},
            )
        if status >= 400:
            return web.json_response({"message": "internal error"}, status=status)
        return web.Response(status=status)

    async def feed(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        host.fetched.append(name)
        if name not in host.feeds:
            return web.Response(status=404)
        return web.Response(body=host.feeds[name], content_type="application/rss+xml")

    app = web.Application()
    app.router.add_post(f"/api/webhooks/1234567890/{HOOK_TOKEN}", discord)
    app.router.add_get("/feeds/{name}", feed)
    return app


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    """The loopback server in a thread; DISCORD_WEBHOOK_URL points at it."""
    host = FakeHost()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_host_app(host), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    address, port = runner.addresses[0][:2]
    host.base = f"http://{address}:{port}"
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", host.webhook_url)
    thread = threading.Thread(target=loop.run_forever, name="fake-host", daemon=True)
    thread.start()
    try:
        yield host
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def fast_retries(ws: Workspace) -> None:
    """Retry notify at once after a failure without Retry-After (the example waits 30s)."""
    edit(
        ws.path("pipelines/news.toml"),
        'retry   = { max_attempts = 8, backoff = "30s", max_backoff = "30m" }',
        'retry   = { max_attempts = 5, backoff = "0s", max_backoff = "100ms" }',
    )


# -- news ----------------------------------------------------------------------------------------


def test_news_scores_digests_and_posts_each_item_above_threshold_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_host: FakeHost
) -> None:
    # Given the news example whose webhook rate-limits one post and fails another once
    ws = copy_example("news", tmp_path / "news", capsys)
    fast_retries(ws)
    fake_host.plan = {SHOW_HN: [429], POOLER: [500]}

    # When it runs
    first = ws.run(expect=1)

    # Then every item is split out and scored, and both feeds are digested, best first
    assert first["failed"] == 2
    assert len(list(ws.root.glob("items/hn/*.json"))) == 8
    assert len(list(ws.root.glob("items/blog/*.json"))) == 4
    show_hn = item_key(ws, "hn", SHOW_HN)
    score = json.loads(ws.read(f"scores/hn/{show_hn}.json"))
    assert score == {
        "matched": ["event-driven", "python"],
        "notify": True,
        "score": 5,
        "threshold": 3,
    }
    digest = ws.read("digest/hn.md").splitlines()
    assert digest[0] == "# hn digest"
    assert digest[4].startswith("- [Show HN: An event-driven file pipeline runner")
    assert digest[4].endswith("score 5 (2024-11-26) ★")
    assert "Replacing our nightly batch" in ws.read("digest/blog.md")
    # ... items below the threshold are recorded without any request
    lichens = item_key(ws, "hn", "https://www.example.edu/lichens/field-guide.pdf")
    assert json.loads(ws.read(f"notify/hn/{lichens}.json")) == {"posted": False, "score": 0}
    assert {p["link"] for p in fake_host.posts} == {SHOW_HN, POOLER, BLOG_POST}
    blog_post = fake_host.posts_for(BLOG_POST)[0]["body"]
    assert blog_post["allowed_mentions"] == {"parse": []}
    assert blog_post["content"].startswith("**Replacing our nightly batch with event-driven")
    # ... the rate-limited post waits for Retry-After, and no error quotes the secret URL
    limited = ws.explain(eid("hn", show_hn), "news.notify")
    assert limited["state"] == "failed"
    assert "BACKOFF" in {r["code"] for r in limited["reasons"]}
    assert "HTTP 429; retry after 1s" in limited["failure"]["error"]
    assert HOOK_TOKEN not in json.dumps(limited)
    pooler = eid("hn", item_key(ws, "hn", POOLER))

    # When the runs are repeated as their backoffs expire
    wait_until(lambda: retry_due(ws, pooler, "news.notify"), "the 500 to back off")
    # (exit 1 while the 429 still backs off: `run` exits 0 only once every state is fresh)
    ws.run(expect=None)
    wait_until(
        lambda: retry_due(ws, eid("hn", show_hn), "news.notify"),
        "the 429's Retry-After to pass",
        timeout=10,
        interval=0.1,
    )
    ws.run(expect=0)

    # Then each item above the threshold was posted exactly once, the 429 not before Retry-After
    assert fake_host.posted_links() == sorted([SHOW_HN, POOLER, BLOG_POST])
    assert len(fake_host.posts) == 5
    tries = fake_host.posts_for(SHOW_HN)
    assert [p["status"] for p in tries] == [429, 204]
    assert tries[1]["at"] - tries[0]["at"] >= 0.9
    assert json.loads(ws.read(f"notify/hn/{show_hn}.json"))["posted"] is True
    assert ws.run()["executed"] == 0

    # When one posted item's title is corrected and a new item arrives in the same feed
    before = finished(ws)
    hn = ws.path("feeds/hn.xml")
    edit(hn, "runner written in Python</title>", "runner in Python</title>")
    edit(hn, "<item>", NEW_ITEM + "<item>")
    report = ws.run()

    # Then only that feed's split, the two items' scores and notifications, and its digest ran
    new = item_key(ws, "hn", NEW_LINK)
    assert reran(before, finished(ws)) == {
        ("news.items", "hn"),
        ("news.score", eid("hn", show_hn)),
        ("news.score", eid("hn", new)),
        ("news.notify", eid("hn", show_hn)),
        ("news.notify", eid("hn", new)),
        ("news.digest", "hn"),
    }
    assert report["executed"] == 6
    assert "Show HN: An event-driven file pipeline runner in Python" in ws.read("digest/hn.md")
    # ... and the corrected item was not posted again; the new one was, once
    assert fake_host.posted_links() == sorted([SHOW_HN, POOLER, BLOG_POST, NEW_LINK])


def test_news_fetch_variant_downloads_configured_feeds_and_follows_only_changed_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_host: FakeHost
) -> None:
    # Given the news example switched to the fetch variant as its README says, feeds served locally
    ws = copy_example("news", tmp_path / "news", capsys)
    for name in ("hn", "blog"):
        fake_host.feeds[f"{name}.xml"] = ws.path(f"feeds/{name}.xml").read_bytes()
    example = ws.path("pipelines/fetch.toml.example")
    assert tomllib.loads(example.read_text())["stages"]["fetch"]["schedule"] == "*/30 * * * *"
    example.rename(ws.path("pipelines/fetch.toml"))
    for feed in ws.root.glob("feeds/*"):
        feed.unlink()
    urls = f'{{ hn = "{fake_host.base}/feeds/hn.xml", blog = "{fake_host.base}/feeds/blog.xml" }}'
    text = ws.path("pipelines/fetch.toml").read_text()
    start = text.index("urls = {")
    end = text.index("}", start) + 1
    ws.path("pipelines/fetch.toml").write_text(text[:start] + "urls = " + urls + text[end:])
    assert ws.cli("validate").code == 0

    # When it runs
    ws.run()

    # Then the generator downloaded both feeds and the news pipeline processed them
    assert sorted(fake_host.fetched) == ["blog.xml", "hn.xml"]
    assert ws.path("feeds/hn.xml").read_bytes() == fake_host.feeds["hn.xml"]
    assert "Show HN: An event-driven file pipeline runner" in ws.read("digest/hn.md")
    assert fake_host.posted_links() == sorted([SHOW_HN, POOLER, BLOG_POST])
    # ... and a second run fetches nothing: the generator's output is fresh until its schedule
    assert ws.run()["executed"] == 0
    assert len(fake_host.fetched) == 2

    # When one feed changes upstream and a fetch is forced (what the cron schedule does)
    before = finished(ws)
    fake_host.feeds["hn.xml"] = fake_host.feeds["hn.xml"].replace(
        b"<item>", NEW_ITEM.encode() + b"<item>", 1
    )
    assert ws.cli("invalidate", "fetch").code == 0
    report = ws.run()

    # Then both feeds were downloaded again, but only the changed one was processed again
    assert sorted(fake_host.fetched) == ["blog.xml", "blog.xml", "hn.xml", "hn.xml"]
    new = eid("hn", item_key(ws, "hn", NEW_LINK))
    assert reran(before, finished(ws)) == {
        ("fetch.fetch", "_"),
        ("news.items", "hn"),
        ("news.score", new),
        ("news.notify", new),
        ("news.digest", "hn"),
    }
    assert report["executed"] == 5
    assert fake_host.posted_links() == sorted([SHOW_HN, POOLER, BLOG_POST, NEW_LINK])


# -- auto-blog ------------------------------------------------------------------------------------


def _check_audio(ws: Workspace, date: str) -> None:
    """A real WAV file with espeak-ng installed; else a dead state naming the missing tool."""
    if HAVE_ESPEAK:
        data = ws.path(f"audio/{date}.wav").read_bytes()
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 10_000
    else:
        row = ws.explain(date, "auto-blog.audio")
        assert row["state"] == "dead"
        assert "program not found: espeak-ng" in row["failure"]["error"]


def test_auto_blog_renders_posts_index_scripts_and_audio_and_template_change_rerenders_only_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the auto-blog example with its three sample logs
    ws = copy_example("auto-blog", tmp_path / "blog", capsys)

    # When it runs
    ws.run(expect=0 if HAVE_ESPEAK else 1)

    # Then every log is a post in the template, listed newest first in the index
    post = ws.read("blog/2026-11-24.html")
    assert "<title>Monday: flaky tests and a good soup</title>" in post
    assert '<a href="https://example.org/leek-soup">recipe Mia sent</a>' in post
    assert '<nav><a href="index.html">All days</a></nav>' in post
    index = ws.read("blog/index.html")
    assert index.index("2026-11-25.html") < index.index("2026-11-24.html")
    assert index.index("2026-11-24.html") < index.index("2026-11-23.html")
    assert "Sunday: the garden shed gets a roof" in index
    # ... a plain-text script without markup, and the audio read from it
    script = ws.read("podcast/2026-11-24.txt")
    assert script.startswith(
        "Welcome to The Daily Log. I'm Ada, and this is the log for Tuesday, 24 November 2026."
    )
    assert "Lunch was leek and potato soup from the recipe Mia sent." in script
    assert "https://" not in script and "*" not in script and "`" not in script
    for date in ("2026-11-23", "2026-11-24", "2026-11-25"):
        _check_audio(ws, date)

    # When the post template (a param of the html stage) changes
    before = finished(ws)
    edit(ws.path("pipelines/auto-blog.toml"), "All days</a>", "Every day</a>")
    ws.run()

    # Then every post and the index were rendered again, and no script or audio was redone
    dates = ("2026-11-23", "2026-11-24", "2026-11-25")
    expected = {("auto-blog.html", d) for d in dates} | {("auto-blog.index", "_")}
    assert reran(before, finished(ws)) == expected
    assert "Every day</a>" in ws.read("blog/2026-11-25.html")

    # When one log is edited
    before = finished(ws)
    ws.write("logs/2026-11-25.md", "# Tuesday: hinges instead\n\nThe door can wait.\n")
    ws.run(expect=0 if HAVE_ESPEAK else 1)

    # Then that day's post, script and audio and the index ran; the other days did not
    changed = {(f"auto-blog.{s}", "2026-11-25") for s in ("html", "podcast")}
    changed |= {("auto-blog.index", "_")}
    if HAVE_ESPEAK:
        changed.add(("auto-blog.audio", "2026-11-25"))
    assert reran(before, finished(ws)) == changed
    assert "Tuesday: hinges instead" in ws.read("blog/index.html")
    _check_audio(ws, "2026-11-25")


def test_auto_blog_audio_without_espeak_ng_is_dead_and_names_the_tool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a machine where espeak-ng is not on the PATH
    ws = copy_example("auto-blog", tmp_path / "blog", capsys)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    # When the example runs
    report = ws.run(expect=1)

    # Then only the audio stage failed, for good, with an error naming the missing program
    assert report["failed"] == 3
    assert {f["stage"] for f in report["failures"]} == {"auto-blog.audio"}
    row = ws.explain("2026-11-23", "auto-blog.audio")
    assert row["state"] == "dead"
    assert row["failure"]["error"].startswith(
        "PermanentError: shell: program not found: espeak-ng (exit code 127)"
    )
    assert ws.exists("blog/2026-11-23.html") and ws.exists("podcast/2026-11-23.txt")


def test_auto_blog_signed_webhook_to_serve_creates_the_log_and_its_post(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the auto-blog example served with a Standard Webhooks secret
    ws = copy_example("auto-blog", tmp_path / "blog", capsys)
    ws.write("eventrunner.toml", FAST_RUNTIME)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    monkeypatch.setenv("BLOG_HOOK_SECRET", secret)
    body = b"# Wednesday: sent from my phone\n\nThe latch closes now.\n"
    with Server(ws.root, tmp_path / "logs") as server:
        assert server.url is not None
        url = f"{server.url}/hooks/auto-blog/daily_log?date=2026-11-26"

        # When a POST arrives with a wrong signature, then with a good one
        stamp = int(time.time())
        bad = sign_standard_webhook(
            "whsec_" + base64.b64encode(b"x" * 24).decode(), "m1", stamp, body
        )
        assert _post(url, body, "m1", stamp, bad)[0] == 401
        status, answer = _post(
            url, body, "m2", stamp, sign_standard_webhook(secret, "m2", stamp, body)
        )

        # Then the log is stored and the post and the index follow
        assert status == 202, answer
        assert answer["path"] == "logs/2026-11-26.md"
        # (202 means durably spooled; the file is written from the spool right after)
        wait_until(lambda: read(ws.path("logs/2026-11-26.md")) == body.decode(), "the log file")
        post = wait_until(lambda: read(ws.path("blog/2026-11-26.html")) or "", "the new post")
        assert "<title>Wednesday: sent from my phone</title>" in post
        wait_until(
            lambda: "2026-11-26.html" in (read(ws.path("blog/index.html")) or ""),
            "the index to list the new post",
        )
        wait_until(lambda: read(ws.path("podcast/2026-11-26.txt")), "the new script")
        # ... and a date that fails the pattern's constraint is refused
        bad_date = url.replace("2026-11-26", "yesterday")
        sig = sign_standard_webhook(secret, "m3", stamp, body)
        assert _post(bad_date, body, "m3", stamp, sig)[0] == 400
        assert server.stop() == 0


def _post(url: str, body: bytes, msg_id: str, stamp: int, signature: str) -> tuple[int, Any]:
    """POST a webhook with Standard Webhooks headers; (status, JSON answer)."""
    req = urllib.request.Request(url, data=body, method="POST")
    for key, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(stamp)),
        ("webhook-signature", signature),
        ("Content-Type", "text/markdown"),
    ):
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


# -- both examples in one workspace ----------------------------------------------------------------

NEWS_BLOG_PIPELINE = """\
# Publishes each feed's digest (made by the news pipeline) as a page of the blog.
name = "news-blog"

[stages.news_page]
handler = "markdown"
inputs  = { digest = "digest/{source}.md" }
output  = "blog/news-{source}.html"
params  = { template = "<!doctype html><title>{title}</title><main>{content}</main>\\n" }
"""


def test_news_digest_feeds_a_blog_page_across_pipelines_and_only_the_changed_feed_reruns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_host: FakeHost
) -> None:
    # Given one workspace with both examples and a third pipeline reading the news digests
    ws = copy_example("news", tmp_path / "both", capsys)
    blog = EXAMPLES / "auto-blog"
    for rel in ("pipelines/auto-blog.toml", "handlers/blog.py", "handlers/podcast.py"):
        shutil.copy(blog / rel, ws.path(rel))
    shutil.copytree(blog / "logs", ws.path("logs"))
    ws.write("pipelines/news-blog.toml", NEWS_BLOG_PIPELINE)

    # When it runs
    ws.run(expect=0 if HAVE_ESPEAK else 1)

    # Then each digest is a blog page, and the daily index lists only the daily posts
    page = ws.read("blog/news-hn.html")
    assert page.startswith("<!doctype html><title>hn digest</title><main><h1>hn digest</h1>")
    assert "Show HN: An event-driven file pipeline runner written in Python" in page
    assert "Tidewater" not in page and "Replacing our nightly batch" in ws.read(
        "blog/news-blog.html"
    )
    assert "news-" not in ws.read("blog/index.html")
    assert ws.exists("blog/2026-11-25.html")

    # When one feed changes
    before = finished(ws)
    edit(ws.path("feeds/hn.xml"), "<item>", NEW_ITEM + "<item>")
    ws.run()

    # Then its split, the new item, its digest and its blog page ran; nothing else did
    new = eid("hn", item_key(ws, "hn", NEW_LINK))
    assert reran(before, finished(ws)) == {
        ("news.items", "hn"),
        ("news.score", new),
        ("news.notify", new),
        ("news.digest", "hn"),
        ("news-blog.news_page", "hn"),
    }
    assert "Python 3.14 ships a faster asyncio event loop" in ws.read("blog/news-hn.html")


def test_examples_have_readmes_and_valid_pipelines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("news", "auto-blog"):
        ws = copy_example(name, tmp_path / name, capsys)
        assert ws.exists("README.md")
        res = ws.cli("validate")
        assert res.code == 0, res.out + res.err


def test_echo_tour_does_what_the_readme_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the README tour's workspace, built once (7 executions)
    ws = copy_example("echo", tmp_path / "echo", capsys)
    assert ws.run()["executed"] == 7
    before = finished(ws)
    # When hello.txt changes as the tour says
    ws.write("inbox/hello.txt", "hello again\n")
    ws.run()
    # Then shout and count re-ran; the count is byte-identical (2 words, 13 characters),
    # so the summary stayed fresh (early cutoff)
    assert json.loads(ws.read("counts/hello.json")) == {"chars": 13, "words": 2}
    assert reran(before, finished(ws)) == {("echo.shout", "hello"), ("echo.count", "hello")}
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    assert "(2 words, 13 characters)" in readme


def test_the_package_declares_the_licence_it_ships() -> None:
    from importlib.metadata import metadata

    root = EXAMPLES.parent
    assert (root / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    meta = metadata("eventrunner")
    assert meta.get("License-Expression") == "MIT" or meta.get("License") == "MIT"
