"""The container contract without building the image: the installed package, started with the
image's own USER, ENV, ENTRYPOINT and CMD (read from deploy/Dockerfile), serves a workspace
whose code folder is mounted read-only and whose state and data folders are the only
writable places, answers /healthz and the image's HEALTHCHECK, and exits 0 on SIGTERM.

The image's layout is rebuilt in a private mount namespace (`unshare --mount`): the workspace
read-only (as a `:ro` bind or readOnlyRootFilesystem), the state folder mounted over its
`.eventrunner/`. Also checked: the NFS advice (WATCHFILES_FORCE_POLLING) really replaces
inotify with polling.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_helpers import (
    DEPLOY,
    REPO,
    dockerfile_env,
    dockerfile_exec_form,
    dockerfile_instructions,
    last,
)
from serve_helpers import chain_workspace, read, request, serving, wait_until

INSTR = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
UID, GID = (int(part) for part in last(INSTR, "USER").split(":"))
ECHO = REPO / "examples" / "echo"
TOKEN = "contract-test-token"


@dataclass
class Layout:
    """The image's folders under one temp root: code (read-only), state and data (uid-owned)."""

    base: Path
    workspace: Path
    state: Path
    data: Path


def _blocked_dirs(paths: list[Path]) -> dict[Path, set[str]]:
    """Folders on the way to `paths` that others may not enter, with the entries needed below.

    A Python installed under /root (pyenv) is such a case: the image's interpreter is readable
    by everyone, so the namespace makes these folders passable instead of changing the host.
    """
    out: dict[Path, set[str]] = {}
    for path in paths:
        real = path.resolve()
        for parent in [*reversed(real.parents), real][:-1]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                child = real.relative_to(parent).parts[0]
                out.setdefault(parent, set()).add(child)
    return out


def _as_image_user(layout: Layout, argv: list[str]) -> list[str]:
    """argv run as the image's USER with no capabilities, in the image's mount layout."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if os.geteuid() != 0 or unshare is None or setpriv is None:
        pytest.skip("needs root with unshare and setpriv to take the image's uid and mounts")
    stash = layout.base / "stash"
    ws, q = layout.workspace, shlex.quote
    script = [
        "set -e",
        f"mount --bind {q(str(ws))} {q(str(ws))}",
        f"mount -o remount,bind,ro {q(str(ws))}",
        f"mount --bind {q(str(layout.state))} {q(str(ws / '.eventrunner'))}",
    ]
    needed = [Path(sys.prefix), Path(sys.base_prefix), REPO]
    for n, (folder, children) in enumerate(_blocked_dirs(needed).items()):
        keep = stash / str(n)
        script += [
            f"mkdir -p {q(str(keep))}",
            f"mount --bind {q(str(folder))} {q(str(keep))}",
            f"mount -t tmpfs -o mode=0755 tmpfs {q(str(folder))}",
        ]
        for child in sorted(children):
            script += [
                f"mkdir {q(str(folder / child))}",
                f"mount --bind {q(str(keep / child))} {q(str(folder / child))}",
            ]
    priv = [setpriv, f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"]  # fmt: skip
    script.append(f"cd {q(str(ws))}")  # WORKDIR
    script.append("exec " + shlex.join(priv + argv))
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)]


@pytest.fixture
def layout() -> Iterator[Layout]:
    """examples/echo laid out as in the image; /tmp-based so that the image's uid can enter."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the state and data folders to the image's uid")
    base = Path(tempfile.mkdtemp(prefix="eventrunner-image-"))
    try:
        base.chmod(0o755)
        ws = base / "workspace"
        for part in ("pipelines", "handlers"):  # root-owned, 0755/0644: the code
            shutil.copytree(ECHO / part, ws / part)
        (ws / ".eventrunner").mkdir(mode=0o755)  # the mount point of the state volume
        state, data = base / "state", base / "data"
        shutil.copytree(ECHO / "inbox", data / "inbox")
        state.mkdir(mode=0o700)
        for folder in (state, data, data / "inbox", *(data / "inbox").iterdir()):
            os.chown(folder, UID, GID)
        data.chmod(0o700)
        yield Layout(base, ws, state, data)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _image_env(layout: Layout, *, token: bool = True) -> dict[str, str]:
    """The image's ENV with its paths mapped onto the layout; nothing from this process."""
    env = dockerfile_env(INSTR)
    assert env["EVENTRUNNER_DATA_ROOT"] == "/data"
    assert env["EVENTRUNNER_SERVER_HOST"] == "0.0.0.0"
    assert env["EVENTRUNNER_SERVER_TOKEN_ENV"] == "EVENTRUNNER_TOKEN"
    assert env["PATH"].startswith("/opt/venv/bin:")
    env.update(
        PATH=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        HOME="/nonexistent",
        EVENTRUNNER_DATA_ROOT=str(layout.data),
        EVENTRUNNER_SERVER_PORT="0",  # the image's 8700 could be taken here
    )
    if token:
        env["EVENTRUNNER_TOKEN"] = TOKEN
    return env


