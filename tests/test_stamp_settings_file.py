"""The stamp records a missing eventrunner.toml: creating one (say, to move the data root) is a
change of the definitions, never answered "nothing to do" from stats."""

from __future__ import annotations

from conftest import ECHO_HANDLERS, ECHO_PIPELINE, MakeWorkspace, age


def test_creating_eventrunner_toml_after_a_stamp_is_a_change(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": ECHO_HANDLERS,
            "inbox/a.txt": "hello world\n",
        }
    )
    ws.delete("eventrunner.toml")  # the defaults: the data root is the workspace
    age(ws)
    assert ws.run()["executed"] == 3
    assert ws.run()["mode"] == "stat"  # stamped, eventrunner.toml's absence with it
    ws.write("eventrunner.toml", 'data_root = "elsewhere"\n')
    (ws.root / "elsewhere").mkdir()
    age(ws)
    report = ws.run()
    assert report["mode"] == "full"
    assert any("its folder inbox/ does not exist" in w for w in report["warnings"]), report


def test_a_deleted_eventrunner_toml_is_a_change(make_workspace: MakeWorkspace) -> None:
    ws = make_workspace(
        {
            "eventrunner.toml": 'data_root = "elsewhere"\n',
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": ECHO_HANDLERS,
            "elsewhere/inbox/a.txt": "hello world\n",
        }
    )
    age(ws)
    assert ws.run()["executed"] == 3
    assert ws.run()["mode"] == "stat"
    ws.delete("eventrunner.toml")
    report = ws.run()
    assert report["mode"] == "full"
    assert any("its folder inbox/ does not exist" in w for w in report["warnings"]), report
