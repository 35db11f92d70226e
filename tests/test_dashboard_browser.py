"""The dashboard in a real Chromium (Debian's package, driven by Playwright's async API) against
a real `eventrunner serve` subprocess on 127.0.0.1, port 0.

Skipped, with the reason, where /usr/bin/chromium is missing (.ci/run installs it). Every page
visited is checked for console errors and for requests leaving the server's origin; a
screenshot of each page at desktop and phone width is saved under tests/artifacts/dashboard/.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from dashboard_helpers import HANDLERS, HOSTILE, dashboard_workspace
from serve_helpers import Server, cli, count_runs, read, until

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "dashboard"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
TOKEN_ENV = "ER_BROWSER_TOKEN"
TOKEN = "browser-token-3c4d9e"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"
    ),
    pytest.mark.timeout(60),
    pytest.mark.asyncio(loop_scope="module"),  # one browser for the module (it takes ~2 s to start)
]

if CHROMIUM.exists():
    from playwright.async_api import Browser, Page, async_playwright, expect
else:  # pragma: no cover - the whole module is skipped
    Browser = Page = Any  # type: ignore[misc,assignment]


@dataclass
class Watch:
    """What a page did: console errors, uncaught exceptions, every URL it requested."""

    base: str
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("requestfailed", self._failed)
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("response", self._answered)
        return page

    def _failed(self, request: Any) -> None:
        # Leaving a page aborts what it still loads (its event stream, a late favicon).
        if "ERR_ABORTED" not in str(request.failure):
            self.errors.append(f"failed: {request.url} {request.failure}")

    def _answered(self, response: Any) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.status}: {response.url}")

    def check(self) -> None:
        assert self.errors == [], self.errors
        outside = [u for u in self.urls if not u.startswith(self.base + "/")]
        assert outside == [], outside


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS + sandbox)
        try:
            yield b
        finally:
            await b.close()


@contextlib.contextmanager
def serving(root: Path, tmp: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with Server(root, tmp / "logs") as server:
            yield server
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def settled(server: Server) -> None:
    """Nothing queued or running on the server."""

    def idle() -> bool:
        status, body = server.get("/api/pipelines/_/status")
        return status == 200 and body["queue_depth"] == 0 and body["running"] == []

    await until(idle, "the server to go idle")


async def shoot(page: Page, base: str, pages: dict[str, str]) -> None:
    """Visit each page at every width and save a full-page screenshot of it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for label, (w, h) in SIZES.items():
        await page.set_viewport_size({"width": w, "height": h})
        for name, path in pages.items():
            await page.goto(base + path)
            await page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 900})


async def count_text(page: Page, stage: str, state: str) -> str:
    return await page.locator(f'a[data-count="{stage}|{state}"]').first.inner_text()


# -- every page ------------------------------------------------------------------------------------


async def test_overview_counts_equal_status_and_every_page_loads_cleanly(
    browser: Browser, tmp_path: Path
) -> None:
    root = dashboard_workspace(tmp_path / "ws", n=3)
    with serving(root, tmp_path) as server:
        await settled(server)
        assert server.url is not None
        watch = Watch(server.url)
        page = watch.attach(await browser.new_page(viewport={"width": 1280, "height": 900}))
        await page.goto(server.url + "/")
        await expect(page.locator("#live-status")).to_have_text("live")
        status = json.loads(cli(root, "status", "--json").stdout)
        for stage, counts in status["pipelines"]["p"]["stages"].items():
            for state, n in counts.items():
                assert await count_text(page, f"p.{stage}", state) == str(n), (stage, state)
        pages = {
            "overview": "/",
            "graph": "/graph",
            "stage": "/stages/p.upper",
            "stage-failed": "/stages/p.upper?state=failed",
            "entity": "/entities/e001",
            "entity-failed": "/entities/flaky?stage=p.upper",
            "entity-hostile": "/entities/" + quote(HOSTILE, safe=""),
            "failures": "/failures",
            "events": "/events",
            "activity": "/activity",
            "preview": "/actions/preview?action=rerun_down&stage=p.upper&id=e00",
        }
        await shoot(page, server.url, pages)
        # The keyboard reaches the skip link first, and it leads to the content.
        await page.goto(server.url + "/")
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.textContent")
        assert focused == "Skip to content"
        # The hostile id is text on the page, not markup that ran.
        await page.goto(server.url + "/entities/" + quote(HOSTILE, safe=""))
        await expect(page.locator("h1 code")).to_have_text(HOSTILE)
        await page.close()
        watch.check()


# -- live ------------------------------------------------------------------------------------------


