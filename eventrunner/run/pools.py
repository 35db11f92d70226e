"""Choosing the executor `[runtime] executor` names (apart from the interface, so that the
executors' modules import the interface and nothing imports them back but this)."""

from __future__ import annotations

from eventrunner.run.executors import Executor
from eventrunner.workspace.settings import RuntimeSettings


def make_executor(
    kind: str, size: int, runtime: RuntimeSettings | None = None, one_core: bool = False
) -> Executor:
    """The executor named by `[runtime] executor`, sized for `size` calls at once (the local
    ones; a Dask cluster sizes itself). ExecutorUnavailable when its package is missing.
    `one_core`: the thread executor keeps the process on one core while calls are quick."""
    if kind == "dask":
        from eventrunner.run.dask_pool import DaskExecutor  # imports distributed: only here

        settings = runtime or RuntimeSettings()
        return DaskExecutor(
            scheduler=settings.dask_scheduler,
            workers=settings.dask_workers,
            shared_fs=settings.shared_fs,
        )
    if kind == "process":
        from eventrunner.run.process_pool import ProcessExecutor

        return ProcessExecutor(size)
    if kind == "thread":
        from eventrunner.run.affinity import OneCore
        from eventrunner.run.thread_pool import ThreadExecutor

        return ThreadExecutor(
            size, one_core=OneCore() if one_core and OneCore.available() else None
        )
    raise ValueError(f"unknown executor {kind!r}")
