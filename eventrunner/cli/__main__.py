"""`python -m eventrunner.cli`: the same as the `eventrunner` command."""

from eventrunner.cli.main import console

console()