async def test_a_dropped_file_turns_the_stage_running_then_fresh_without_a_reload(
    browser: Browser, tmp_path: Path
) -> None:
    root = dashboard_workspace(tmp_path / "ws", n=2)
    with serving(root, tmp_path) as server:
        await settled(server)
        assert server.url is not None
        watch = Watch(server.url)
        page = watch.attach(await browser.new_page())
        await page.goto(server.url + "/")
        await expect(page.locator("#live-status")).to_have_text("live")
        await page.evaluate("window.notReloaded = true")
        fresh = page.locator('a[data-count="p.upper|fresh"]')
        await expect(fresh).to_have_text("2")
        # When a file drops whose handler waits for a release file
        (root / "inbox/slow.txt").write_text("please wait\n")
        # Then the stage shows it running, and fresh once it finishes
        await expect(page.locator('a[data-count="p.upper|running"]')).to_have_text("1")
        await expect(page.locator("#running-list")).to_contain_text("slow")
        (root / "release").write_text("go\n")
        await expect(fresh).to_have_text("3")
        await expect(page.locator('a[data-count="p.upper|running"]')).to_have_text("0")
        await expect(page.locator('a[data-count="p.count|fresh"]')).to_have_text("3")
        assert await page.evaluate("window.notReloaded") is True
        # The events page follows live too, and holds what arrives while paused
        await page.goto(server.url + "/events")
        await expect(page.locator("#live-status")).to_have_text("live")
        await page.get_by_role("button", name="Pause").click()
        (root / "inbox/quick.txt").write_text("quick one\n")
        await expect(page.locator("#ev-buffered")).to_contain_text("new while paused")
        assert await page.locator("#event-rows tr", has_text="quick").count() == 0
        await page.get_by_role("button", name="Resume").click()
        await expect(page.locator("#event-rows tr", has_text="quick").first).to_be_visible()
        await page.close()
        watch.check()


# -- failures and actions --------------------------------------------------------------------------

# The handler reads a replacement table kept beside it (handler data, not code and not a
# declared input): a broken table fails every run until someone fixes it and asks for a retry.
TABLE_HANDLERS = """\
import json
from pathlib import Path

TABLE = Path(__file__).with_name("table.json")


def upper(ctx, text: str) -> str:
    table = json.loads(TABLE.read_text())
    return "".join(table.get(c, c) for c in text.upper())


def count(ctx, text: str) -> str:
    return f"{len(text.split())} words\\n"
"""


async def test_a_failing_entity_shows_its_traceback_and_retry_after_the_fix_makes_it_fresh(
    browser: Browser, tmp_path: Path
) -> None:
    root = dashboard_workspace(tmp_path / "ws", n=1)
    (root / "handlers/h.py").write_text(TABLE_HANDLERS)
    (root / "handlers/table.json").write_text('{"O": "0", ')  # broken
    with serving(root, tmp_path) as server:
        await settled(server)
        assert server.url is not None
        watch = Watch(server.url)
        page = watch.attach(await browser.new_page())
        await page.goto(server.url + "/entities/e000?stage=p.upper")
        await expect(page.locator("h2 .badge")).to_have_text("failed")
        await expect(page.locator("pre.traceback")).to_contain_text("JSONDecodeError")
        await expect(page.locator("pre.traceback")).to_contain_text('handlers/h.py", line 8')
        # When the handler's table is fixed and Retry is clicked
        (root / "handlers/table.json").write_text('{"O": "0"}')
        await page.get_by_role("button", name="Retry").click()
        # Then the page (reloaded after the POST, then kept live) shows it fresh
        await expect(page.locator("h2 .badge")).to_have_text("fresh")
        assert read(root / "up/e000.txt") == "HELL0 NUMBER 0\n"
        await page.close()
        watch.check()


async def test_holding_an_entity_stops_it_being_rerun_when_its_input_changes(
    browser: Browser, tmp_path: Path
) -> None:
    root = dashboard_workspace(tmp_path / "ws", n=3)
    with serving(root, tmp_path) as server:
        await settled(server)
        assert server.url is not None
        watch = Watch(server.url)
        page = watch.attach(await browser.new_page())
        await page.goto(server.url + "/entities/e001?stage=p.upper")
        await page.get_by_role("button", name="Hold").click()
        await expect(page.locator("h2 .badge")).to_have_text("held")
        ran = count_runs(root, "upper", "e001")
        # When its input and another one change together
        (root / "inbox/e001.txt").write_text("changed while held\n")
        (root / "inbox/e002.txt").write_text("changed too\n")
        await until(lambda: read(root / "up/e002.txt") == "CHANGED TOO\n", "e002 to re-run")
        await settled(server)
        # Then the held one did not run, and its page says why it is stale underneath
        assert count_runs(root, "upper", "e001") == ran
        await page.reload()
        await expect(page.locator("h2 .badge")).to_have_text("held")
        await expect(page.locator(".reasons")).to_contain_text("INPUT_CHANGED")
        await page.get_by_role("button", name="Release").click()
        await expect(page.locator("h2 .badge")).to_have_text("fresh")
        assert read(root / "up/e001.txt") == "CHANGED WHILE HELD\n"
        await page.close()
        watch.check()


