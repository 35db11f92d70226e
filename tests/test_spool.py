"""Durable webhook intake: group commit, files in place, de-duplication and crash recovery."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from eventrunner.core.errors import IntakeFull, StorageError
from eventrunner.server.spool import PutResult, Spool, SpoolRecord

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "ws" / ".eventrunner" / "spool"


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "ws"


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


def journals(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("journal-*.log"))


def body_for(i: int) -> bytes:
    return f"record {i}\n".encode() * (i % 7 + 1)


async def test_put_stores_the_body_at_its_path(spool_dir: Path, data_root: Path) -> None:
    async with Spool(spool_dir, data_root) as spool:
        result = await spool.put(SpoolRecord("logs/2026-11-25.md", b"# hello\n"))
        target = data_root / "logs" / "2026-11-25.md"
        await wait_until(target.exists)
        assert target.read_bytes() == b"# hello\n"
        assert result.duplicate is False
        assert len(result.event_id) >= 16
    assert not list(target.parent.glob(".er-tmp-*"))


async def test_on_materialised_reports_each_record_with_its_event_id(
    spool_dir: Path, data_root: Path
) -> None:
    seen: list[tuple[str, str]] = []
    async with Spool(
        spool_dir, data_root, on_materialised=lambda r, e: seen.append((r.relpath, e))
    ) as spool:
        first = await spool.put(SpoolRecord("a.txt", b"a", meta={"pipeline": "p"}))
        second = await spool.put(SpoolRecord("b.txt", b"b"))
        await wait_until(lambda: len(seen) == 2)
    assert seen == [("a.txt", first.event_id), ("b.txt", second.event_id)]


async def test_concurrent_puts_share_fsync_batches(spool_dir: Path, data_root: Path) -> None:
    async with Spool(spool_dir, data_root) as spool:
        results = await asyncio.gather(
            *(spool.put(SpoolRecord(f"many/{i:03d}.txt", body_for(i))) for i in range(200))
        )
        await wait_until(lambda: spool.stats["materialised"] == 200)
        assert len({r.event_id for r in results}) == 200
        assert spool.stats["committed"] == 200
        assert spool.stats["batches"] <= 20
        assert spool.stats["fsync_seconds_total"] > 0
    for i in range(200):
        assert (data_root / "many" / f"{i:03d}.txt").read_bytes() == body_for(i)


async def test_last_write_wins_for_one_path(spool_dir: Path, data_root: Path) -> None:
    async with Spool(spool_dir, data_root) as spool:
        await asyncio.gather(*(spool.put(SpoolRecord("one.txt", body_for(i))) for i in range(50)))
        await spool.put(SpoolRecord("one.txt", b"final"))
        await wait_until(lambda: spool.stats["materialised"] == 51)
    assert (data_root / "one.txt").read_bytes() == b"final"


async def test_repeated_message_id_is_a_duplicate_and_stored_once(
    spool_dir: Path, data_root: Path
) -> None:
    async with Spool(spool_dir, data_root) as spool:
        first = await spool.put(SpoolRecord("d.txt", b"first", message_id="msg_1"))
        again = await spool.put(SpoolRecord("d.txt", b"second", message_id="msg_1"))
        await wait_until(lambda: spool.stats["materialised"] == 1)
        assert again == PutResult(first.event_id, duplicate=True)
        assert spool.stats["committed"] == 1
        assert spool.stats["duplicates"] == 1
    assert (data_root / "d.txt").read_bytes() == b"first"


async def test_concurrent_puts_with_one_id_store_once(spool_dir: Path, data_root: Path) -> None:
    async with Spool(spool_dir, data_root) as spool:
        one, two = await asyncio.gather(
            spool.put(SpoolRecord("x/1.txt", b"1", message_id="same")),
            spool.put(SpoolRecord("x/2.txt", b"2", message_id="same")),
        )
        assert sorted([one.duplicate, two.duplicate]) == [False, True]
        assert one.event_id == two.event_id
        await wait_until(lambda: spool.stats["materialised"] == 1)
    assert [p.name for p in (data_root / "x").iterdir()] == ["1.txt"]


async def test_message_ids_survive_restart(spool_dir: Path, data_root: Path) -> None:
    # Given a record accepted by a spool that was then closed
    async with Spool(spool_dir, data_root) as spool:
        first = await spool.put(SpoolRecord("r.txt", b"r", message_id="msg_r"))
    # When the same id arrives after a restart, Then it is a duplicate
    async with Spool(spool_dir, data_root) as spool:
        again = await spool.put(SpoolRecord("r.txt", b"changed", message_id="msg_r"))
        assert again == PutResult(first.event_id, duplicate=True)
    assert (data_root / "r.txt").read_bytes() == b"r"


async def test_rotation_drops_old_journals_and_keeps_ids(
    spool_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    # Given a spool that rotates its journal after every batch
    async with Spool(spool_dir, data_root, journal_max_bytes=1) as spool:
        for i in range(5):
            await spool.put(SpoolRecord(f"rot/{i}.txt", body_for(i), message_id=f"rot-{i}"))
        await wait_until(lambda: spool.stats["rotations"] == 5)
        await wait_until(lambda: len(journals(spool_dir)) == 1)
        # When the process dies now (a copy of the spool is what a crash leaves)
        shutil.copytree(spool_dir, tmp_path / "crashed")
    # Then a fresh spool on that state still knows every id, and replays nothing twice
    replayed: list[str] = []
    crashed = Spool(
        tmp_path / "crashed",
        tmp_path / "fresh",
        on_materialised=lambda r, e: replayed.append(r.relpath),
    )
    async with crashed as spool:
        for i in range(5):
            result = await spool.put(SpoolRecord(f"rot/{i}.txt", b"again", message_id=f"rot-{i}"))
            assert result.duplicate
    assert replayed == []


async def test_expired_ids_are_accepted_again(spool_dir: Path, data_root: Path) -> None:
    async with Spool(spool_dir, data_root, dedup_ttl=0.05) as spool:
        first = await spool.put(SpoolRecord("e.txt", b"old", message_id="msg_e"))
        expired_at = time.time() + 0.05
        await wait_until(lambda: time.time() > expired_at)
        again = await spool.put(SpoolRecord("e.txt", b"new", message_id="msg_e"))
        assert not again.duplicate
        assert again.event_id != first.event_id
        await wait_until(lambda: (data_root / "e.txt").read_bytes() == b"new")


async def test_intake_full_when_too_many_puts_wait(spool_dir: Path, data_root: Path) -> None:
    async with Spool(spool_dir, data_root, max_pending=4) as spool:
        outcomes = await asyncio.gather(
            *(spool.put(SpoolRecord(f"full/{i}.txt", b"x")) for i in range(20)),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if isinstance(o, PutResult)]
        refused = [o for o in outcomes if isinstance(o, IntakeFull)]
        assert (len(accepted), len(refused)) == (4, 16)
        assert spool.stats["intake_full"] == 16
        # Once the queue drained, puts are accepted again
        assert not (await spool.put(SpoolRecord("full/later.txt", b"y"))).duplicate


async def test_torn_journal_tail_is_dropped_on_recovery(
    spool_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    # Given three acknowledged records, and a copy of the spool as a crash would leave it
    async with Spool(spool_dir, data_root) as spool:
        for i in range(3):
            await spool.put(SpoolRecord(f"torn/{i}.txt", body_for(i) * 20))
        shutil.copytree(spool_dir, tmp_path / "crashed")
    # When the last record is cut in half
    (journal,) = journals(tmp_path / "crashed")
    size = journal.stat().st_size
    with journal.open("r+b") as f:
        f.truncate(size - len(body_for(2) * 20) // 2)
    # Then recovery replays the two whole records and drops the torn one quietly
    fresh = tmp_path / "fresh"
    recovered = Spool(tmp_path / "crashed", fresh).recover_sync()
    assert [r.relpath for r in recovered] == ["torn/0.txt", "torn/1.txt"]
    assert (fresh / "torn" / "1.txt").read_bytes() == body_for(1) * 20
    assert not (fresh / "torn" / "2.txt").exists()
    assert journals(tmp_path / "crashed") == []


CRASH_WRITER = """
import asyncio, sys
from pathlib import Path
from eventrunner.server.spool import Spool, SpoolRecord

