"""Find, check and import handler functions by path, never through sys.path."""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from eventrunner.core.errors import HandlerError, did_you_mean


@dataclass(frozen=True)
class HandlerRef:
    """Where a handler lives: module file, function name and the folder its package spans."""

    spec: str
    module: str  # dotted, relative to root ("blog", "pkg.mod")
    function: str
    path: Path
    root: Path
    stock: bool

    @property
    def display(self) -> str:
        """The module's path as a user reads it: `handlers/blog.py` (relative to the workspace)."""
        try:  # the workspace's handlers/ folder, or the stock package's folder
            return self.path.relative_to(self.root.parent).as_posix()
        except ValueError:
            return str(self.path)

    def source_hash(self) -> str:
        """Hash of the module file as it is on disk: a changed module starts failures afresh."""
        return xxhash.xxh3_128_hexdigest(self.path.read_bytes())


def stock_root() -> Path:
    """Folder of the stock handlers shipped with eventrunner (package eventrunner_handlers)."""
    spec = importlib.util.find_spec("eventrunner_handlers")
    if spec is None or not spec.submodule_search_locations:
        raise HandlerError("stock handlers package eventrunner_handlers is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(spec: str, handlers_dir: Path) -> HandlerRef:
    """Turn "module:function" (workspace) or "name" (stock) into a HandlerRef; HandlerError if absent."""
    if ":" in spec:
        module, _, function = spec.partition(":")
        root, stock = handlers_dir, False
    else:
        module, function, root, stock = spec, spec, stock_root(), True
    if (
        not module
        or not function
        or not all(part.isidentifier() for part in module.split("."))
        or not function.isidentifier()
    ):
        raise HandlerError(f'handler {spec!r} must be "module:function" (or a stock handler name)')
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return HandlerRef(spec, module, function, path, root, stock)
    where = "stock handlers" if stock else f"{handlers_dir.name}/"
    hint = did_you_mean(module, _module_names(root)) if root.is_dir() else ""
    raise HandlerError(f"handler {spec!r}: no module {module!r} in {where}{hint}")


def _module_names(root: Path) -> list[str]:
    """Module names directly in a handlers folder (files and packages), for suggestions."""
    names = [p.stem for p in root.glob("*.py") if p.stem != "__init__"]
    return names + [p.name for p in root.iterdir() if (p / "__init__.py").is_file()]


def check_signature(ref: HandlerRef, input_names: list[str]) -> str | None:
    """Compare the function's parameters with the stage's inputs from the AST; a reason or None."""
    try:
        tree = ast.parse(ref.path.read_bytes(), filename=str(ref.path))
    except SyntaxError as exc:
        return f"{ref.display}:{exc.lineno}: syntax error: {exc.msg}"
    func = next(
        (
            n
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == ref.function
        ),
        None,
    )
    if func is None:
        defined = [
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        return (
            f"no function {ref.function!r} in {ref.path.name}{did_you_mean(ref.function, defined)}"
        )
    args = func.args
    positional = [a.arg for a in (*args.posonlyargs, *args.args)]
    names = positional + [a.arg for a in args.kwonlyargs]
    if names and names[0] == "ctx":
        names = names[1:]
    if args.kwarg is not None:
        return None
    n_defaults = len(args.defaults)
    required = set(positional[: len(positional) - n_defaults]) - {"ctx"}
    required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
    missing = sorted(required - set(input_names))
    unknown = sorted(set(input_names) - set(names))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"parameters without inputs: {', '.join(missing)}")
        if unknown:
            parts.append(f"inputs without parameters: {', '.join(unknown)}")
        return f"handler {ref.spec} signature does not match the inputs ({'; '.join(parts)})"
    return None


PRIVATE_PREFIX = "_eventrunner_ws_"


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compile from the source every time: __pycache__ keys on whole-second mtimes, so a quick
    same-size edit could otherwise run old bytecode under a manifest recording the new code."""

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        return compile(self.get_data(path), path, "exec", dont_inherit=True)


class _WorkspaceFinder(importlib.abc.MetaPathFinder):
    """Finds modules of the private handler packages (relative imports between handler modules)."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PRIVATE_PREFIX) or "." not in fullname or not path:
            return None
        name = fullname.rpartition(".")[2]
        for folder in path:
            for candidate, is_pkg in (
                (Path(folder) / name / "__init__.py", True),
                (Path(folder) / f"{name}.py", False),
            ):
                if candidate.is_file():
                    return importlib.util.spec_from_file_location(
                        fullname,
                        candidate,
                        loader=_SourceOnlyLoader(fullname, str(candidate)),
                        submodule_search_locations=[str(candidate.parent)] if is_pkg else None,
                    )
        return None


_FINDER = _WorkspaceFinder()
if _FINDER not in sys.meta_path:
    sys.meta_path.insert(0, _FINDER)


def _package_name(root: Path) -> str:
    """A private package name per handlers folder, so workspace modules never shadow the stdlib."""
    return PRIVATE_PREFIX + xxhash.xxh3_64_hexdigest(str(root.resolve()).encode())


def _ensure_package(root: Path, name: str) -> None:
    if name in sys.modules:
        return
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(root)]
    pkg.__package__ = name
    sys.modules[name] = pkg


