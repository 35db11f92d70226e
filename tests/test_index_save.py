"""Saving the index cache while state moves on: the dirty marker must outlive any change the
saved snapshot does not hold (a crash then rebuilds from the store instead of trusting it)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import ECHO_PIPELINE, LOGGED_ECHO_HANDLERS, MakeWorkspace, Workspace

from eventrunner.run.saves import save_in_thread
from eventrunner.state.index import Index
from eventrunner.state.store import Store
from eventrunner.workspace.load import load_workspace


@pytest.fixture
def index(make_workspace: MakeWorkspace) -> Index:
    ws: Workspace = make_workspace(
        {
            "pipelines/echo.toml": ECHO_PIPELINE,
            "handlers/echo.py": LOGGED_ECHO_HANDLERS,
            "inbox/hello.txt": "hello world\n",
        }
    )
    ws.run()
    loaded = load_workspace(ws.root)
    return Index.load(loaded, Store(loaded.settings.state_dir))


def _hold(index: Index, stage: str, eid: str) -> None:
    """A change of state through the index's own method (which marks it dirty first)."""
    control = index.control.copy()
    control.holds[stage] = [eid]
    index.set_control(control)


def test_a_quiet_save_clears_the_dirty_marker(index: Index) -> None:
    _hold(index, "echo.shout", "hello")
    assert index.dirty_path.exists()
    asyncio.run(save_in_thread(index))
    assert not index.dirty_path.exists()
    assert index.cache_path.exists() and index.seal_path.exists()


def test_a_change_during_the_write_keeps_the_dirty_marker(index: Index) -> None:
    # Given a snapshot taken, then state changing before the write finishes
    _hold(index, "echo.count", "hello")
    generation, data = index.snapshot()
    _hold(index, "echo.shout", "hello")  # e.g. a hold arriving while the snapshot is pickled
    index.write_snapshot(data)
    index.saved(generation)

    # Then the marker stays (the cache on disk lacks the hold) and a load rebuilds from the store
    assert index.dirty_path.exists()
    again = Index.load(index.ws, index.store)
    assert again.recovered


def test_a_snapshot_taken_while_a_state_runs_never_clears_the_marker(index: Index) -> None:
    # Given a state running (its commit will not mark the index dirty again)
    index.attempt_started("echo.shout", "hello", "key", 1, 0.0)
    generation, data = index.snapshot()
    index.write_snapshot(data)
    index.saved(generation)

    # Then the marker stays
    assert index.dirty_path.exists()
    index.attempt_ended("echo.shout", "hello")


def test_the_snapshot_is_a_copy(index: Index) -> None:
    # Given the snapshot of an index rebuilt from the store (it holds every record)
    index.dirty_path.touch()
    rebuilt = Index.load(index.ws, index.store)
    assert rebuilt.recovered
    _, data = rebuilt.snapshot()

    # When state moves on after it was taken
    rebuilt.forget_state("echo.shout", "hello")
    _hold(rebuilt, "echo.count", "*")

    # Then the snapshot still holds what was true when it was taken
    assert "hello" in data["manifests"]["echo.shout"]
    assert "echo.count" not in data["control"].holds


def test_a_save_after_a_clean_load_holds_only_what_changed(index: Index) -> None:
    # Given an index loaded from a clean cache, and one state forgotten and one hold set
    assert not index.recovered
    index.forget_state("echo.shout", "hello")
    _hold(index, "echo.count", "hello")
    generation, data = index.snapshot()

    # Then the snapshot holds just those changes
    assert data["manifests"] == {"echo.shout": {"hello": None}}
    assert data["files"] == {} and data["failures"] == {("echo.shout", "hello"): None}
    assert data["control"].holds == {"echo.count": ["hello"]}
    index.write_snapshot(data)
    index.saved(generation)
    assert not index.dirty_path.exists()

    # And a load reads them from the cache
    again = Index.load(index.ws, index.store)
    assert not again.recovered
    assert "hello" not in again.manifests["echo.shout"]
    assert "hello" in again.manifests["echo.count"]
    assert again.control.holds == {"echo.count": ["hello"]}


def test_a_failed_save_goes_into_the_next_one(index: Index) -> None:
    # Given a save that failed after its snapshot was taken (a hold and a forgotten state)
    _hold(index, "echo.count", "hello")
    index.forget_state("echo.shout", "hello")
    index.snapshot()
    index.failed_save()

    # When the next save succeeds
    index.save()

    # Then it wrote what the failed one held
    again = Index.load(index.ws, index.store)
    assert not again.recovered
    assert again.control.holds == {"echo.count": ["hello"]}
    assert "hello" not in again.manifests["echo.shout"]
