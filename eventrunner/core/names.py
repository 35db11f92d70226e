"""Names eventrunner gives its own files, shared by the writers (state) and the ignore rules (core)."""

from __future__ import annotations

TMP_PREFIX = ".er-tmp-"
"""Every temp file or folder eventrunner writes starts with this; scans, tree hashes and the
watcher skip such names, and the crash sweep removes the ones a dead process left."""

STATE_DIR = ".eventrunner"
"""The state folder of a workspace; never matched by a pattern, never watched."""
