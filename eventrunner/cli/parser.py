"""The command line's grammar: every command, its options with a help line each, and examples.

One table (COMMANDS) feeds argparse and the shell completion scripts (completion.py). Light
on purpose: a no-change `run` parses its arguments before anything else is imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eventrunner import __version__

Arg = tuple[tuple[str, ...], dict[str, Any]]

STATE_NAMES = "fresh, stale, running, failed, dead, held, waiting, orphaned"


def _a(*flags: str, **kwargs: Any) -> Arg:
    return flags, kwargs


_PIPELINE = _a("--pipeline", metavar="P", help="only the stages of pipeline P")
_STAGE = _a("--stage", metavar="S", help="only stage S (bare `shout` or qualified `echo.shout`)")
_ALLOW_HELD = _a(
    "--allow-held",
    action="store_true",
    help="held states, and states waiting only on held ones, do not make the exit code 1",
)
_STAGE_POS = _a("stage", metavar="STAGE", help="the stage (bare or pipeline.stage)")
_ENTITIES = _a("entities", nargs="*", metavar="ENTITY_ID", help="entity ids (default: all)")

# name -> (help, examples, takes --json, arguments)
COMMANDS: dict[str, tuple[str, list[str], bool, list[Arg]]] = {
    "init": (
        "scaffold a working workspace (pipeline, handler, sample data)",
        ["eventrunner init blog && cd blog && eventrunner run"],
        False,
        [_a("dir", nargs="?", type=Path, default=Path("."), metavar="DIR",
            help="folder to create the workspace in (default: the current folder)")],
    ),
    "validate": (
        "check pipeline files and handlers; exit 2 when invalid, warn about silent no-ops",
        ["eventrunner validate", "eventrunner validate --json"],
        True,
        [],
    ),
    "run": (
        "bring everything (or the selection) up to date once; exit 1 unless it is fresh after "
        "(held states excepted)",
        ["eventrunner run", "eventrunner run --stage shout --entity hello",
         "eventrunner run && ./deploy.sh    # a gate: deploys only when everything is fresh"],
        True,
        [_PIPELINE, _STAGE,
         _a("--entity", metavar="ID", help="only this entity id of the selected stages"),
         _a("--dry-run", action="store_true", help="list what would run now, run nothing"),
         _a("-j", "--jobs", type=int, default=None, metavar="N",
            help="handlers running at once (default: [runtime] concurrency)")],
    ),
    "status": (
        "per-stage counts by state; with --check, exit 1 unless everything is fresh",
        ["eventrunner status", "eventrunner status --check --allow-held", "eventrunner status -v"],
        True,
        [_PIPELINE,
         _a("--check", action="store_true",
            help="list every state that is not fresh and exit 1 when there is one"),
         _ALLOW_HELD],
    ),
    "entities": (
        "list states with their reasons",
        ["eventrunner entities --state failed", "eventrunner entities --stage shout --limit 20"],
        True,
        [_PIPELINE, _STAGE,
         _a("--state", metavar="X", help=f"only states in state X ({STATE_NAMES})"),
         _a("--limit", type=int, metavar="N", help="at most N rows")],
    ),
    "explain": (
        "why each stage of an entity is or is not stale",
        ["eventrunner explain 2026-11-25", "eventrunner explain hello --stage count --json"],
        True,
        [_a("entity", metavar="ENTITY_ID", help="the entity id, e.g. 2026-11-25 or source=hn,item=42"),
         _STAGE, _PIPELINE],
    ),
    "logs": (
        "what the last attempt of a state printed and logged (stdout, stderr, ctx.log)",
        ["eventrunner logs shout hello", "eventrunner logs post 2026-11-25 | head -20"],
        True,
        [_STAGE_POS,
         _a("entity", metavar="ENTITY_ID", help="the entity id, e.g. 2026-11-25 or source=hn,item=42"),
         _PIPELINE],
    ),
    "invalidate": (
        "force re-runs",
        ["eventrunner invalidate shout hello", "eventrunner invalidate shout --downstream"],
        True,
        [_STAGE_POS, _ENTITIES,
         _a("--downstream", action="store_true",
            help="also every state that reads those outputs, transitively")],
    ),
    "retry": (
        "clear backoff and dead states so they run again",
        ["eventrunner retry", "eventrunner retry shout hello"],
        True,
        [_a("stage", nargs="?", metavar="STAGE", help="only this stage (default: every stage)"),
         _ENTITIES],
    ),
    "hold": (
        "put states on manual hold (they do not run until released)",
        ["eventrunner hold audio", "eventrunner hold audio 2026-11-25"],
        True,
        [_STAGE_POS, _ENTITIES],
    ),
    "release": (
        "release states from manual hold",
        ["eventrunner release audio"],
        True,
        [_STAGE_POS, _ENTITIES],
    ),
    "prune": (
        "delete orphaned outputs and their manifests",
        ["eventrunner prune --dry-run", "eventrunner prune"],
        True,
        [_a("--dry-run", action="store_true", help="list what would be deleted, delete nothing")],
    ),
    "graph": (
        "the dependency graph across pipelines",
        ["eventrunner graph", "eventrunner graph --format dot | dot -Tsvg > graph.svg",
         "eventrunner graph --json"],
        True,
        [_a("--format", choices=("text", "mermaid", "dot"), default="text",
            help="text (default), mermaid or dot (Graphviz)")],
    ),
    "serve": (
        "run the event-driven service (watch, webhooks, API) until Ctrl-C",
        ["eventrunner serve", "eventrunner serve --port 9000 --no-watch"],
        False,
        [_a("--host", metavar="H", help="address to bind (default: [server] host, 127.0.0.1)"),
         _a("--port", type=int, metavar="N", help="port to bind (default: [server] port, 8700; 0 picks a free one)"),
         _a("--no-watch", action="store_true",
            help="do not watch files (webhooks, schedules and the API only)")],
    ),
    "completion": (
        "print a shell completion script",
        ['eval "$(eventrunner completion bash)"    # in ~/.bashrc',
         'eval "$(eventrunner completion zsh)"     # in ~/.zshrc'],
        False,
        [_a("shell", choices=("bash", "zsh", "stages"),
            help="bash or zsh; `stages` prints the workspace's stage names (what the scripts ask)")],
    ),
}  # fmt: skip


def _globals(parser: argparse.ArgumentParser, *, after: bool) -> None:
    """-w and -v, before the command and again after it (`status -v`, `status -w DIR`); after
    it they default to SUPPRESS so that an absent flag does not undo one given before."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    parser.add_argument(
        "-w",
        "--workspace",
        type=Path,
        metavar="DIR",
        help="workspace folder (default: the nearest upward with eventrunner.toml or pipelines/)",
        **extra,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="more logging (-vv for debug)",
        **({"default": 0} | extra),
    )


def build_parser() -> argparse.ArgumentParser:
    """All commands and flags, from COMMANDS."""
    p = argparse.ArgumentParser(
        prog="eventrunner",
        description="Keep derived files fresh, per entity.",
        epilog="examples:\n  eventrunner run\n  eventrunner status --check\n"
        "  eventrunner COMMAND --help    # each command's options and examples",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"eventrunner {__version__}")
    _globals(p, after=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, examples, reads, arguments) in COMMANDS.items():
        sp = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for flags, kwargs in arguments:
            sp.add_argument(*flags, **kwargs)
        if reads:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        _globals(sp, after=True)
    return p
