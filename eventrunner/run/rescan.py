"""A session's rescan: the sources scanned again (a thread), what differs applied on the loop."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from eventrunner.core.patterns import trusted_entity_id as entity_id
from eventrunner.run.events import Changed
from eventrunner.run.planner import Target
from eventrunner.state.scan import scan

if TYPE_CHECKING:
    from eventrunner.run.session import Session


async def rescan(session: Session) -> list[Target]:
    """Scan the sources again and apply what differs from the index; targets of what vanished.

    The scan (O(sources)) runs in a thread; only the difference is applied on the loop, each
    candidate checked on disk again, since events keep changing the index meanwhile."""
    assert session.engine is not None and session.index is not None
    idx, engine, root = session.index, session.engine, session.ws.settings.data_root
    sources = {key: src.pattern for key, src in session.ws.graph.sources.items()}

    def scan_all() -> dict[str, dict[str, dict[str, str]]]:
        return {
            key: {entity_id(p.variables, values): values for _, values in scan(p, root)}
            for key, p in sources.items()
        }

    found = await asyncio.to_thread(scan_all)
    targets: list[Target] = []
    for key, now in found.items():
        inst = idx.instances[key]
        for eid in inst.items.keys() - now.keys():
            relpath = inst.path(eid)
            if not os.path.lexists(root / relpath):
                values = inst.values(eid)
                idx.source_vanished(key, values, relpath)
                targets.extend(engine.removed_targets(key, values))
                session.events.emit(Changed(path=relpath, change="deleted", by="rescan"))
        for eid in now.keys() - inst.items.keys():
            relpath = inst.pattern.join(now[eid])
            if os.path.lexists(root / relpath):
                idx.source_appeared(key, now[eid])  # its targets: every run of a pass has them
                session.events.emit(Changed(path=relpath, change="added", by="rescan"))
    return targets
