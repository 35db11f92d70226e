"""Where the workspace is: cheap to import (the CLI's fast path uses it before anything heavy)."""

from __future__ import annotations

from pathlib import Path

from eventrunner.core.errors import WorkspaceNotFound
from eventrunner.core.names import STATE_DIR

__all__ = ["STATE_DIR", "find_workspace"]


def find_workspace(start: Path | None = None) -> Path:
    """Nearest folder upward holding eventrunner.toml or pipelines/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "eventrunner.toml").is_file() or (folder / "pipelines").is_dir():
            return folder
    raise WorkspaceNotFound(
        f"no workspace found at or above {here} (need eventrunner.toml or pipelines/)"
    )
