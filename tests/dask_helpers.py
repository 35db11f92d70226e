"""A real Dask cluster for tests and benchmarks: `dask scheduler` and `dask worker` processes.

Every process is started in a session of its own and carries a marker in its environment, so
`stop()` kills whole process groups (a worker's nanny and the worker it spawned) and
`marked_processes()` can prove that nothing started here is left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DASK = Path(sys.executable).with_name("dask")
MARK = "EVENTRUNNER_TEST_DASK"
DEADLINE = 60.0  # starting processes on a busy 2-core machine is slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def marked_processes(token: str) -> list[int]:
    """Pids of live processes whose environment carries this marker."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARK) == token:
                found.append(proc.pid)
    return found


@dataclass
class Cluster:
    """A scheduler and its workers, as subprocesses; `stop()` kills them all."""

    token: str
    folder: Path
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of everything this cluster starts (and of CLI runs that may start
        processes of their own)."""
        return {**os.environ, MARK: self.token}

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.folder / log, "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [str(DASK), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.folder,
            start_new_session=True,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> None:
        self._spawn(
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            "scheduler.log",
        )

    def start_worker(self, name: str, *extra: str) -> None:
        proc = self._spawn(
            [
                "worker",
                self.address,
                "--name",
                name,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--local-directory",
                str(self.folder / name),
                *extra,
            ],
            f"{name}.log",
        )
        self.workers.append(proc)

    def wait_for_workers(self, n: int) -> None:
        """Block until `n` workers are registered with the scheduler."""
        from distributed import Client

        deadline = time.monotonic() + DEADLINE
        with Client(self.address, timeout=DEADLINE, set_as_default=False) as client:
            while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fewer than {n} Dask workers started:\n{self.logs()}")
                time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        """{worker name: pid} of the workers registered now."""
        from distributed import Client

        with Client(self.address, timeout=DEADLINE, set_as_default=False) as client:
            return _pids(client)

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )

    def kill_scheduler(self) -> None:
        _killpg(self.procs[0])

    def stop(self) -> None:
        """SIGKILL every process group started here and reap the leaders."""
        for proc in self.procs:
            _killpg(proc)


def _pids(client: object) -> dict[str, int]:
    names = {
        addr: w["name"]
        for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()  # type: ignore[attr-defined]
    }
    got = client.run(os.getpid)  # type: ignore[attr-defined]
    return {str(names[a]): int(pid) for a, pid in got.items() if a in names}


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def cluster(folder: Path, token: str, workers: dict[str, tuple[str, ...]]) -> Iterator[Cluster]:
    """A scheduler and the named workers (with extra `dask worker` arguments), all killed at
    exit whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    c = Cluster(token, folder)
    try:
        c.start_scheduler()
        for name, extra in workers.items():
            c.start_worker(name, *extra)
        c.wait_for_workers(len(workers))
        yield c
    finally:
        c.stop()
