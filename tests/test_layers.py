"""The parts of the package and the arrows between them (DESIGN section 10), checked from source.

Each module's imports are read with `ast` (nothing is imported), so the test also sees imports
made lazily inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "eventrunner"

# Lower parts first: a module may import its own part and the parts listed before it.
ORDER = ["core", "state", "workspace", "run", "service", "server", "cli"]
# Modules at the package root that every part may use.
ROOT_MODULES = {"eventrunner"}
# What the pure core may import from outside the standard library: nothing.
CORE_FORBIDDEN = {"asyncio", "aiohttp", "pydantic", "watchfiles", "apscheduler", "xxhash", "fcntl"}
# Parts that must not know an event loop.
NO_LOOP = {"core": {"asyncio", "aiohttp"}, "state": {"asyncio", "aiohttp"}}


def module_name(path: Path) -> str:
    """`eventrunner/run/engine.py` -> `eventrunner.run.engine`."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(
    path: Path, text: str | None = None, *, typing_too: bool = True
) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, names) for every import statement in a module; with
    `typing_too=False`, not those under `if TYPE_CHECKING:` (they break cycles by design)."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    skipped: set[int] = set()
    if not typing_too:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield node.lineno, mod, [a.name for a in node.names]


def part_of(module: str) -> str | None:
    """The part a module of the package belongs to (`None` for the package root)."""
    parts = module.split(".")
    if parts[0] != "eventrunner":
        raise ValueError(module)
    if len(parts) == 1:
        return None
    return parts[1] if parts[1] in ORDER else None


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def arrow_problems(path: Path, text: str | None = None) -> list[str]:
    """Imports of `path` (or of `text` read as if it stood there) that point upward, into a
    forbidden library, or at a private name."""
    me = module_name(path)
    mine = part_of(me)
    problems = []
    runtime = {(line, mod) for line, mod, _ in imports_of(path, text, typing_too=False)}
    for line, mod, names in imports_of(path, text):
        # An import under TYPE_CHECKING names a type for an annotation and loads nothing: it
        # is no arrow between parts at run time (a lower part may annotate with a higher
        # part's type, e.g. the index with the loaded Workspace). Forbidden libraries count.
        typing_only = (line, mod) not in runtime
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        top = mod.split(".")[0]
        if mine == "core" and top in CORE_FORBIDDEN:
            problems.append(f"{where}: core imports {mod} (core is standard library only)")
        if mine in NO_LOOP and top in NO_LOOP[mine]:
            problems.append(f"{where}: {mine} imports {mod} ({mine} knows no event loop)")
        if top != "eventrunner" or typing_only:
            continue
        targets = [mod] + [f"{mod}.{n}" for n in names if mod.count(".") < 1]
        for target in targets:
            theirs = part_of(target)
            if theirs is None or mine is None:
                continue
            if ORDER.index(theirs) > ORDER.index(mine):
                problems.append(f"{where}: {mine} imports {target} ({theirs} is above {mine})")
            if mine == "core" and theirs != "core":
                problems.append(f"{where}: core imports {target} (core imports only core)")
        for n in names:
            if n.startswith("_") and not n.startswith("__") and mod != me:
                problems.append(f"{where}: imports the private name {n} from {mod}")
    return problems


def test_no_part_imports_a_part_above_it() -> None:
    problems = [p for path in all_modules() for p in arrow_problems(path)]
    assert problems == [], "\n".join(problems)


def test_package_modules_import_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    known = {module_name(p) for p in all_modules()}
    for path in all_modules():
        me = module_name(path)
        deps = graph.setdefault(me, set())
        for _line, mod, names in imports_of(path, typing_too=False):
            for target in [mod, *(f"{mod}.{n}" for n in names)]:
                if target in known and target != me and not me.startswith(target + "."):
                    deps.add(target)
    cycles = find_cycles(graph)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected set of more than one module, as a list (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_belongs_to_a_part() -> None:
    loose = [
        module_name(p)
        for p in all_modules()
        if part_of(module_name(p)) is None and module_name(p) not in ROOT_MODULES
    ]
    assert loose == []


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in all_modules()
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert big == {}


# Functions that are data literals (a document written as one expression), exempt from the
# length rule: splitting them would scatter one document over many functions.
DATA_LITERALS = {"eventrunner.server.openapi.build_document"}


def test_functions_stay_short() -> None:
    long = {}
    for p in all_modules():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{module_name(p)}.{node.name}"
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 60 and name not in DATA_LITERALS:
                    long[name] = n
    assert long == {}


def test_the_readme_tree_lists_every_module() -> None:
    # The README's Development section shows the package tree: a part per 2-space line
    # ("core/"), its modules on 4-space lines ("patterns.py", "signatures/" for a package)
    readme = (PACKAGE.parent / "README.md").read_text()
    tree = readme[readme.index("\neventrunner/\n") + 1 :]
    listed, part = set(), ""
    for line in tree[: tree.index("```")].splitlines()[1:]:
        name = line.split()[0]
        if name.endswith("/"):
            name += "__init__.py"
        if line.startswith("    "):
            listed.add(f"{part}/{name}")
        else:
            listed.add(name)
            part = name.split("/")[0]
    modules = {str(p.relative_to(PACKAGE)) for p in all_modules()}
    assert sorted(modules - listed) == [], "missing from the README tree: add a line per module"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from eventrunner.server.app import create_app\n", "run imports eventrunner.server.app"),
        ("from eventrunner.cli import main\n", "run imports eventrunner.cli (cli is above run)"),
        ("from eventrunner.state.store import _read\n", "private name _read"),
        ("import asyncio\n", None),
    ],
)
def test_the_check_fails_on_a_forbidden_import(source: str, expected: str | None) -> None:
    # Given run/engine.py with one more import
    engine = PACKAGE / "run" / "engine.py"
    before = set(arrow_problems(engine))
    # When the check reads it
    added = set(arrow_problems(engine, engine.read_text() + "\n" + source)) - before
    # Then the forbidden arrow is named, and an allowed import adds nothing
    if expected is None:
        assert added == set()
    else:
        assert any(expected in p for p in added), added
