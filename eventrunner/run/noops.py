"""What makes a workspace silently do nothing, told as warnings by `validate`, `run` and `status`:
a source pattern whose folder does not exist or that matches no file (a typo in an input
pattern looks exactly like that), and files dropped where only a stage writes (a stage's
outputs are never read as inputs, so such a file triggers nothing).

Cheap on purpose: the source checks read the index (one stat per source); the stray check
lists the output folders once, where a full evaluation happens anyway. The stamp records
the output folders' stats (`outdirs`), so a no-change run re-checks only when one changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventrunner.core.patterns import entity_id
from eventrunner.state import packed, statlook
from eventrunner.state.scan import folder_of, named, one_level, scan

if TYPE_CHECKING:
    from eventrunner.core.graph import Graph
    from eventrunner.core.patterns import Pattern
    from eventrunner.state.fastpath import Look
    from eventrunner.state.index import Index

Stat = tuple[int, int, int] | None


def source_warnings(index: Index) -> list[str]:
    """Sources with no folder or no file; sources fed by webhooks are filled by deliveries."""
    ws, root = index.ws, index.root
    out = []
    for key, src in sorted(ws.graph.sources.items()):
        if src.webhook is not None or index.instances[key].items:
            continue
        readers = ", ".join(f"{q} ({i})" for q, i in ws.graph.consumers.get(key, []))
        prefix = src.pattern.static_prefix
        if prefix and not os.path.isdir(root / prefix):
            why = f"its folder {prefix}/ does not exist"
        else:
            why = "no file matches it"
        out.append(f"source {src.pattern.text} (read by {readers}): {why}, so nothing runs from it")
    return out


def stray_outputs(index: Index, stages: Iterable[str] | None = None) -> dict[str, str]:
    """stage -> a warning, for the stages (default all) whose output folders hold files that
    match the output pattern but that no state produced: dropped there by hand, they are
    never read as inputs."""
    out = {}
    for q in index.ws.graph.order:
        if stages is None or q in stages:
            pattern = output_pattern(index, q)
            found = unproduced(pattern, str(index.root), produced(index, q))
            if found:
                out[q] = stray_message(index.ws.graph, q, pattern, found)
    return out


def output_pattern(index: Index, q: str) -> Pattern:
    """A stage's output pattern with every constraint declared on it."""
    return index.instances[index.ws.graph.stages[q].output.key].pattern


def nothing_new(index: Index, q: str, look: Look) -> bool:
    """True when stage q's output folder holds exactly the files the stamp of `look` recorded
    there (less those its look found gone) and those this process wrote that it did not:
    shown by counts, a listing and no set of 100,000s of paths. False: not shown (a file came,
    or the output is nested or fans out): new_strays() looks."""
    pattern = output_pattern(index, q)
    if not one_level(pattern) or index.ws.graph.stages[q].fanout_vars:
        return False
    folder = folder_of(str(index.root), pattern)
    recorded = look.count_in(folder)
    if recorded is None:
        return False
    try:
        listed = len(os.listdir(folder))
    except OSError:
        return False
    lead = os.path.join(str(index.root), "")
    ours = {p for r in index.files.written if os.path.dirname(p := lead + r) == folder}
    gone = [p for p in look.changed if os.path.dirname(p) == folder and not os.path.lexists(p)]
    # Every recorded file the look found unchanged still exists, and so do our writes: equal
    # counts leave no room for a file the two do not name.
    return listed == recorded - len(gone) + len(ours - look.listed(ours))


