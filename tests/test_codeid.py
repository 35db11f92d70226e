"""Code identity of handlers: what counts as a code change and what does not."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventrunner.core.errors import HandlerError
from eventrunner.workspace import codeid
from eventrunner.workspace.codeid import clear_cache, code_identity

Write = Callable[[str, str], Path]
Ident = Callable[[str, str], str]


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def handlers(tmp_path: Path) -> Path:
    root = tmp_path / "handlers"
    root.mkdir()
    return root


@pytest.fixture
def write(handlers: Path) -> Write:
    def write(relpath: str, source: str) -> Path:
        path = handlers / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def ident(handlers: Path) -> Ident:
    def ident(module: str, function: str) -> str:
        return code_identity(handlers / f"{module}.py", function, handlers)

    return ident


BLOG = """
    import json

    PREFIX = "post:"

    def fmt(text):
        return PREFIX + text.strip()

    def write_post(entry):
        return fmt(entry["title"])

    def other(entry):
        return json.dumps(entry)
"""


def test_comment_only_edit_keeps_the_identity(write: Write, ident: Ident) -> None:
    write("blog.py", BLOG)
    before = ident("blog", "write_post")
    write(
        "blog.py",
        "# a header comment\n" + textwrap.dedent(BLOG).replace("strip()", "strip()  # trim"),
    )
    assert ident("blog", "write_post") == before


def test_docstring_edits_keep_the_identity(write: Write, ident: Ident) -> None:
    source = '''
        """Module docstring."""

        class Post:
            """A post."""

            def title(self):
                """The title."""
                return "t"

        def helper():
            """Only a docstring."""

        def write_post(entry):
            """Write a post."""
            helper()
            return Post().title()
    '''
    write("blog.py", source)
    before = ident("blog", "write_post")
    write("blog.py", source.replace("docstring", "text").replace("A post", "Some post"))
    assert ident("blog", "write_post") == before
    write("blog.py", source.replace('"""Only a docstring."""', "pass"))
    assert ident("blog", "write_post") == before


def test_reformatting_keeps_the_identity(write: Write, ident: Ident) -> None:
    write("blog.py", BLOG)
    before = ident("blog", "write_post")
    write(
        "blog.py",
        """
        import json
        PREFIX = (
            'post:'
        )


        def fmt(text): return PREFIX + text.strip(
        )
        def write_post(entry):

            return fmt(
                entry['title'],
            )
        def other(entry): return json.dumps(entry)
        """,
    )
    assert ident("blog", "write_post") == before


def test_body_edit_changes_the_identity(write: Write, ident: Ident) -> None:
    write("blog.py", BLOG)
    before = ident("blog", "write_post")
    write("blog.py", BLOG.replace('entry["title"]', 'entry["name"]'))
    assert ident("blog", "write_post") != before


def test_decorator_and_default_value_edits_change_the_identity(write: Write, ident: Ident) -> None:
    source = """
        import functools

        LIMIT = 3

        def traced(fn):
            return fn

        @traced
        def write_post(entry, limit=LIMIT):
            return entry[:limit]
    """
    write("blog.py", source)
    before = ident("blog", "write_post")
    write("blog.py", source.replace("return fn", "return functools.wraps(fn)(fn)"))
    decorator_edited = ident("blog", "write_post")
    write("blog.py", source.replace("LIMIT = 3", "LIMIT = 4"))
    assert len({before, decorator_edited, ident("blog", "write_post")}) == 3


def test_helper_edit_changes_only_the_functions_that_use_it(write: Write, ident: Ident) -> None:
    # Given two handlers, one of which uses fmt
    write("blog.py", BLOG)
    user, other = ident("blog", "write_post"), ident("blog", "other")
    # When fmt is edited
    write("blog.py", BLOG.replace("text.strip()", "text.lower()"))
    # Then only the user's identity changes
    assert ident("blog", "write_post") != user
    assert ident("blog", "other") == other


def test_unrelated_edits_and_new_functions_leave_a_handler_alone(
    write: Write, ident: Ident
) -> None:
    write("blog.py", BLOG)
    before = ident("blog", "write_post")
    edited = textwrap.dedent(BLOG).replace("json.dumps", "json.loads")
    write("blog.py", "def first():\n    return 0\n" + edited)
    assert ident("blog", "write_post") == before


def test_transitive_helper_edit_changes_the_identity(write: Write, ident: Ident) -> None:
    source = """
        def c():
            return 1

        def b():
            return c() + 1

        def a():
            return b() + 1

        def unrelated():
            return 0
    """
    write("chain.py", source)
    before, unrelated = ident("chain", "a"), ident("chain", "unrelated")
    write("chain.py", source.replace("return 1", "return 2"))
    assert ident("chain", "a") != before
    assert ident("chain", "unrelated") == unrelated


def test_constant_edit_changes_only_its_users(write: Write, ident: Ident) -> None:
    source = """
        RATE: float = 0.5
        NAMES = {"a": 1}
        NAMES["b"] = 2

        def uses_rate():
            return RATE

        def uses_names():
            return NAMES

        def uses_nothing():
            return 1
    """
    write("m.py", source)
    before = {f: ident("m", f) for f in ("uses_rate", "uses_names", "uses_nothing")}
    write("m.py", source.replace("0.5", "0.25"))
    assert ident("m", "uses_rate") != before["uses_rate"]
    assert ident("m", "uses_names") == before["uses_names"]
    write("m.py", source.replace('NAMES["b"] = 2', 'NAMES["b"] = 3'))
    assert ident("m", "uses_names") != before["uses_names"]
    assert ident("m", "uses_rate") == before["uses_rate"]
    assert ident("m", "uses_nothing") == before["uses_nothing"]


def test_class_method_edit_changes_the_users_of_the_class(write: Write, ident: Ident) -> None:
    source = """
        class Post:
            def title(self):
                return "t"

        def write_post(entry: "Post"):
            return entry.title()

        def make():
            return Post()

        def other():
            return 1
    """
    write("blog.py", source)
    before = {f: ident("blog", f) for f in ("write_post", "make", "other")}
    write("blog.py", source.replace('return "t"', 'return "T"'))
    assert ident("blog", "write_post") != before["write_post"]  # via the string annotation
    assert ident("blog", "make") != before["make"]
    assert ident("blog", "other") == before["other"]


UTIL = """
    def x(v):
        return v + 1

    def y(v):
        return v - 1