def _image_argv(layout: Layout) -> list[str]:
    """ENTRYPOINT + CMD with /workspace mapped; tini gets -s as it is not PID 1 here."""
    cmd = [str(layout.workspace) if a == "/workspace" else a
           for a in dockerfile_exec_form(last(INSTR, "CMD"))]  # fmt: skip
    entry = dockerfile_exec_form(last(INSTR, "ENTRYPOINT"))
    assert entry == ["tini", "--"]
    tini = shutil.which("tini")
    # Without tini (Debian package tini; .ci/run installs it) serve runs as the direct child.
    return ([tini, "-s", "--"] if tini else []) + cmd


class ImageProcess:
    """The image's command as a subprocess; stdout lines collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def port(self) -> int | None:
        """The bound port once the serving line is out (after the start-up reconcile)."""
        for line in self.lines:
            if line.startswith("eventrunner: serving "):
                return int(line.rsplit(" at ", 1)[1].split()[0].rsplit(":", 1)[1])
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}:\n{self.log.read_text()}")
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _inotify_fds(pid: int) -> int:
    """How many inotify instances the process holds open ("anon_inode:inotify")."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += "inotify" in os.readlink(fd)
    return count


def test_image_serves_as_its_uid_from_read_only_code_and_stops_on_sigterm(
    layout: Layout,
) -> None:
    code_before = _tree(layout.workspace)
    argv = _as_image_user(layout, _image_argv(layout))
    server = ImageProcess(argv, _image_env(layout), layout.base / "serve.err")
    try:
        # Given the image's command running, When it is ready, Then it answers as the image's uid
        port = wait_until(server.port, "the serving line", timeout=30)
        url = f"http://127.0.0.1:{port}"
        assert request("GET", url + "/healthz")[0] == 200
        wait_until(lambda: request("GET", url + "/readyz")[0] == 200, "/readyz")
        pid = int(read(layout.state / "server.json").split('"pid": ')[1].split("}")[0])  # type: ignore[union-attr]
        status = _status(pid)
        assert status["Uid"].split() == [str(UID)] * 4 and status["Gid"].split() == [str(GID)] * 4
        assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1"
        # the same interpreter and package as this test's venv, under tini when it is installed
        assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(sys.executable)
        if shutil.which("tini"):
            assert int(status["PPid"]) == server.proc.pid != pid
        # the management API takes the token named by the image's EVENTRUNNER_SERVER_TOKEN_ENV
        assert request("GET", url + "/api/pipelines")[0] == 401
        # the image's HEALTHCHECK, run as the image runs it
        health = dockerfile_exec_form(last(INSTR, "HEALTHCHECK").split(" CMD ", 1)[1])
        env = {**_image_env(layout), "EVENTRUNNER_SERVER_PORT": str(port)}
        check = subprocess.run(_as_image_user(layout, health), env=env, timeout=30)
        assert check.returncode == 0
        # the echo pipeline ran as that uid: outputs in the data folder, manifests in the state
        summary = wait_until(lambda: read(layout.data / "summary.md"), "summary.md")
        assert "- hello: 2 words" in summary
        assert (layout.state / "state" / "echo.shout" / "hello.json").is_file()
        # a dropped file is seen (inotify, the default) and flows through
        assert _inotify_fds(pid) > 0
        staged = layout.data / "dropped.tmp"
        staged.write_text("dropped in\n")
        staged.rename(layout.data / "inbox" / "dropped.txt")
        shouted = wait_until(lambda: read(layout.data / "shouted" / "dropped.txt"), "shouted")
        assert shouted == "DROPPED IN!\n"
        # When SIGTERM arrives (the image's STOPSIGNAL), Then it exits 0 well within 45 s
        assert last(INSTR, "STOPSIGNAL") == "SIGTERM"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(45) == 0, (layout.base / "serve.err").read_text()
        assert "Traceback" not in (layout.base / "serve.err").read_text()
    finally:
        server.close()
    # nothing was written into the code folder (no __pycache__, no state beside the code)
    assert _tree(layout.workspace) == code_before


def test_image_without_a_token_exits_2_with_a_one_line_reason(layout: Layout) -> None:
    argv = _as_image_user(layout, _image_argv(layout))
    done = subprocess.run(argv, env=_image_env(layout, token=False), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "eventrunner: refusing to bind 0.0.0.0 without a token: set [server] token_env and that variable"
    ]


def test_forced_polling_for_network_volumes_replaces_inotify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given serve started with the README's advice for NFS/CIFS volumes
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    monkeypatch.setenv("WATCHFILES_POLL_DELAY_MS", "50")
    ws = chain_workspace(tmp_path / "ws")
    with serving(ws, tmp_path / "logs") as server:
        wait_until(lambda: server.get("/readyz")[0] == 200, "/readyz")
        # Then no inotify watch is open (the contract test above sees one without the variable)
        assert _inotify_fds(server.pid) == 0
        # When a file is dropped, Then polling notices it and the chain runs
        staged = ws / "staged.tmp"
        staged.write_text("polled words\n")
        (ws / "inbox").mkdir(exist_ok=True)
        staged.rename(ws / "inbox" / "a.txt")
        assert wait_until(lambda: read(ws / "count" / "a.txt"), "count/a.txt") == "2 words\n"
