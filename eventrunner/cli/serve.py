"""`eventrunner serve`: the runtime plus its HTTP server, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import ipaddress
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from eventrunner.cli.client import SERVER_FILE
from eventrunner.cli.common import workspace_path
from eventrunner.core.errors import UsageError
from eventrunner.state.files import atomic_write
from eventrunner.workspace.load import Workspace, load_workspace

log = logging.getLogger("eventrunner.serve")

_HTTP_SHUTDOWN = 2.0  # seconds open requests get to finish after the runtime stopped


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(ws: Workspace) -> None:
    """A non-loopback bind needs a management token: refuse to start without one."""
    server = ws.settings.server
    if not _is_loopback(server.host):
        token = os.environ.get(server.token_env) if server.token_env else None
        if not token:
            raise UsageError(
                f"refusing to bind {server.host} without a token: set [server] token_env and that variable"
            )


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind: which address, why, and how to choose another port."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another eventrunner serve, or another "
            f"program): choose another with --port N, [server] port or EVENTRUNNER_SERVER_PORT "
            f"(make demo PORT=N)"
        )
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on {where} (ports below 1024 need privileges): use --port N"
    return f"cannot listen on {where}: {exc.strerror or exc}"


async def serve(
    ws: Workspace,
    *,
    watch: bool = True,
    stop_event: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until `stop_event` is set: lock, watch and begin the look, listen, start the
    runtime, then wait."""
    from eventrunner.service.runtime import Runtime

    check_bind(ws)
    stop = stop_event or asyncio.Event()
    async with Runtime(ws, watch=watch, stop_event=stop) as rt:
        # The look's stats run in worker processes from here, while the server is imported.
        await rt.prepare()
        from aiohttp import web

        from eventrunner.server.app import create_app
        from eventrunner.server.guard import GUARD, GuardedSite, runner_args

        app = create_app(rt)
        # Requests still open once the runtime has stopped get this long, not aiohttp's 60 s.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_HTTP_SHUTDOWN,
            **runner_args(ws.settings.server),
        )
        await runner.setup()
        try:
            server = ws.settings.server
            site = GuardedSite(runner, app[GUARD], host=server.host, port=server.port)
            try:
                await site.start()
            except OSError as exc:
                raise UsageError(_bind_problem(server.host, server.port, exc)) from None
            # The bound address (port 0 picks a free one), through aiohttp's public API.
            bound = runner.addresses
            host, port = (
                bound[0][:2] if bound else (ws.settings.server.host, ws.settings.server.port)
            )
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
            atomic_write(
                ws.settings.state_dir / SERVER_FILE,
                json.dumps({"url": url, "pid": os.getpid()}).encode(),
            )
            await rt.start()
            log.info("ready at %s", url)
            if on_ready:
                on_ready(url)
            await stop.wait()
        finally:
            (ws.settings.state_dir / SERVER_FILE).unlink(missing_ok=True)
            await rt.close()
            await runner.cleanup()


def serve_command(args: argparse.Namespace) -> int:
    """CLI entry: exit 0 after a clean SIGINT/SIGTERM shutdown."""
    overrides: dict[str, Any] = {}
    if args.host:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port is not None:
        overrides.setdefault("server", {})["port"] = args.port
    ws = load_workspace(workspace_path(args), overrides, cached=True)
    for noisy in ("apscheduler", "watchfiles", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("eventrunner").setLevel(
        min(logging.getLogger("eventrunner").getEffectiveLevel(), logging.INFO)
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(url: str) -> None:
            # The index is loaded and long-lived: keep it out of the collector's full passes.
            gc.freeze()
            gc.enable()
            print(f"eventrunner: serving {ws.root} at {url} (Ctrl-C to stop)", flush=True)

        # Loading a large index allocates millions of objects that all survive; collecting
        # meanwhile only re-traverses them (seconds at 100,000 entities).
        gc.disable()
        try:
            await serve(ws, watch=not args.no_watch, stop_event=stop, on_ready=ready)
        finally:
            gc.enable()

    asyncio.run(main())
    print("eventrunner: stopped", file=sys.stderr, flush=True)
    stuck = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("eventrunner-handler") and t.is_alive()
    ]
    # Worker processes of executor = "process" still running a handler after the grace period:
    # the interpreter would join them at exit, however long their handler takes (issue 14.14).
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.kill()
    stuck += [w.name for w in workers]
    if stuck:
        # Sync handlers that outlived shutdown_grace still run in pool threads, which Python joins
        # at exit (forever, for a hung handler). Their work was not committed and state is saved.
        log.warning("leaving %d handler(s) still running after the grace period", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0
