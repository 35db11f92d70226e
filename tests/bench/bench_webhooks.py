"""Benchmark webhook intake over HTTP: durable acks per second and ack latency on loopback.

Run: python tests/bench/bench_webhooks.py [--seconds 5] [--clients 32] [--body 256] [--no-watch]
                                           [--intake-only] [--keep]

32 concurrent aiohttp clients POST signed Standard Webhooks deliveries (distinct entities)
for a few seconds against, in turn:
  (a) a real `eventrunner serve` subprocess, intake fsync on (the default);
  (b) the same with `[server] intake_fsync = false`;
  (c) a bare aiohttp app in its own process whose handler reads the body and answers 202.
The served workspace has a cheap stage on the webhook source, so processing runs alongside
intake; the table says how many deliveries were processed when the load stopped and how long
the rest took. Works in tests/bench/work/ (ignored by git), emptied before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

REPO = Path(__file__).resolve().parents[2]
WORK = Path(__file__).resolve().parent / "work" / "webhooks"
SECRET_ENV = "ER_BENCH_HOOK_SECRET"
SECRET = "whsec_" + base64.b64encode(b"benchmark key, thirty-two bytes!").decode()

PIPELINE = """\
name = "bench"

[sources.event]
pattern = "events/{item}.json"
webhook = { secret_env = "ER_BENCH_HOOK_SECRET" }

[stages.digest]
handler = "bench:digest"
inputs  = { body = "events/{item}.json" }
output  = "digests/{item}.txt"
"""

HANDLERS = """\
def digest(body: bytes) -> str:
    return f"{len(body)} bytes\\n"
"""

BARE_APP = """\
import sys
from aiohttp import web

async def hook(request):
    await request.read()
    return web.json_response({"entity": "x", "path": "x", "event_id": "x"}, status=202)

async def on_startup(app):
    pass

app = web.Application()
app.router.add_post("/hooks/{pipeline}/{source}", hook)
runner = web.AppRunner(app, access_log=None)

async def main():
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"serving bare at http://127.0.0.1:{port}", flush=True)
    import asyncio
    await asyncio.Event().wait()

import asyncio
asyncio.run(main())
"""


@dataclass
class Result:
    """One mode's numbers."""

    acks: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    processed_at_stop: int | None = None
    drain_s: float | None = None
    fsync_ms: float | None = None
    per_batch: float | None = None
    server_cpu_s: float | None = None


