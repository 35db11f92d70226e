"""`run` on a full disk: one-line errors, no traceback, nothing trusted that was not written,
and the next run with space catches up.

A real `eventrunner run` subprocess whose `.eventrunner/` is a small tmpfs mounted by the test
(root only) and filled up between runs.
"""

from __future__ import annotations

from conftest import MakeWorkspace
from disk_helpers import fill, small_tmpfs

FILES = {
    "pipelines/p.toml": """\
        name = "p"

        [sources.inbox]
        pattern = "inbox/{name}.txt"

        [stages.upper]
        handler = "h:upper"
        inputs  = { text = "inbox/{name}.txt" }
        output  = "up/{name}.txt"

        [stages.total]
        handler = "h:total"
        inputs  = { parts = "up/{name}.txt" }
        output  = "total.txt"
        """,
    "handlers/h.py": """\
        def upper(ctx, text: str) -> str:
            return text.upper()


        def total(ctx, parts: dict[str, str]) -> str:
            return "".join(parts[k] for k in sorted(parts))
        """,
    **{f"inbox/e{i}.txt": f"entity {i}\n" for i in range(6)},
}


def test_run_on_a_full_state_folder_says_so_and_the_next_run_catches_up(
    make_workspace: MakeWorkspace,
) -> None:
    ws = make_workspace(FILES)
    with small_tmpfs(ws.path(".eventrunner"), size="1m") as state:
        first = ws.sub("run", "--json")
        assert first.code == 0, first.err
        assert first.json["executed"] == 7

        # Given a state folder with one page left (the lock's) and two edited inputs
        filler = fill(state, leave=4096)
        ws.write("inbox/e1.txt", "changed one\n")
        ws.write("inbox/e4.txt", "changed four\n")

        # When a run cannot record what it did: its failures say why, in lines, not tracebacks
        full = ws.sub("run", "--json")
        assert full.code == 1, (full.out, full.err)
        assert "Traceback" not in full.err, full.err
        report = full.json
        failed = {f["entity"]: f["error"] for f in report["failures"]}
        assert set(failed) == {"e1", "e4"}, report
        assert all("No space left on device" in e for e in failed.values()), failed
        assert any(w.startswith("index save not written") for w in report["warnings"]), report

        # And with no space at all, not even the lock's: one line, naming the file
        filler = fill(state)
        locked = ws.sub("run")
        assert locked.code == 1
        assert locked.err.strip().splitlines() == [
            f"eventrunner: No space left on device: {state / 'lock'}"
        ], locked.err

        # Then, with space again, the next run redoes just what was not recorded, and every
        # state is fresh with the edits in the outputs
        filler.unlink()
        after = ws.sub("run", "--json")
        assert after.code == 0, after.err
        assert after.json["executed"] == 3, after.json  # e1, e4 and the total
        assert ws.read("up/e1.txt") == "CHANGED ONE\n"
        assert ws.read("total.txt") == "".join(ws.read(f"up/e{i}.txt") for i in range(6))
        assert "CHANGED FOUR\n" in ws.read("total.txt")
        check = ws.sub("status", "--check")
        assert check.code == 0, (check.out, check.err)
