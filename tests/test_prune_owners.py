"""`prune` never deletes a file that another state owns (issue 10.3): checked at the moment
of deleting, whatever validation let through. Real files, the CLI as a real subprocess."""

from __future__ import annotations

from conftest import MakeWorkspace

HANDLERS = """\
def html(note: str) -> str:
    return "<p>" + note.strip() + "</p>\\n"


def index(notes: dict[str, str]) -> str:
    return "".join(f"<li>{k}</li>\\n" for k in sorted(notes))
"""

BEFORE = """\
[stages.html]
handler = "site:html"
inputs = { note = "notes/{slug}.md" }
output = "site/{slug}.html"
"""

# The html pages constrained away from index.html, and a stage writing the index page.
AFTER = """\
[stages.html]
handler = "site:html"
inputs = { note = "notes/{slug}.md" }
output = "site/{slug:post-[a-z0-9-]+}.html"

[stages.index]
handler = "site:index"
inputs = { notes = "notes/{slug}.md" }
output = "site/index.html"
"""


def test_prune_keeps_a_file_that_another_live_state_lists_as_its_output(
    make_workspace: MakeWorkspace,
) -> None:
    # Given a note named index.md that stage html turned into site/index.html
    ws = make_workspace(
        {
            "pipelines/site.toml": BEFORE,
            "handlers/site.py": HANDLERS,
            "notes/index.md": "home",
            "notes/post-one.md": "first",
        }
    )
    assert ws.sub("run").code == 0
    assert ws.read("site/index.html") == "<p>home</p>\n"
    # And the pipeline then gave site/index.html to a new stage, and index.md went away
    ws.write("pipelines/site.toml", AFTER)
    ws.delete("notes/index.md")
    assert ws.sub("validate").code == 0
    assert ws.sub("run").code == 0
    assert ws.read("site/index.html") == "<li>post-one</li>\n"
    # When prune removes html's orphaned state, whose old manifest still lists site/index.html
    dry = ws.sub("prune", "--dry-run", "--json").json["pruned"]
    assert "kept site/index.html: the output of site.index _" in ws.sub("prune", "--dry-run").out
    done = ws.sub("prune", "--json")
    # Then the state is forgotten but the index page, now stage index's output, is kept
    assert done.code == 0, done.err
    kept = [{"path": "site/index.html", "stage": "site.index", "entity": "_"}]
    assert (
        dry
        == done.json["pruned"]
        == [{"stage": "site.html", "entity": "index", "outputs": ["site/index.html"], "kept": kept}]
    )
    assert ws.read("site/index.html") == "<li>post-one</li>\n"
    assert ws.states() == {("site.html", "post-one"): "fresh", ("site.index", "_"): "fresh"}
    # And a second prune has nothing left to do, and the page is still there and fresh
    assert ws.sub("prune", "--json").json["pruned"] == []
    assert ws.exists("site/index.html") and ws.exists("site/post-one.html")