def new_strays(index: Index, q: str, stamped: set[str], below: str = "") -> list[str]:
    """Files where stage q writes that no state produced, when none of the files a stamp
    recorded (`stamped`: their paths as it names them, relative to `below` when below it)
    was one then: an incremental run's check. The files new since get a manifest read each;
    every output of the stage is read only when there are some and the output does not
    name its state."""
    pattern, written = output_pattern(index, q), index.files.written
    found = _new_files(pattern, str(index.root), stamped, below)
    new = [(r, vs) for r, vs in found if r not in written]
    stage = index.ws.graph.stages[q]
    if not new or stage.fanout_vars or pattern.variables != tuple(stage.entity_vars):
        made = produced(index, q) if new else set()
        return [rel for rel, _ in new if rel not in made]
    out = []
    for rel, values in new:
        m = index.manifests[q].get(entity_id(pattern.variables, values))
        if m is None or (rel not in m.output_paths and rel not in m.dropped):
            out.append(rel)
    return out


def _new_files(
    pattern: Pattern, root: str, stamped: set[str], below: str
) -> list[tuple[str, dict[str, str]]]:
    """(relpath, values) of the files the pattern matches that `stamped` does not list. Set
    operations in C where the pattern's variables are all in one folder level (out/{id}.txt):
    a folder of 100,000 outputs is one listdir, not 100,000 DirEntry objects."""
    at = os.path.join(root, "")
    if not one_level(pattern):
        full = (statlook.absolute(below, p) for p in stamped)
        skip = {p[len(at) :] for p in full if p.startswith(at)}
        return list(scan(pattern, Path(root), skip=skip))
    folder = os.path.join(folder_of(root, pattern), "")
    try:
        listed = os.listdir(folder)
    except OSError:
        return []
    named_as = packed.rel(below, folder)
    new = {named_as + name for name in listed}.difference(stamped)
    return named(pattern, root, (path[len(named_as) :] for path in new))


def produced(index: Index, q: str) -> set[str]:
    """Every path a state of stage q recorded as its output (or as dropped, for prune)."""
    return {p for made, dropped in index.stage_outputs(q) for p in (*made, *dropped)}


def stray_message(graph: Graph, q: str, pattern: Pattern, found: list[str]) -> str:
    """The warning for files found where stage q writes."""
    folders = sorted({s.pattern.static_prefix + "/" for s in graph.sources.values()} - {"/"})
    where = f" ({', '.join(folders)})" if folders else ""
    return (
        f"{len(found)} file(s) match the output {pattern.key} of stage {q} but no state "
        f"produced them, e.g. {found[0]}: eventrunner writes there and never reads such a "
        f"file as an input; put input files where a source pattern looks{where}"
    )


def unproduced(pattern: Pattern, root: str, produced: set[str]) -> list[str]:
    """Relpaths under root that the pattern matches and that are not in `produced`, sorted."""
    return [relpath for relpath, _ in scan(pattern, Path(root), skip=produced)]


def output_dirs(graph: Graph, root: str) -> dict[str, Stat]:
    """Stats of the folder each output pattern starts in (None: not there): a file dropped
    into one changes it, which sends a no-change run to look (main.py compares them)."""
    return {
        (path := folder_of(root, s.output)): _stat(path)
        for s in graph.stages.values()
        if not s.output.is_literal
    }


def changed_output_dirs(graph: Graph, root: str, recorded: dict[str, Stat]) -> list[str]:
    """Stages whose output folder changed since `recorded` (or was not recorded). A literal
    output (`summary.md`) names one file, its own: its folder (often the workspace itself,
    where other files come and go) is not followed."""
    return [
        q
        for q, stage in graph.stages.items()
        if not stage.output.is_literal
        and (
            (path := folder_of(root, stage.output)) not in recorded or recorded[path] != _stat(path)
        )
    ]


def _stat(path: str) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def stamp_recorded(index: Index, vouched: dict[str, Any]) -> dict[str, Any]:
    """What a stamp records for the no-change run to report again: what the holder vouched
    with, the source warnings unless given, and the output folders' stats (a file dropped into
    one makes the next run look). Empty lists are left out."""
    recorded = {"warnings": source_warnings(index), **vouched}
    recorded["outdirs"] = output_dirs(index.ws.graph, str(index.ws.settings.data_root))
    return {k: v for k, v in recorded.items() if v not in ([], {})}
