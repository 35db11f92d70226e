"""What the engine does with a finished attempt: commit its outputs and follow them downstream,
or record its failure. A part of the Engine class (its state is the engine's), kept apart so
that each half reads in one sitting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from eventrunner.core.errors import PermanentError, RetryLater, StorageError
from eventrunner.core.records import AttemptOutput, Failure, Manifest
from eventrunner.core.redact import redact
from eventrunner.core.staleness import after_failure
from eventrunner.run.capture import attach, output_of
from eventrunner.run.commit import Commit, Committer
from eventrunner.run.evaluate import Evaluator
from eventrunner.run.events import Dead, EventBus, Failed, Succeeded
from eventrunner.run.invoke import Written
from eventrunner.run.planner import Planner, Target
from eventrunner.run.report import RunReport
from eventrunner.run.settle import Settling
from eventrunner.state.index import Index

if TYPE_CHECKING:
    from eventrunner.workspace.load import Workspace

log = logging.getLogger("eventrunner.engine")


class Finishing:
    """The Engine's methods for finished attempts (a mixin: Engine declares the state)."""

    index: Index
    ws: Workspace
    committer: Committer
    evaluator: Evaluator
    outcome: RunReport
    events: EventBus
    planner: Planner
    settling: Settling
    _commits: set[asyncio.Task[None]]
    _failed_now: set[tuple[str, str]]
    _rerun: set[tuple[str, str]]
    _wake: asyncio.Event

    consider: Callable[..., int]  # the Engine's: check targets and queue the stale ones

    def _manifest(
        self,
        q: str,
        eid: str,
        values: dict[str, str],
        inputs: Mapping[str, Mapping[str, str]],
        written: Written,
        started: float,
        attempt: int,
    ) -> Manifest:
        """The manifest of a successful attempt; outputs the previous one had and this one did
        not write (fan-out keys gone) are recorded as dropped, for `prune`."""
        finished = time.time()
        before = self.index.manifests[q].get(eid)
        dropped = (
            sorted((set(before.outputs) | set(before.dropped)) - set(written.hashes))
            if before
            else []
        )
        return Manifest(
            stage=q,
            entity=eid,
            values=dict(values),
            code=self.ws.code[q],
            params=self.ws.params[q],
            inputs=inputs,
            outputs=written.hashes,
            started=started,
            finished_ns=time.time_ns(),
            duration_s=round(finished - started, 6),
            attempt=attempt,
            dropped=dropped,
        )

    def _settled(self, q: str) -> None:
        """A state of q is out of flight: consider the aggregates that were waiting on it."""
        if released := self.settling.done(q):
            self.consider(released)

    async def _commit_success(
        self, manifest: Manifest, written: Written, key: str, prev: Failure | None
    ) -> None:
        try:
            await self._commit_and_follow(manifest, written, key, prev)
        finally:
            self._settled(manifest.stage)

    async def _commit_and_follow(
        self, manifest: Manifest, written: Written, key: str, prev: Failure | None
    ) -> None:
        q, eid = manifest.stage, manifest.entity
        commit = Commit(
            manifest=manifest,
            temps=written.temps,
            clear_failure=prev is not None,
            output=_output(manifest.stage, eid, manifest.attempt, manifest.started, written.output),
        )
        try:
            await self.committer.submit(commit)
        except Exception as exc:
            # Recorded and retried like a handler failure (disk full, I/O error): the retry runs
            # the handler again and writes everything anew, never re-syncing the same data.
            written.discard()
            error = attach(StorageError(redact(f"commit failed: {exc}")), written.output)
            try:
                await self._fail(q, eid, key, prev, error, manifest.started)
            finally:
                self.index.attempt_ended(q, eid)
            return
        root = os.path.join(self.index.root, "")
        stats = {rel: st for rel in written.hashes if (st := commit.stats.get(root + rel))}
        old = self.index.record_success(manifest, written.hashes, stats)
        self.outcome.succeeded += 1
        if self.events.listening:
            self.events.emit(Succeeded(stage=q, entity=eid, duration_s=manifest.duration_s))
        self._after_commit(q, eid, manifest, old)

    async def _fail(
        self,
        q: str,
        eid: str,
        key: str,
        prev: Failure | None,
        exc: BaseException,
        started: float,
    ) -> None:
        stage = self.ws.graph.stages[q]
        now = time.time()
        failure = after_failure(
            stage.retry,
            prev,
            stage=q,
            entity=eid,
            key=key,
            # Secrets the handler read are masked where the failure is recorded: the record,
            # the index cache, events, status and logs all come from here (issue 14.3).
            error=redact(f"{type(exc).__name__}: {exc}"),
            traceback=redact("".join(traceback.format_exception(exc)))[-8000:],
            now=now,
            permanent=isinstance(exc, PermanentError),
            retry_after=exc.retry_after if isinstance(exc, RetryLater) else None,
        )
        try:
            output = _output(
                q, eid, failure.attempts, failure.last_failed, output_of(exc), failed=True
            )
            await self.committer.submit(Commit(failure=failure, output=output))
        except Exception as exc:
            # Kept in memory: the retry sweep still finds it; a restart just finds it stale.
            log.error("%s %s: could not record its failure on disk: %s", q, eid, exc)
        self.index.record_failure(failure)
        self._failed_now.add((q, eid))
        self.outcome.failed += 1
        self.outcome.failures.append({"stage": q, "entity": eid, "error": failure.error})
        log.warning(
            "%s %s failed (attempt %d%s): %s",
            q,
            eid,
            failure.attempts,
            ", dead" if failure.dead else "",
            (failure.error.splitlines() or [""])[0],  # one line per event; the rest is in explain
        )
        self.events.emit(
            Failed(
                stage=q,
                entity=eid,
                error=failure.error,
                attempts=failure.attempts,
                dead=failure.dead,
                retry_at=failure.next_retry,
            )
        )
        if failure.dead:  # out of attempts: serve's alert (if configured) listens for this one
            self.events.emit(
                Dead(stage=q, entity=eid, attempts=failure.attempts, error=failure.error)
            )

    def _after_commit(self, q: str, eid: str, manifest: Manifest, old: Manifest | None) -> None:
        """A committed output is an event for the stages that read it (and read what it dropped)."""
        stage = self.ws.graph.stages[q]
        self.index.attempt_ended(q, eid)
        self.evaluator.committed(q, eid, manifest)  # an aggregate's cert moves on to it
        targets: list[Target] = []
        pattern = self.index.instances[stage.output.key].pattern
        outputs = manifest.outputs  # a dict built per access
        for relpath in outputs:
            values = pattern.match(relpath)
            if values is not None:
                targets.extend(self.planner.downstream_of(stage.output.key, values))
        for relpath in old.output_paths if old else ():
            values = pattern.match(relpath)
            if relpath not in outputs and values is not None:
                targets.extend(self.planner.removed_targets(stage.output.key, values))
        if (q, eid) in self._rerun:
            self._rerun.discard((q, eid))
            targets.append((q, eid, manifest.values))
        self.evaluator.reset()
        self.evaluator.written(outputs)  # in place, and stat'ed by record_success
        self.consider(targets, fresh_pass=True)


def _output(
    q: str, eid: str, attempt: int, at: float, text: str, *, failed: bool = False
) -> AttemptOutput | None:
    """The record of what an attempt printed; None (no file written) when it printed nothing."""
    if not text:
        return None
    outcome = "failed" if failed else "succeeded"
    return AttemptOutput(q, eid, attempt, outcome, at, redact(text))
