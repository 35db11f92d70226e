"""`eventrunner logs STAGE ENTITY`: what the last attempt of a state printed and logged.

The text goes to stdout as it was captured (so it pipes to `head` or `grep`); a line saying
which attempt it was goes to stderr.
"""

from __future__ import annotations

import argparse
import sys

from eventrunner.cli.common import print_json, read_index
from eventrunner.core.durations import format_time


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the captured output of the state's last attempt; exit 0 also when it was silent."""
    from eventrunner.run.queries import last_output

    _, index = read_index(args)
    data = last_output(index, args.stage, args.entity, args.pipeline)
    if args.json:
        print_json(data)
        return 0
    if data["outcome"] is None:
        print(f"eventrunner: {data['stage']} {data['entity']} has not run yet", file=sys.stderr)
        return 0
    when = format_time(data["at"])
    said = f"attempt {data['attempt']}, {data['outcome']} {when}"
    if not data["output"]:
        print(
            f"eventrunner: {data['stage']} {data['entity']} ({said}) printed nothing",
            file=sys.stderr,
        )
        return 0
    print(f"eventrunner: {data['stage']} {data['entity']} ({said}):", file=sys.stderr)
    sys.stdout.write(data["output"] if data["output"].endswith("\n") else data["output"] + "\n")
    return 0