def body_for(i):
    return f"record {i}\\n".encode() * (i % 7 + 1)

async def main(spool_dir, data_root):
    async with Spool(Path(spool_dir), Path(data_root)) as spool:
        async def writer(w):
            for i in range(w, 1_000_000, 16):
                await spool.put(SpoolRecord(f"crash/{i:07d}.txt", body_for(i), message_id=f"m{i}"))
                print(i, flush=True)
        await asyncio.gather(*(writer(w) for w in range(16)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def read_acks_then_kill(proc: subprocess.Popen[bytes], wanted: int, timeout: float) -> set[int]:
    assert proc.stdout is not None
    buffer, acked = b"", set[int]()
    deadline = time.monotonic() + timeout
    try:
        while len(acked) < wanted:
            assert time.monotonic() < deadline, f"only {len(acked)} acks before the deadline"
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, "writer exited early"
                *lines, buffer = (buffer + chunk).split(b"\n")
                acked.update(int(line) for line in lines)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Acks printed just before the kill still count.
    *lines, _ = (buffer + proc.stdout.read()).split(b"\n")
    acked.update(int(line) for line in lines)
    return acked


async def test_every_acknowledged_record_survives_sigkill(
    spool_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    # Given a writer process putting records as fast as it can, printing each ack
    script = tmp_path / "crash_writer.py"
    script.write_text(textwrap.dedent(CRASH_WRITER))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(script), str(spool_dir), str(data_root)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, env=env) as proc:
        # When it is SIGKILLed in the middle of the burst
        acked = read_acks_then_kill(proc, wanted=500, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # Then after recovery every acknowledged body is at its path, and its id is remembered
    async with Spool(spool_dir, data_root) as spool:
        for i in sorted(acked):
            assert (data_root / "crash" / f"{i:07d}.txt").read_bytes() == body_for(i)
        for i in sorted(acked)[:20]:
            again = await spool.put(SpoolRecord("crash/again.txt", b"", message_id=f"m{i}"))
            assert again.duplicate


async def test_storage_failure_refuses_the_batch_and_keeps_no_half_record(
    spool_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    # Given a spool with one committed record
    async with Spool(spool_dir, data_root) as spool:
        await spool.put(SpoolRecord("ok/1.txt", b"first"))
        (journal,) = journals(spool_dir)
        size_before = journal.stat().st_size
        # When the kernel refuses to grow the journal (RLIMIT_FSIZE: writes past it get EFBIG)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_before + 65536, hard))
        try:
            with pytest.raises(StorageError, match="write failed"):
                await spool.put(SpoolRecord("big.bin", b"x" * (1 << 20), message_id="big"))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        # Then the half-written record is cut off and nothing of it is remembered
        assert journal.stat().st_size == size_before
        assert spool.stats["storage_errors"] == 1
        shutil.copytree(spool_dir, tmp_path / "crashed")
        retry = await spool.put(SpoolRecord("big.bin", b"retried", message_id="big"))
        assert not retry.duplicate
    recovered = Spool(tmp_path / "crashed", tmp_path / "fresh").recover_sync()
    assert [r.relpath for r in recovered] == ["ok/1.txt"]
    assert (data_root / "big.bin").read_bytes() == b"retried"


async def test_failed_fsync_with_failed_truncate_seals_the_journal(
    spool_dir: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (a fake): a failing fsync and truncate cannot be provoked for real here."""

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    async with Spool(spool_dir, data_root) as spool:
        await spool.put(SpoolRecord("seal/1.txt", b"one"))
        with monkeypatch.context() as patch:
            patch.setattr(os, "fdatasync", broken)
            patch.setattr(os, "ftruncate", broken)
            with pytest.raises(StorageError):
                await spool.put(SpoolRecord("seal/2.txt", b"two", message_id="two"))
        # The whole refused record is still in the old journal; the next one opens with a seal
        await spool.put(SpoolRecord("seal/3.txt", b"three"))
        assert len(journals(spool_dir)) == 2
        shutil.copytree(spool_dir, tmp_path / "crashed")
    recovered = Spool(tmp_path / "crashed", tmp_path / "fresh").recover_sync()
    assert [r.relpath for r in recovered] == ["seal/1.txt", "seal/3.txt"]


async def test_unwritable_target_is_kept_and_replayed_at_next_start(
    spool_dir: Path, data_root: Path
) -> None:
    # Given a file where the record's folder should be
    data_root.mkdir(parents=True)
    (data_root / "blocked").write_text("in the way")
    async with Spool(spool_dir, data_root) as spool:
        await spool.put(SpoolRecord("blocked/x.txt", b"kept"))
        await spool.put(SpoolRecord("free/y.txt", b"free"))
        await wait_until(lambda: spool.stats["materialise_errors"] == 1)
        await wait_until(lambda: (data_root / "free" / "y.txt").exists())
    assert journals(spool_dir), "the journal is kept while a record is not in place"
    # When the obstacle is gone, Then the next start writes the acknowledged body
    (data_root / "blocked").unlink()
    replayed: list[str] = []
    async with Spool(spool_dir, data_root, on_materialised=lambda r, e: replayed.append(r.relpath)):
        assert (data_root / "blocked" / "x.txt").read_bytes() == b"kept"
    # (free/y.txt reached its file before: writing it again would revert any later edit)
    assert replayed == ["blocked/x.txt"]
    assert journals(spool_dir) == []


async def test_unusable_spool_folder_fails_at_open(spool_dir: Path, data_root: Path) -> None:
    spool_dir.parent.mkdir(parents=True)
    spool_dir.write_text("a file where the spool folder should be")
    with pytest.raises(StorageError, match="cannot open webhook spool"):
        async with Spool(spool_dir, data_root):
            pass


async def test_close_is_safe_twice_and_refuses_later_puts(spool_dir: Path, data_root: Path) -> None:
    spool = Spool(spool_dir, data_root)
    await spool.__aenter__()
    await spool.close()
    await spool.close()
    with pytest.raises(StorageError, match="not running"):
        await spool.put(SpoolRecord("late.txt", b""))


async def test_close_drains_pending_puts(spool_dir: Path, data_root: Path) -> None:
    spool = Spool(spool_dir, data_root)
    await spool.__aenter__()
    puts = [asyncio.create_task(spool.put(SpoolRecord(f"drain/{i}.txt", b"d"))) for i in range(30)]
    await asyncio.sleep(0)
    await spool.close()
    assert all(not p.result().duplicate for p in puts)
    assert len(list((data_root / "drain").iterdir())) == 30


@pytest.mark.parametrize("relpath", ["", "/etc/passwd", "../escape.txt", "a/../../b", "a\\b"])
async def test_paths_outside_the_data_root_are_refused(
    spool_dir: Path, data_root: Path, relpath: str
) -> None:
    async with Spool(spool_dir, data_root) as spool:
        with pytest.raises(ValueError, match="plain relative path"):
            await spool.put(SpoolRecord(relpath, b""))
