"""What the engine does with a finished attempt: commit its outputs and follow them downstream,
or record its failure. A part of the Engine class (its state is the engine's), kept apart so
that each half reads in one sitting.
"""

from __future__ import annotations

import asyncio
import functools
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
    _commits: set[asyncio.Task[None]]  # recording a commit's failure
    _committing: int  # commits queued, not yet told
    _follow: list[Target]  # what this batch's commits affect, checked once it is told
    _follow_written: dict[str, str]  # this batch's outputs and their hashes
    _to_settle: list[str]  # the stages of this batch's commits
    _failed_now: set[tuple[str, str]]
    _rerun: set[tuple[str, str]]
    _wake: asyncio.Event

    consider: Callable[..., int]  # the Engine's: check targets and queue the stale ones
    _done: Callable[[asyncio.Task[None]], None]  # the Engine's: a task of its ended
    _in_flight: Callable[[], bool]  # the Engine's: handlers running or commits under way
    _heap: list[tuple[int, int, int, str, str]]  # the Engine's queue

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

    def _commit_then_follow(
        self, manifest: Manifest, written: Written, key: str, prev: Failure | None
    ) -> None:
        """Queue a successful attempt's commit. Once durable it is recorded (`_committed`) and
        followed downstream together with the rest of its batch (`_follow_batch`): no task
        waits on it, and one pass checks what a whole group commit affects."""
        commit = Commit(
            manifest=manifest,
            temps=written.temps,
            clear_failure=prev is not None,
            output=_output(
                manifest.stage, manifest.entity, manifest.attempt, manifest.started, written.output
            ),
        )
        self._committing += 1
        done = functools.partial(self._committed, commit, manifest, written, key, prev)
        try:
            self.committer.submit_then(commit, done)
        except Exception as exc:  # the committer is not running
            done(exc)

    def _committed(
        self,
        commit: Commit,
        manifest: Manifest,
        written: Written,
        key: str,
        prev: Failure | None,
        error: BaseException | None,
    ) -> None:
        """One commit of a batch is durable (or failed): record it; followed after the batch."""
        self._committing -= 1
        q, eid = manifest.stage, manifest.entity
        if error is not None:
            task = asyncio.ensure_future(self._commit_failed(manifest, written, key, prev, error))
            self._commits.add(task)
            task.add_done_callback(self._done)
            return
        self._to_settle.append(q)  # settled after the batch's pass, whatever happens here
        root = os.path.join(self.index.root, "")
        stats = {rel: st for rel in written.hashes if (st := commit.stats.get(root + rel))}
        old = self.index.record_success(manifest, written.hashes, stats)
        self.outcome.succeeded += 1
        if self.events.listening:
            self.events.emit(Succeeded(stage=q, entity=eid, duration_s=manifest.duration_s))
        self._after_commit(q, eid, manifest, old)

    def _follow_batch(self) -> None:
        """After a group commit: one pass over what its outputs affect (the committer's hook)."""
        targets, self._follow = self._follow, []
        written, self._follow_written = self._follow_written, {}
        stages, self._to_settle = self._to_settle, []
        try:
            if targets:
                self.evaluator.reset()
                self.evaluator.written(written)  # in place, and stat'ed by record_success
                self.consider(targets, fresh_pass=True)
        finally:
            for q in stages:
                self._settled(q)
            # The dispatcher looks again: idle now, an aggregate's safety net, or queued work
            # that the commit backpressure (max_inflight_commits) may have held back.
            if self._heap or not self._in_flight():
                self._wake.set()

    async def _commit_failed(
        self,
        manifest: Manifest,
        written: Written,
        key: str,
        prev: Failure | None,
        exc: BaseException,
    ) -> None:
        """A commit failed (disk full, I/O error): recorded and retried like a handler failure;
        the retry runs the handler again and writes everything anew, never re-syncing the same
        data."""
        q, eid = manifest.stage, manifest.entity
        try:
            written.discard()
            error = attach(StorageError(redact(f"commit failed: {exc}")), written.output)
            try:
                await self._fail(q, eid, key, prev, error, manifest.started)
            finally:
                self.index.attempt_ended(q, eid)
        finally:
            self._settled(q)

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
        """A committed output is an event for the stages that read it (and read what it
        dropped): they join the batch's pass (`_follow_batch`)."""
        stage = self.ws.graph.stages[q]
        self.index.attempt_ended(q, eid)
        self.evaluator.committed(q, eid, manifest)  # an aggregate's cert moves on to it
        targets = self._follow
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
        self._follow_written.update(outputs)


def _output(
    q: str, eid: str, attempt: int, at: float, text: str, *, failed: bool = False
) -> AttemptOutput | None:
    """The record of what an attempt printed; None (no file written) when it printed nothing."""
    if not text:
        return None
    outcome = "failed" if failed else "succeeded"
    return AttemptOutput(q, eid, attempt, outcome, at, redact(text))
