"""Stock handler `shell`: run a command template through /bin/sh, every substitution quoted.

params: `command` (template), optional `timeout` (seconds or "30s") and `env` (a table).
Placeholders: {input.NAME} absolute path(s), {output} the file to write, {vars.X}, {params.X}.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

from eventrunner.core.errors import EventRunnerError, HandlerTimeout, PermanentError
from eventrunner.run.context import Context

from ._common import (
    Value,
    context_values,
    duration_param,
    input_paths,
    one_output,
    render,
    str_mapping,
)

WHAT = "shell"
STDERR_LINES = 20
STDERR_CHARS = 4000
# dash: "sh: 1: foo: not found"; bash: "bash: line 1: foo: command not found"
_NOT_FOUND = re.compile(r"^(?:.*?: )?([^:\n]+): (?:command )?not found\s*$", re.M)


class CommandFailed(EventRunnerError):
    """Raised when a shell command exits non-zero or is killed; carries its stderr tail."""


def shell(ctx: Context, **inputs: Path) -> bytes | None:
    """Run params.command; the output is {output} if the command wrote it, else its stdout."""
    template = ctx.params.get("command")
    if not isinstance(template, str) or not template.strip():
        raise PermanentError(f"{WHAT}: params.command must be a non-empty command template")
    timeout = duration_param(ctx, "timeout", None, WHAT)
    extra_env = str_mapping(ctx, "env", WHAT)
    one_output(ctx, WHAT)
    assert ctx.output_path is not None
    command = render(
        template, _values(ctx, ctx.output_path, inputs), shlex.quote, f"{WHAT}: params.command"
    )
    env = {**os.environ, **extra_env} if extra_env else None
    stdout, stderr, code = _run(command, ctx.data_root, env, timeout)
    if code != 0:
        raise _failure(code, stderr)
    if ctx.output_path.exists():
        return None
    return stdout


def _values(ctx: Context, output: Path, inputs: dict[str, Path]) -> dict[str, Value]:
    values = context_values(ctx)
    values["output"] = os.path.abspath(output)
    for name, value in inputs.items():
        paths = [os.path.abspath(p) for p in input_paths(name, value, WHAT)]
        values[f"input.{name}"] = paths if isinstance(value, dict) else paths[0]
    return values


def _run(
    command: str, cwd: Path, env: dict[str, str] | None, timeout: float | None
) -> tuple[bytes, str, int]:
    """(stdout, stderr text, exit code); on timeout the whole process group is killed."""
    # A session of its own makes the shell and everything it starts one process group, so a
    # timeout kills pipelines and background children too, not just /bin/sh.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        tail = _tail(err)
        raise HandlerTimeout(
            f"{WHAT}: command timed out after {timeout:g}s; its process group was killed"
            + (f"\n--- last stderr lines ---\n{tail}" if tail else "")
        ) from None
    except BaseException:
        _kill_group(proc)  # interrupted or cancelled: leave no process behind
        proc.wait()
        raise
    return out, err.decode("utf-8", errors="replace"), proc.returncode


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(stderr: str | bytes) -> str:
    text = stderr.decode("utf-8", errors="replace") if isinstance(stderr, bytes) else stderr
    tail = "\n".join(text.rstrip().splitlines()[-STDERR_LINES:])
    return tail if len(tail) <= STDERR_CHARS else "..." + tail[-STDERR_CHARS:]


def _failure(code: int, stderr: str) -> EventRunnerError:
    """The error for a non-zero exit: a missing or unusable program is permanent."""
    tail = _tail(stderr)
    detail = f"\n--- last stderr lines ---\n{tail}" if tail else " (no stderr)"
    if code == 127:
        found = _NOT_FOUND.findall(stderr)
        tool = found[-1].strip() if found else "unknown"
        return PermanentError(f"{WHAT}: program not found: {tool} (exit code 127){detail}")
    if code == 126:
        return PermanentError(f"{WHAT}: program cannot be executed (exit code 126){detail}")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return CommandFailed(f"{WHAT}: command killed by {name}{detail}")
    return CommandFailed(f"{WHAT}: command failed with exit code {code}{detail}")