def load(ref: HandlerRef) -> Callable[..., Any]:
    """Import the handler's module by path (fresh when the file changed) and return the function."""
    if ref.stock:
        modname = f"eventrunner_handlers.{ref.module}"
        module = importlib.import_module(modname)
    else:
        pkg = _package_name(ref.root)
        _ensure_package(ref.root, pkg)
        modname = f"{pkg}.{ref.module}"
        stamp = _stamp(ref.path)
        module = sys.modules.get(modname)  # type: ignore[assignment]
        if module is None or getattr(module, "__eventrunner_stamp__", None) != stamp:
            module = _import_path(modname, ref.path)
            module.__eventrunner_stamp__ = stamp  # type: ignore[attr-defined]
    func = getattr(module, ref.function, None)
    if not callable(func):
        raise HandlerError(
            f"handler {ref.spec!r}: {ref.path.name} has no function {ref.function!r}"
        )
    return func  # type: ignore[no-any-return]


def import_problem(ref: HandlerRef) -> str | None:
    """Import the handler's module as `run` will; the failure with file and line, or None."""
    try:
        load(ref)
    except HandlerError as exc:
        cause = exc.__cause__
        line = getattr(cause, "lineno", None) if isinstance(cause, SyntaxError) else None
        if cause is not None and line is None:
            frames = [
                f for f in traceback.extract_tb(cause.__traceback__) if f.filename == str(ref.path)
            ]
            line = frames[-1].lineno if frames else None
        where = f"{ref.display}:{line}" if line else ref.display
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        return f"{where}: cannot import: {reason}"
    return None


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _import_path(modname: str, path: Path) -> types.ModuleType:
    """Execute a module file under `modname`; parents are imported first for relative imports."""
    parent = modname.rpartition(".")[0]
    if parent and parent not in sys.modules:
        raise HandlerError(f"cannot import {modname}: parent package missing")
    spec = importlib.util.spec_from_file_location(
        modname,
        path,
        loader=_SourceOnlyLoader(modname, str(path)),
        submodule_search_locations=[str(path.parent)] if path.name == "__init__.py" else None,
    )
    if spec is None or spec.loader is None:
        raise HandlerError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    old = sys.modules.get(modname)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        if old is not None:
            sys.modules[modname] = old
        else:
            sys.modules.pop(modname, None)
        raise HandlerError(f"cannot import {path.name}: {type(exc).__name__}: {exc}") from exc
    return module


def forget(root: Path) -> None:
    """Drop every imported module of a handlers folder, so edited helpers are imported afresh."""
    pkg = _package_name(root)
    for name in [n for n in sys.modules if n == pkg or n.startswith(pkg + ".")]:
        sys.modules.pop(name, None)