def make_workspace(root: Path, fsync: bool, stage: bool = True) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    files = {
        "eventrunner.toml": f'data_root = "data"\n\n[server]\nintake_fsync = {str(fsync).lower()}\n',
        "pipelines/bench.toml": PIPELINE if stage else PIPELINE.split("[stages.")[0],
        "handlers/bench.py": HANDLERS,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    (root / "data").mkdir()
    return root


def start(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    out = log.with_suffix(".out")
    with out.open("wb") as stdout, log.with_suffix(".err").open("wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env={**os.environ, **env})
    deadline = time.monotonic() + 60
    while not (m := re.search(rb"serving .* at (http://\S+)", out.read_bytes())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start:\n{log.with_suffix('.err').read_text()}")
        time.sleep(0.05)
    return proc, m.group(1).decode()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(url: str, clients: int, seconds: float, body_size: int, result: Result) -> None:
    """`clients` concurrent senders, each waiting for its answer before the next POST."""
    webhook = Webhook(SECRET)
    pad = "x" * max(0, body_size - 40)
    stop_at = 0.0

    async def sender(http: aiohttp.ClientSession, c: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            item = f"c{c:02d}-{n:06d}"
            body = f'{{"item": "{item}", "pad": "{pad}"}}'
            msg_id = f"msg_{item}"
            stamp = datetime.now(tz=UTC)
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(stamp.timestamp())),
                "webhook-signature": webhook.sign(msg_id, stamp, body),
            }
            began = time.perf_counter()
            async with http.post(
                "/hooks/bench/event", data=body.encode(), headers=headers, params={"item": item}
            ) as resp:
                await resp.read()
            result.latencies.append(time.perf_counter() - began)
            if resp.status == 202:
                result.acks += 1
            else:
                result.errors[resp.status] = result.errors.get(resp.status, 0) + 1
            n += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector) as http:
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(sender(http, c) for c in range(clients)))
        result.elapsed = time.perf_counter() - started


def count_files(folder: Path) -> int:
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.name.endswith(".txt") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


async def scrape(url: str) -> dict[str, float]:
    """A few /metrics figures: executions succeeded, fsync count/sum, records by outcome."""
    async with aiohttp.ClientSession(url) as http, http.get("/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "eventrunner_executions_total" and s.labels.get("outcome") == "succeeded":
                out["succeeded"] = out.get("succeeded", 0) + s.value
            elif s.name in ("eventrunner_fsync_seconds_count", "eventrunner_fsync_seconds_sum"):
                out[s.name.rsplit("_", 1)[1]] = s.value
            elif s.name == "eventrunner_intake_records_total":
                out[s.labels["outcome"]] = s.value
    return out


async def run_served(fsync: bool, args: argparse.Namespace, stage: bool = True) -> Result:
    ws = make_workspace(WORK / f"fsync-{fsync}-stage-{stage}", fsync, stage)
    cmd = [sys.executable, "-m", "eventrunner.cli.main", "-w", str(ws), "serve", "--port", "0"]
    if args.no_watch:
        cmd.append("--no-watch")
    proc, url = start(cmd, WORK / f"serve-{fsync}", {SECRET_ENV: SECRET})
    result = Result()
    try:
        cpu0 = cpu_seconds(proc.pid)
        await load(url, args.clients, args.seconds, args.body, result)
        result.server_cpu_s = cpu_seconds(proc.pid) - cpu0
        stopped = time.perf_counter()
        # Processed = outputs on disk (counting them does not load the server; /metrics would:
        # its state counts walk every entity).
        result.processed_at_stop = count_files(ws / "data" / "digests") if stage else None
        while stage and count_files(ws / "data" / "digests") < result.acks:
            if time.perf_counter() - stopped > args.drain_timeout:
                break
            await asyncio.sleep(0.05)
        else:
            result.drain_s = time.perf_counter() - stopped
        m = await scrape(url)
        if fsync and m.get("count"):
            result.fsync_ms = m["sum"] / m["count"] * 1000
            result.per_batch = m.get("committed", 0) / m["count"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return result


async def run_bare(args: argparse.Namespace) -> Result:
    script = WORK / "bare_app.py"
    script.write_text(BARE_APP)
    proc, url = start([sys.executable, str(script)], WORK / "bare", {})
    result = Result()
    try:
        cpu0 = cpu_seconds(proc.pid)
        await load(url, args.clients, args.seconds, args.body, result)
        result.server_cpu_s = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.kill()
        proc.wait()
    return result


def row(name: str, r: Result) -> str:
    cuts = statistics.quantiles(r.latencies, n=100) if len(r.latencies) > 1 else [0.0] * 99
    total = r.acks + sum(r.errors.values())
    errors = ",".join(f"{k}:{v}" for k, v in sorted(r.errors.items())) or "0"

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    processed = (
        "-"
        if r.processed_at_stop is None
        else f"{r.processed_at_stop} ({r.processed_at_stop / max(r.acks, 1):.0%})"
    )
    drain = (
        "-"
        if r.processed_at_stop is None
        else fmt(r.drain_s, ".1f")
        if r.drain_s is not None
        else "timeout"
    )
    cpu = fmt(r.server_cpu_s / r.elapsed if r.server_cpu_s is not None else None, ".2f")
    return (
        f"| {name} | {r.acks / r.elapsed:8.0f} | {cuts[49] * 1000:6.2f} | {cuts[98] * 1000:6.2f} "
        f"| {total:6d} | {errors:6} | {processed:>15} | {drain:>7} | {fmt(r.fsync_ms, '.2f'):>8} "
        f"| {fmt(r.per_batch, '.1f'):>9} | {cpu:>10} |"
    )


async def amain(args: argparse.Namespace) -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    try:
        print(
            f"{args.clients} clients, {args.seconds:g} s per mode, ~{args.body} B signed bodies, "
            f"distinct entities, watcher {'off' if args.no_watch else 'on'}, {os.cpu_count()} CPUs"
        )
        head = ["mode                         ", "  acks/s", "p50 ms", "p99 ms", "posts ", "errors"]
        head += ["processed at stop", "drain s", "fsync ms", "acks/sync", "server CPU"]
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("-" * (len(c) + 2) for c in head) + "|")
        modes = [
            ("(a) eventrunner serve, fsync on ", lambda: run_served(True, args)),
            ("(b) eventrunner serve, fsync off", lambda: run_served(False, args)),
            ("(c) bare aiohttp app, 202      ", lambda: run_bare(args)),
        ]
        if args.intake_only:
            modes.insert(
                2, ("(a') serve, fsync on, no stage ", lambda: run_served(True, args, False))
            )
        for name, run in modes:
            print(row(name, await run()), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--body", type=int, default=256, help="approximate body size in bytes")
    parser.add_argument("--no-watch", action="store_true", help="serve --no-watch")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument(
        "--intake-only", action="store_true", help="add a row: fsync on, no stage on the source"
    )
    parser.add_argument("--keep", action="store_true", help="keep tests/bench/work/webhooks")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
