"""Code identity of a handler, computed from source through `ast`, never by importing it.

The identity covers the function and every module-level definition it reaches, transitively,
inside the handlers folder (helpers, classes, constants, imports of workspace modules);
comments, docstrings and formatting do not count. A name imported from outside the handlers
folder counts by its import text only. The stage's params and `version` are combined with this
identity by the caller.
"""

from __future__ import annotations

import ast
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from eventrunner.core.errors import HandlerError
from eventrunner.state.hashing import combine, hash_bytes

_VERSION = "codeid-1"  # bump when the normalisation changes, so every stage re-runs once
_RACY_NS = 2_000_000_000  # mtimes this close to the parse time may hide a same-tick edit

Chain = tuple[str, ...]  # a name and the attributes read from it: helpers.fmt -> ("helpers", "fmt")


@dataclass(frozen=True)
class _Import:
    """One imported name: `import module [as asname]` or `from .module import name [as asname]`."""

    module: str
    level: int = 0
    name: str | None = None
    asname: str | None = None

    def text(self) -> str:
        alias = f" as {self.asname}" if self.asname else ""
        if self.name is None:
            return f"import {self.module}{alias}"
        return f"from {'.' * self.level}{self.module} import {self.name}{alias}"


@dataclass(frozen=True)
class _Binding:
    """A top-level statement binding a name; `imp` is set when the binding is an import."""

    stmt: int
    imp: _Import | None = None
    direct_import: bool = False  # a plain top-level import: its alias text is all that counts


@dataclass
class _Module:
    """A parsed workspace module: its statements and which of them bind each name."""

    name: str  # dotted, relative to the handlers root; "" is the root itself
    is_package: bool
    stmts: list[ast.stmt]
    bindings: dict[str, list[_Binding]] = field(default_factory=dict)
    stars: list[_Import] = field(default_factory=list)
    _dumps: dict[int, str] = field(default_factory=dict)
    _refs: dict[int, set[Chain]] = field(default_factory=dict)

    def dump(self, i: int) -> str:
        if i not in self._dumps:
            self._dumps[i] = ast.dump(self.stmts[i], annotate_fields=True, include_attributes=False)
        return self._dumps[i]

    def refs(self, i: int) -> set[Chain]:
        if i not in self._refs:
            self._refs[i] = _collect_refs(self.stmts[i])
        return self._refs[i]


_Entry = tuple[int, int, str, bool, _Module]  # size, mtime_ns, content digest, racy, module
# Plain dict reads and writes are atomic: a race between threads costs a second parse at worst.
_cache: dict[tuple[Path, str], _Entry] = {}
_parse_count = 0  # parses performed since start; read by tests to prove the cache works


def clear_cache() -> None:
    """Forget every parsed module."""
    _cache.clear()


def code_identity(module_path: Path, function: str, handlers_root: Path) -> str:
    """Hex digest of `function` in `module_path` and everything it uses inside `handlers_root`.

    Raises HandlerError when the module cannot be read or parsed, or defines no `function`.
    Params and the stage's `version` are not included: the caller combines them.
    """
    parts = [_VERSION]
    for (mod, nm), text in sorted(_walk(module_path, function, handlers_root).texts.items()):
        parts += [mod, nm, text]
    return combine(*parts)


def covered(module_path: Path, function: str, handlers_root: Path) -> list[str]:
    """What the code identity of `function` counts, as "module.name" (the dashboard shows it)."""
    return sorted(f"{mod}.{nm}" for mod, nm in _walk(module_path, function, handlers_root).texts)


def _walk(module_path: Path, function: str, handlers_root: Path) -> _Walker:
    walker = _Walker(handlers_root)
    name = _module_name(module_path, walker.root)
    module = walker.load_file(Path(module_path), name, module_path.name == "__init__.py")
    if function not in module.bindings:
        raise HandlerError(f"{walker.display(Path(module_path))}: no function {function!r}")
    walker.visit(module, (function,))
    walker.run()
    return walker


