"""The OpenAPI document: a valid 3.1 description of every route, and a live server that never
answers 5xx to what schemathesis generates from it."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from eventrunner.server.app import create_app
from eventrunner.server.openapi import build_document
from eventrunner.service.runtime import Runtime
from eventrunner.workspace.load import load_workspace

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

TOKEN_ENV = "ER_TEST_OPENAPI_TOKEN"
TOKEN = "openapi-token-3e8b"
HOOK_ENV = "ER_TEST_OPENAPI_HOOK_SECRET"
HOOK_SECRET = "whsec_" + base64.b64encode(b"openapi test key, 32 bytes long.").decode()

FILES = {
    "eventrunner.toml": f"""\
        data_root = "data"

        [server]
        token_env = "{TOKEN_ENV}"
        """,
    "pipelines/site.toml": """\
        name = "site"

        [sources.page]
        pattern = "pages/{slug}.md"
        webhook = { secret_env = "ER_TEST_OPENAPI_HOOK_SECRET" }

        [sources.note]
        pattern = "notes/{slug}.txt"
        webhook = { allow_unsigned = true, max_body = 256 }

        [stages.render]
        handler = "site:render"
        inputs  = { page = "pages/{slug}.md" }
        output  = "html/{slug}.html"

        [stages.index]
        handler = "site:index"
        inputs  = { pages = "html/{slug}.html" }
        output  = "index.html"
        """,
    "handlers/site.py": """\
        def render(page: str) -> str:
            return "<p>" + page + "</p>"


        def index(pages: dict[str, str]) -> str:
            return "".join(sorted(pages))
        """,
    "data/pages/home.md": "home\n",
    "data/pages/about.md": "about\n",
}


def make_ws(root: Path) -> Path:
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
async def document(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], web.Application]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with Runtime(load_workspace(make_ws(tmp_path / "ws")), watch=False) as rt:
        await rt.start()
        app = create_app(rt)
        client = await aiohttp_client(app)
        try:
            resp = await client.get(
                "/api/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert resp.status == 200
            return await resp.json(), app
        finally:
            await client.close()


async def test_document_is_valid_openapi_3_1(
    document: tuple[dict[str, Any], web.Application],
) -> None:
    doc, _ = document
    assert doc["openapi"] == "3.1.0"
    validate(doc)


async def test_every_route_of_the_app_is_described(
    document: tuple[dict[str, Any], web.Application],
) -> None:
    doc, app = document
    described = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    routes = set()
    for route in app.router.routes():
        if (route.name or "").startswith("ui."):
            continue  # the dashboard's HTML pages are not part of the JSON API
        path = route.resource.canonical if route.resource is not None else ""
        # aiohttp adds HEAD beside every GET: it is described by the GET.
        method = "GET" if route.method == "HEAD" else route.method
        routes.add((path, method))
    assert routes, "the app has no routes"
    assert routes <= described, sorted(routes - described)
    assert described <= routes, sorted(described - routes)


async def test_secured_operations_are_exactly_the_management_routes(
    document: tuple[dict[str, Any], web.Application],
) -> None:
    doc, _ = document
    assert doc["security"] == [{"bearer": []}]
    public = {
        path
        for path, ops in doc["paths"].items()
        for op in ops.values()
        if op.get("security") == []
    }
    assert public == {"/healthz", "/readyz", "/hooks/{pipeline}/{source}"}


# -- schemathesis against a live `eventrunner serve` -----------------------------------------


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `eventrunner serve` on an ephemeral port, token configured."""
    root = tmp_path_factory.mktemp("openapi")
    ws = make_ws(root / "ws")
    out, err = root / "serve.out", root / "serve.err"
    env = {**os.environ, TOKEN_ENV: TOKEN, HOOK_ENV: HOOK_SECRET}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventrunner.cli", "-w", str(ws), "serve", "--port", "0"],
            stdout=stdout,
            stderr=stderr,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(rb"serving .* at (http://\S+)", out.read_bytes())):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.02)
        yield m.group(1).decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Anything the server logged as an internal error would be a 500 we did not see.
    assert "internal error" not in err.read_text(), err.read_text()


# Real names, plus unknown and hostile ones.
KNOWN = {
    "pipeline": ["site", "_", "nope", ".."],
    "source": ["page", "note", "render", "nope"],
    "entity": ["home", "about", "_", "nope", "a,b=c", "%zz", "../x", "%2e%2e"],
    "stage": ["render", "index", "site.render", "site.index", "nope", "site.nope"],
}


def steered(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with names drawn from KNOWN, so that generated requests reach the handlers
    behind the "no such pipeline" 404s (arbitrary text would almost never name one)."""
    doc = copy.deepcopy(doc)
    for path, ops in doc["paths"].items():
        for op in ops.values():
            # Parameter objects are shared between operations: replace, never edit in place.
            op["parameters"] = [
                {**p, "schema": {"enum": KNOWN[p["name"]]}} if p["name"] in KNOWN else p
                for p in op.get("parameters", [])
            ]
            if path.startswith("/hooks/"):
                op["parameters"].append(
                    {"name": "slug", "in": "query", "required": True, "schema": {"type": "string"}}
                )
    for model in ("InvalidateRequest", "RetryRequest", "HoldRequest"):
        props = doc["components"]["schemas"][model]["properties"]
        names = [{"enum": KNOWN["stage"]}, {"type": "array", "items": {"enum": KNOWN["entity"]}}]
        for field, schema in zip(("stage", "entities"), names, strict=True):
            nullable = {"type": "null"} in props[field].get("anyOf", [])
            props[field] = {"anyOf": [schema, {"type": "null"}]} if nullable else schema
    return doc


@pytest.fixture(scope="module")
def api_schema(live_url: str) -> Any:
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{live_url}/api/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
        ),
        timeout=10,
    ) as resp:
        doc = json.loads(resp.read())
    validate(doc)
    return schemathesis.openapi.from_dict(steered(doc))


OPERATIONS = sorted(
    (path, method)
    for path, ops in build_document()["paths"].items()
    for method in ops
    if path != "/api/events"  # the stream never ends by itself: tested in test_api.py
)


# schemathesis.pytest.from_fixture() does not run under pytest 9 (it reads a removed private
# attribute of the node), so each operation's strategies are driven through hypothesis here.
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_operation_answers_a_server_error(
    api_schema: Any, live_url: str, path: str, method: str
) -> None:
    operation = api_schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    # Unknown query parameters are ignored on purpose, which negative_data_rejection counts as
    # accepting bad input; entity values have per-source pattern rules that the document cannot
    # state, so the hooks' 400s would count as "schema-valid request rejected".
    excluded = [negative_data_rejection]
    if path.startswith("/hooks/"):
        excluded.append(positive_data_acceptance)

    @given(case=strategy)
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        case.call_and_validate(
            base_url=live_url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            excluded_checks=excluded,
            timeout=10,
        )

    call()
