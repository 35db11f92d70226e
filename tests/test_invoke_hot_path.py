"""The handler call's hot path (issue 15.4): what it caches and what it skips stays correct."""

from __future__ import annotations

import os

from conftest import MakeWorkspace

PIPELINE = """\
[stages.s]
handler = "h:s"
inputs  = { t = "in/{n}.txt" }
output  = "out/{n}.txt"
"""


def test_handler_that_links_ctx_output_path_elsewhere_and_returns_a_value_leaves_the_target_alone(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a handler that puts a link at ctx.output_path to a file outside its output, then
    # returns a value (the returned value wins; the write must not go through the link)
    ws = make_workspace(
        {
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": (
                "import os\n"
                "def s(ctx, t: str) -> str:\n"
                "    os.symlink(os.path.join(str(ctx.data_root), 'keep.txt'), ctx.output_path)\n"
                "    return 'returned ' + t\n"
            ),
            "keep.txt": "precious",
            "in/a.txt": "x",
        }
    )

    ws.run()

    assert ws.read("keep.txt") == "precious"
    assert ws.read("out/a.txt") == "returned x"
    assert not os.path.islink(ws.path("out/a.txt"))
    assert sorted(p.name for p in ws.root.rglob(".er-tmp-*")) == []


def test_handler_edited_to_take_ctx_is_called_with_its_new_signature(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a handler without ctx that ran once (its signature is now remembered)
    ws = make_workspace(
        {
            "pipelines/p.toml": PIPELINE,
            "handlers/h.py": "def s(t: str) -> str:\n    return 'plain ' + t\n",
            "in/a.txt": "x",
        }
    )
    ws.run()
    assert ws.read("out/a.txt") == "plain x"

    # When it is edited to take ctx and a bytes input
    ws.write(
        "handlers/h.py",
        "def s(ctx, t: bytes) -> str:\n    return f'{ctx.entity_id} {t!r}'\n",
    )
    ws.run()

    # Then the new signature is the one used
    assert ws.read("out/a.txt") == "a b'x'"