"""


@pytest.mark.parametrize(
    "use",
    [
        "from util import x\ndef handler(v):\n    return x(v)\n",
        "import util\ndef handler(v):\n    return util.x(v)\n",
        "import util as u\ndef handler(v):\n    return u.x(v)\n",
        "from . import util\ndef handler(v):\n    return util.x(v)\n",
        "from .util import x as ex\ndef handler(v):\n    return ex(v)\n",
    ],
)
def test_helper_in_another_workspace_module_is_followed(
    write: Write, ident: Ident, use: str
) -> None:
    # Given a handler using util.x and another one using nothing from util
    write("util.py", UTIL)
    write("blog.py", use + "\ndef other(v):\n    return v\n")
    user, other = ident("blog", "handler"), ident("blog", "other")
    # When an unrelated function of util is edited, nothing changes
    write("util.py", UTIL.replace("v - 1", "v - 2"))
    assert ident("blog", "handler") == user
    # When the helper used is edited, only its user changes
    write("util.py", UTIL.replace("v + 1", "v + 2"))
    assert ident("blog", "handler") != user
    assert ident("blog", "other") == other


@pytest.mark.parametrize(
    ("layout", "use"),
    [
        ("pkg/sub.py", "from pkg.sub import x\ndef handler(v):\n    return x(v)\n"),
        ("pkg/sub.py", "import pkg.sub\ndef handler(v):\n    return pkg.sub.x(v)\n"),
        ("pkg/sub/__init__.py", "from pkg import sub\ndef handler(v):\n    return sub.x(v)\n"),
        ("pkg/sub/__init__.py", "from .pkg.sub import x\ndef handler(v):\n    return x(v)\n"),
    ],
)
def test_helper_in_a_nested_package_is_followed(
    write: Write, ident: Ident, layout: str, use: str
) -> None:
    write(layout, UTIL)
    write("blog.py", use)
    before = ident("blog", "handler")
    write(layout, UTIL.replace("v - 1", "v - 2"))
    assert ident("blog", "handler") == before
    write(layout, UTIL.replace("v + 1", "v + 2"))
    assert ident("blog", "handler") != before


def test_relative_import_inside_a_package_is_followed(write: Write, handlers: Path) -> None:
    write("pkg/helpers.py", UTIL)
    write("pkg/blog.py", "from .helpers import x\ndef handler(v):\n    return x(v)\n")
    path = handlers / "pkg" / "blog.py"
    before = code_identity(path, "handler", handlers)
    write("pkg/helpers.py", UTIL.replace("v + 1", "v + 2"))
    assert code_identity(path, "handler", handlers) != before


def test_outside_import_counts_by_its_text_only(write: Write, ident: Ident) -> None:
    source = """
        import json
        from os import path, sep

        def handler(entry):
            return json.dumps(entry) + sep
    """
    write("blog.py", source)
    before = ident("blog", "handler")
    write("blog.py", source.replace("from os import path, sep", "from os import sep"))
    assert ident("blog", "handler") == before
    write("blog.py", source.replace("import json", "import ujson as json"))
    assert ident("blog", "handler") != before


def test_workspace_module_named_like_the_stdlib_is_followed(write: Write, ident: Ident) -> None:
    write("json.py", "def dumps(value):\n    return str(value)\n")
    write("blog.py", "import json\ndef handler(entry):\n    return json.dumps(entry)\n")
    before = ident("blog", "handler")
    write("json.py", "def dumps(value):\n    return repr(value)\n")
    assert ident("blog", "handler") != before


def test_module_used_as_a_whole_counts_entirely(write: Write, ident: Ident) -> None:
    write("util.py", UTIL)
    write("blog.py", "import util\ndef handler(name):\n    return getattr(util, name)(1)\n")
    before = ident("blog", "handler")
    write("util.py", UTIL.replace("v - 1", "v - 2"))
    assert ident("blog", "handler") != before


def test_missing_function_raises_handler_error_naming_the_file(write: Write, ident: Ident) -> None:
    write("blog.py", BLOG)
    with pytest.raises(HandlerError, match=r"handlers/blog\.py: no function 'nope'"):
        ident("blog", "nope")


def test_missing_module_raises_handler_error_naming_the_file(ident: Ident) -> None:
    with pytest.raises(HandlerError, match=r"handlers/ghost\.py"):
        ident("ghost", "handler")


def test_syntax_error_raises_handler_error_with_file_and_line(write: Write, ident: Ident) -> None:
    write("blog.py", "def handler(:\n    pass\n")
    with pytest.raises(HandlerError, match=r"handlers/blog\.py:1: syntax error"):
        ident("blog", "handler")


def test_syntax_error_in_a_used_helper_module_names_that_module(write: Write, ident: Ident) -> None:
    write("util.py", "x = (\n")
    write("blog.py", "from util import x\ndef handler():\n    return x\n")
    with pytest.raises(HandlerError, match=r"handlers/util\.py:1"):
        ident("blog", "handler")


def test_cycles_terminate(write: Write, ident: Ident) -> None:
    write(
        "a.py",
        """
        import a
        from b import pong

        def ping(n):
            return pong(n - 1) if n else a.ping

        def handler():
            return ping(3)
        """,
    )
    write("b.py", "from a import ping\ndef pong(n):\n    return ping(n)\n")
    before = ident("a", "handler")
    write("b.py", "from a import ping\ndef pong(n):\n    return ping(n - 1)\n")
    assert ident("a", "handler") != before


def test_edited_file_is_parsed_again(write: Write, ident: Ident) -> None:
    # Given an identity computed (and its module cached)
    write("blog.py", "def handler():\n    return 1\n")
    before = ident("blog", "handler")
    # When the file is rewritten at once, same size, possibly within the same mtime tick
    write("blog.py", "def handler():\n    return 2\n")
    # Then the new content counts
    assert ident("blog", "handler") != before


def test_many_identities_parse_each_module_once(write: Write, ident: Ident) -> None:
    write("util.py", UTIL)
    for m in range(5):
        body = "".join(f"def h{i}(v):\n    return util.x(v) + {i}\n" for i in range(10))
        write(f"m{m}.py", "import util\n" + body)
    start = codeid._parse_count
    ids = {ident(f"m{m}", f"h{i}") for m in range(5) for i in range(10)}
    assert len(ids) == 50
    assert codeid._parse_count - start == 6


def test_edit_within_the_same_mtime_tick_is_seen(write: Write, ident: Ident) -> None:
    # Given an identity computed right after the file was written
    path = write("blog.py", "def handler():\n    return 1\n")
    stamp = path.stat().st_mtime_ns
    before = ident("blog", "handler")
    # When it is rewritten with the same size and, as on a coarse clock, the same mtime
    write("blog.py", "def handler():\n    return 2\n")
    os.utime(path, ns=(stamp, stamp))
    # Then the cache does not trust the stat and the new content counts
    assert ident("blog", "handler") != before


def test_touched_file_is_not_parsed_again(write: Write, ident: Ident) -> None:
    path = write("blog.py", BLOG)
    before = ident("blog", "write_post")
    start = codeid._parse_count
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert ident("blog", "write_post") == before
    assert ident("blog", "write_post") == before
    assert codeid._parse_count == start