FLAGGED_HANDLERS = HANDLERS.replace(
    '    if "fatal" in text:',
    '    if (WS / "flags" / ctx.entity_id).exists() or "fatal" in text:',
)


async def test_a_bulk_retry_by_filter_clears_every_dead_state_of_a_stage(
    browser: Browser, tmp_path: Path
) -> None:
    root = dashboard_workspace(tmp_path / "ws", n=6, extra={"handlers/h.py": FLAGGED_HANDLERS})
    (root / "flags").mkdir()
    for i in range(6):
        (root / f"flags/e{i:03d}").write_text("")
    with serving(root, tmp_path) as server:
        await settled(server)
        assert server.url is not None
        assert (
            json.loads(cli(root, "status", "--json").stdout)["pipelines"]["p"]["stages"]["upper"][
                "dead"
            ]
            == 7
        )  # six flagged and "gone"
        for i in range(6):
            (root / f"flags/e{i:03d}").unlink()  # the cause is gone; the states stay dead
        watch = Watch(server.url)
        page = watch.attach(await browser.new_page())
        await page.goto(server.url + "/stages/p.upper")
        await page.get_by_label("State", exact=True).select_option("dead")
        await expect(page.locator("#entities .summary strong")).to_have_text("7")
        await page.get_by_role("link", name="Retry…").click()
        await expect(page.locator(".preview-box h2")).to_contain_text("Retry: 7 states")
        await shoot_panel(page)
        await page.get_by_role("button", name="Confirm: Retry 7").click()
        await expect(page.locator(".preview-box.done")).to_contain_text("7 states")
        await settled(server)
        counts = json.loads(cli(root, "status", "--json").stdout)["pipelines"]["p"]["stages"]
        assert counts["upper"]["dead"] == 1  # "gone" fails for good again; the others ran
        assert counts["upper"]["fresh"] == 6
        await page.goto(server.url + "/stages/p.upper?state=dead")
        await expect(page.locator("#entities .summary strong")).to_have_text("1")
        await page.close()
        watch.check()


async def shoot_panel(page: Page) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "bulk-preview-desktop.png"), full_page=True)


# -- sign-in and cross-site requests ---------------------------------------------------------------


class _Attacker(BaseHTTPRequestHandler):
    """Serves a page that, once loaded, POSTs a form and a fetch to the dashboard."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><html><body>
<form id="f" method="post" action="{self.target}/actions/retry">
<input name="stage" value="p.upper"><input name="state" value="failed">
<input name="csrf" value="guessed"></form>
<script>
fetch("{self.target}/api/pipelines/_/retry", {{method: "POST", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}});
document.getElementById("f").submit();
</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def attacker(target: str) -> Iterator[str]:
    handler = type("Handler", (_Attacker,), {"target": target})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def test_sign_in_keeps_the_token_out_of_urls_and_a_cross_site_post_is_refused(
    browser: Browser, tmp_path: Path
) -> None:
    root = dashboard_workspace(tmp_path / "ws", n=1)
    toml = root / "eventrunner.toml"
    toml.write_text(f'[server]\ntoken_env = "{TOKEN_ENV}"\n\n' + toml.read_text())
    with serving(root, tmp_path, {TOKEN_ENV: TOKEN}) as server:
        assert server.url is not None
        watch = Watch(server.url)
        context = await browser.new_context()
        page = watch.attach(await context.new_page())
        await page.goto(server.url + "/failures")
        await expect(page).to_have_url(server.url + "/login?next=%2Ffailures")
        await shoot(page, server.url, {"login": "/login?next=%2Ffailures"})
        await page.get_by_label("Token").fill(TOKEN)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(server.url + "/failures")
        await expect(page.locator("#live-status")).to_have_text("live")
        cookies = await context.cookies()
        (session,) = [c for c in cookies if c["name"] == "er_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert TOKEN not in session["value"]
        assert all(TOKEN not in u for u in watch.urls)
        watch.check()
        # When a page on another site, in the same browser, posts to the dashboard
        answers: list[tuple[str, int]] = []
        evil = await context.new_page()
        evil.on("response", lambda r: answers.append((r.url, r.status)))
        with attacker(server.url) as site:
            await evil.goto(site + "/")
            await evil.wait_for_url(server.url + "/actions/retry")
        # Then the form POST is refused and nothing was retried
        assert (server.url + "/actions/retry", 403) in answers
        flaky = await page.goto(server.url + "/stages/p.upper?state=failed")
        assert flaky is not None and flaky.status == 200
        await expect(page.locator("#entities .summary strong")).to_have_text("2")
        await context.close()
