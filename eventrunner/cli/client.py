"""Talk to a running `eventrunner serve` of the same workspace (commands that change state, and
`status`, which the server answers from its state table)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventrunner.core.errors import EventRunnerError, ServerUnavailable, UnknownName, UsageError

if TYPE_CHECKING:  # urllib.request (ssl, http.client) costs a `run` ~20 ms when no server runs
    import urllib.request

    from eventrunner.workspace.settings import Settings

SERVER_FILE = "server.json"


def server_address(state_dir: Path) -> str | None:
    """Base URL of the server that owns this workspace, or None when none is running."""
    try:
        info = json.loads((state_dir / SERVER_FILE).read_bytes())
        pid = int(info["pid"])
        os.kill(pid, 0)
    except (
        FileNotFoundError,
        ValueError,
        KeyError,
        TypeError,
        ProcessLookupError,
        PermissionError,
    ):
        return None
    return str(info["url"])


def call_server(
    settings: Settings, url: str, action: str, body: dict[str, Any], timeout: float | None = 30
) -> Any:
    """POST a management action to the server; errors come back as EventRunnerError."""
    import urllib.request

    pipeline = body.pop("pipeline", None) or "_"
    req = urllib.request.Request(
        f"{url}/api/pipelines/{pipeline}/{action}",
        data=json.dumps({k: v for k, v in body.items() if v is not None}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    return _send(settings, url, req, action, timeout)


def get_from_server(settings: Settings, url: str, path: str, timeout: float | None = 30) -> Any:
    """GET a JSON answer (path like "/api/pipelines") from the server; errors as in call_server."""
    import urllib.request

    return _send(settings, url, urllib.request.Request(f"{url}{path}"), path, timeout)


def _send(
    settings: Settings, url: str, req: urllib.request.Request, what: str, timeout: float | None
) -> Any:
    import urllib.error
    import urllib.request

    if settings.server.token_env:
        token = os.environ.get(settings.server.token_env)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        code = ""
        try:
            err = json.loads(exc.read())["error"]
            message, code = err["message"], err.get("code", "")
        except Exception:
            message = f"HTTP {exc.code}"
        if exc.code == 404:
            raise UnknownName(message) from None
        if exc.code in (400, 422):
            raise UsageError(message) from None
        if code == "shutting_down":
            raise ServerUnavailable(f"server at {url} stopped: {message}") from None
        if exc.code == 503:  # still starting (or storage failing): not an answer yet
            raise ServerUnavailable(f"server at {url} is not ready: {message}") from None
        raise EventRunnerError(f"server refused {what}: {message}") from None
    except OSError as exc:
        raise ServerUnavailable(f"server at {url} did not answer: {exc}") from None