class _Walker:
    """Follows references from one handler across the workspace modules it reaches."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.texts: dict[tuple[str, str], str] = {}
        self.seen: set[tuple[object, ...]] = set()  # (module, chain, how it is reached)
        self.found: dict[str, _Module | None] = {}
        self.todo: list[tuple[_Module, Chain]] = []

    def display(self, path: Path) -> str:
        """Path as the user knows it: relative to the workspace when possible."""
        try:
            return Path(os.path.abspath(path)).relative_to(self.root.parent).as_posix()
        except ValueError:
            return str(path)

    def visit(self, mod: _Module, chain: Chain) -> None:
        """Queue the name `chain[0]` of `mod`, read with the attributes `chain[1:]`."""
        self.todo.append((mod, chain))

    def run(self) -> None:
        # A work list rather than recursion: long helper chains cannot hit the recursion limit.
        while self.todo:
            self._step(*self.todo.pop())

    def _step(self, mod: _Module, chain: Chain) -> None:
        """Count the name `chain[0]` of `mod`, and follow it (and its attributes) further."""
        head, rest = chain[0], chain[1:]
        bindings = mod.bindings.get(head)
        if bindings is None:
            self._visit_star(mod, chain)
            return
        key = (mod.name, head)
        first = key not in self.texts
        if first:
            self.texts[key] = _binding_text(mod, bindings)
        for b in bindings:
            if b.imp is not None:
                if (mod.name, chain, b) not in self.seen:
                    self.seen.add((mod.name, chain, b))
                    self._follow_import(mod, b.imp, rest)
            elif first:
                for ref in sorted(mod.refs(b.stmt)):
                    self.visit(mod, ref)

    def _visit_star(self, mod: _Module, chain: Chain) -> None:
        # An unknown name may come from `from x import *`: look in workspace targets; an
        # outside target counts by its import text (the name may be a builtin after all).
        for imp in mod.stars:
            base = self._absolute(mod, imp)
            target = None if base is None else self.module(base)
            if target is None:
                self.texts[(mod.name, "*" + imp.text())] = imp.text()
            elif (target.name, chain) not in self.seen:
                self.seen.add((target.name, chain))
                self.visit(target, chain)

    def _follow_import(self, mod: _Module, imp: _Import, rest: Chain) -> None:
        base = self._absolute(mod, imp)
        if base is None:
            return
        if imp.name is None:
            # `import a.b` binds `a`; `import a.b as w` binds the module a.b itself.
            target = base if imp.asname else base.split(".")[0]
            self._visit_module(target, rest)
            return
        source = self.module(base)
        if source is None:
            return
        # Like the import system: an attribute of the module first, then a submodule.
        if imp.name in source.bindings or self.module(_join(base, imp.name)) is None:
            self.visit(source, (imp.name, *rest))
        else:
            self._visit_module(_join(base, imp.name), rest)

    def _visit_module(self, name: str, rest: Chain) -> None:
        """Follow `name.rest...` where `name` is a module: a submodule, a name, or all of it."""
        mod = self.module(name)
        if mod is None:
            return
        if not rest:
            self._visit_whole(mod)
        elif rest[0] not in mod.bindings and self.module(_join(name, rest[0])) is not None:
            self._visit_module(_join(name, rest[0]), rest[1:])
        else:
            self.visit(mod, rest)

    def _visit_whole(self, mod: _Module) -> None:
        # The module object itself is used (passed around, getattr): all of it counts.
        key = (mod.name, "")
        if key in self.texts:
            return
        self.texts[key] = "\n".join(mod.dump(i) for i in range(len(mod.stmts)))
        for name in sorted(mod.bindings):
            self.visit(mod, (name,))

    def _absolute(self, mod: _Module, imp: _Import) -> str | None:
        """Absolute dotted module of an import, or None when it leaves the handlers root."""
        if imp.level == 0:
            return imp.module
        package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
        parts = package.split(".") if package else []
        if imp.level - 1 > len(parts):
            return None
        return _join(".".join(parts[: len(parts) - (imp.level - 1)]), imp.module)

    def module(self, name: str) -> _Module | None:
        """The workspace module `name` ("" is the root), or None when it is not in the workspace."""
        if name not in self.found:
            self.found[name] = self._find(name)
        return self.found[name]

    def _find(self, name: str) -> _Module | None:
        base = self.root.joinpath(*name.split(".")) if name else self.root
        if name and os.path.isfile(str(base) + ".py"):
            return self.load_file(Path(str(base) + ".py"), name, False)
        if os.path.isfile(base / "__init__.py"):
            return self.load_file(base / "__init__.py", name, True)
        if os.path.isdir(base):
            return _Module(name, True, [])  # a namespace package: only submodules
        return None

    def load_file(self, path: Path, name: str, is_package: bool) -> _Module:
        """Parsed module at `path`, from the cache while its size, mtime and content match."""
        global _parse_count
        real = Path(os.path.realpath(path))
        try:
            st = os.stat(real)
            key = (real, name)
            entry = _cache.get(key)
            if entry and not entry[3] and entry[:2] == (st.st_size, st.st_mtime_ns):
                return entry[4]
            data = real.read_bytes()
        except OSError as e:
            raise HandlerError(f"{self.display(path)}: cannot read: {e.strerror}") from e
        digest = hash_bytes(data)
        racy = time.time_ns() - st.st_mtime_ns < _RACY_NS
        if entry and entry[2] == digest:
            module = entry[4]  # touched, not changed
        else:
            module = _parse(data, name, is_package, self.display(path))
            _parse_count += 1
        _cache[key] = (st.st_size, st.st_mtime_ns, digest, racy, module)
        return module


def _parse(data: bytes, name: str, is_package: bool, where: str) -> _Module:
    try:
        tree = ast.parse(data, filename=where)
    except SyntaxError as e:
        raise HandlerError(f"{where}:{e.lineno}: syntax error: {e.msg}") from e
    except ValueError as e:  # null bytes, on Python 3.11
        raise HandlerError(f"{where}: cannot parse: {e}") from e
    _strip_docstrings(tree)
    module = _Module(name, is_package, tree.body)
    for i, stmt in enumerate(tree.body):
        _index(module, i, stmt)
    return module


def _strip_docstrings(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0].value if node.body and isinstance(node.body[0], ast.Expr) else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                # An emptied body becomes `pass`, so `"doc"` alone equals `pass` alone.
                rest = node.body[1:]
                node.body = rest or ([] if isinstance(node, ast.Module) else [ast.Pass()])


def _index(module: _Module, i: int, stmt: ast.stmt) -> None:
    """Record the names statement `i` binds at module level."""

    def bind(name: str, imp: _Import | None = None, direct: bool = False) -> None:
        module.bindings.setdefault(name, []).append(_Binding(i, imp, direct))

    def bind_imports(node: ast.Import | ast.ImportFrom, direct: bool) -> None:
        for alias in node.names:
            if isinstance(node, ast.Import):
                imp = _Import(alias.name, asname=alias.asname)
                bind(alias.asname or alias.name.split(".")[0], imp, direct)
            elif alias.name == "*":
                module.stars.append(_Import(node.module or "", node.level, "*"))
            else:
                imp = _Import(node.module or "", node.level, alias.name, alias.asname)
                bind(alias.asname or alias.name, imp, direct)

    if isinstance(stmt, ast.Import | ast.ImportFrom):
        bind_imports(stmt, True)
        return
    todo: list[ast.AST] = [stmt]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bind(node.name)
            continue  # names inside are local to the function or class
        if isinstance(node, ast.Import | ast.ImportFrom):
            bind_imports(node, False)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bind(node.id)
        elif isinstance(node, ast.Attribute | ast.Subscript) and isinstance(node.ctx, ast.Store):
            base = node.value
            while isinstance(base, ast.Attribute | ast.Subscript):
                base = base.value
            if isinstance(base, ast.Name):
                bind(base.id)  # CONFIG["x"] = 1 changes CONFIG
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bind(node.name)
        elif isinstance(
            node, ast.Lambda | ast.GeneratorExp | ast.ListComp | ast.SetComp | ast.DictComp
        ):
            continue  # their variables are local
        todo.extend(ast.iter_child_nodes(node))


def _binding_text(mod: _Module, bindings: list[_Binding]) -> str:
    texts: list[str] = []
    for b in bindings:
        text = b.imp.text() if b.direct_import and b.imp else mod.dump(b.stmt)
        if text not in texts:
            texts.append(text)
    return "\n".join(texts)


def _collect_refs(node: ast.AST) -> set[Chain]:
    """Every name read in `node`, with the attributes read from it."""
    found: set[Chain] = set()
    todo = [node]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Attribute):
            attrs = [node.attr]
            base = node.value
            while isinstance(base, ast.Attribute):
                attrs.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                found.add((base.id, *reversed(attrs)))
            else:
                todo.append(base)
            continue
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                found.add((node.id,))
        elif isinstance(node, ast.Global):
            found.update((n,) for n in node.names)
        elif isinstance(node, ast.arg | ast.AnnAssign):
            _string_annotations(node.annotation, todo)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            _string_annotations(node.returns, todo)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _string_annotations(note: ast.AST | None, todo: list[ast.AST]) -> None:
    """Queue the parsed text of string annotations such as "Post" or list["Post"]."""
    for node in ast.walk(note) if note is not None else ():
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                todo.append(ast.parse(node.value, mode="eval"))
            except (SyntaxError, ValueError):
                pass  # a plain string in a Literal[...], not a forward reference


def _module_name(path: Path, root: Path) -> str:
    try:
        rel = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        try:  # one of them was given through a symlink
            rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        except ValueError:
            return path.stem  # outside the root: a top-level module of its own
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _join(package: str, name: str) -> str:
    return f"{package}.{name}" if package and name else package or name
