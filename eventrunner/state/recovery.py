"""What a writer does first, with the lock held: clear a crash's debris, count the attempts it cut.

Cheap when the previous holder stopped cleanly: two small folders listed and one missing file
looked for (listing the manifest folders costs ~0.2 s per 100,000 states, so they wait for a
reason). After an unclean stop (the lock file kept its holder, or the index cache was found
dirty) every folder a temp file can be left in is swept: the state folders, and the data
folders the index knows (sources, outputs, fan-out folders), never a walk of the workspace.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from eventrunner.core.staleness import after_failure
from eventrunner.state.attempts import StartedAttempt
from eventrunner.state.files import sweep_temps
from eventrunner.state.index import Index

log = logging.getLogger("eventrunner.recovery")

DIED = (
    "the process stopped during this attempt (killed, out of memory, or the handler ended it"
    " with os._exit); it counts as a failed attempt"
)
_VAR = re.compile(r"\{(\w+)\}")


@dataclass
class Recovered:
    """What recover() found: temp files removed, attempts counted as failed."""

    swept: int = 0
    died: list[tuple[str, str]] = field(default_factory=list)


def recover(index: Index) -> Recovered:
    """Sweep temp debris and record attempts a crash cut short (call once, lock held)."""
    store = index.store
    out = Recovered()
    crashed = store.crashed_before or index.recovered
    # The top of .eventrunner/ and the spool's folder are small: swept at every start (the
    # spool may be running already; its temps carry this process's tag and are kept).
    folders = [store.root, store.root / "spool", *(_state_folders(index) if crashed else ())]
    out.swept = sweep_temps(folders)
    if crashed:
        out.swept += sweep_temps(os.path.join(index.root, d) for d in data_folders(index))
    if out.swept:
        log.info("previous holder did not stop cleanly; removed %d temp file(s)", out.swept)
    out.died = _count_cut_attempts(index)
    return out


def _state_folders(index: Index) -> list[str]:
    store = index.store
    return [
        e.path
        for top in (store.manifests, store.failures)
        if top.is_dir()
        for e in os.scandir(top)
        if e.is_dir(follow_symlinks=False)
    ]


def _folder(key: str, values: Mapping[str, str]) -> str:
    """The folder of a pattern's paths as far as `values` fix it ("" for the data root)."""
    parts = []
    for seg in key.split("/")[:-1]:
        if any(name not in values for name in _VAR.findall(seg)):
            break
        parts.append(_VAR.sub(lambda m: values[m.group(1)], seg))
    return "/".join(parts)


def data_folders(index: Index) -> set[str]:
    """Every data folder (relative) a temp file of ours can be in, from what the index knows:
    the folders of known instances, of fan-out stages' entities and of recorded outputs."""
    folders: set[str] = set()
    for inst in index.instances.values():
        key = inst.pattern.key
        if not _VAR.search(key.rpartition("/")[0]):
            folders.add(key.rpartition("/")[0])  # a fixed folder: one, however many files
        else:
            folders.update(os.path.dirname(inst.path(e)) for e in inst.items)
    graph = index.ws.graph
    for q in graph.order:
        stage = graph.stages[q]
        if stage.fanout_vars:  # items of a state never committed: no instance knows them yet
            key = stage.output.key
            folders.update(_folder(key, values) for _, values in index.stage_entities(q))
        for made, _ in index.stage_outputs(q):
            folders.update(os.path.dirname(rel) for rel in made)
    return folders


def _count_cut_attempts(index: Index) -> list[tuple[str, str]]:
    """Attempts noted as started that neither committed nor recorded a failure: the process
    died during them (maybe because of them: a handler calling os._exit, a segfault). Each
    counts as a failed attempt, retryable at once, so a handler that kills the process goes
    `dead` after its attempts instead of killing every restart (SQS's receive count)."""
    log_ = index.store.attempts
    cut = log_.open_at_last_stop()
    if not cut:
        return []
    died: list[tuple[str, str]] = []
    for a in cut:
        q, eid = a.stage, a.entity
        stage = index.ws.graph.stages.get(q)
        if stage is None or _ended(index, a):
            continue
        prev = index.failures[q].get(eid)
        failure = after_failure(
            stage.retry,
            prev,
            stage=q,
            entity=eid,
            key=a.key,
            error=f"AttemptCut: {DIED}",
            traceback="",
            now=a.started,  # due at once: its retry is already past for any evaluation
            retry_after=0.0,
        )
        try:
            index.record_failure(failure, write=True)
        except OSError as exc:  # the log stays: the next start counts it then
            log.error("%s %s: could not record a cut attempt: %s", q, eid, exc)
            return died
        died.append((q, eid))
        log.warning(
            "%s %s: attempt %d was cut short by the end of the process%s",
            q,
            eid,
            failure.attempts,
            "; dead" if failure.dead else "",
        )
    log_.clear()
    return died


def _ended(index: Index, a: StartedAttempt) -> bool:
    """True when the attempt committed (a manifest from it or later) or its failure is on record."""
    m = index.manifests[a.stage].get(a.entity)
    if m is not None and m.started >= a.started:
        return True
    f = index.failures[a.stage].get(a.entity)
    return f is not None and f.key == a.key and f.attempts >= a.attempt
