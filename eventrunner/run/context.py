"""What a handler may know about its run: the `ctx` it may take as its first parameter."""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventrunner.core.errors import PermanentError
from eventrunner.core.redact import remember_secret
from eventrunner.run.capture import HandlerLog


class Secrets(Mapping[str, str]):
    """Handler secrets, read from the environment on access only (never stored or logged)."""

    def __getitem__(self, name: str) -> str:
        value = os.environ.get(name)
        if value is None:
            raise PermanentError(f"secret {name!r} is not set in the environment")
        remember_secret(value)  # masked in every error, log line and answer from now on
        return value

    def __iter__(self) -> typing.Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<secrets from the environment>"


@dataclass
class Context:
    """What a handler may know about its run (the optional first parameter `ctx`)."""

    stage: str
    pipeline: str
    entity: dict[str, str]
    entity_id: str
    params: dict[str, Any]
    output_path: Path | None  # where a handler that returns None writes (a temp path we rename)
    final_path: Path | None
    attempt: int
    data_root: Path
    log: HandlerLog
    timeout: float | None = None  # the stage's timeout, for handlers that start subprocesses
    secrets: Secrets = field(default_factory=Secrets)
    _relpath: str | None = field(default=None, repr=False)  # final_path's relpath, made once

    def secret(self, name: str) -> str:
        """A secret from the environment; PermanentError when unset."""
        return self.secrets[name]
