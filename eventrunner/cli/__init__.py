"""The `eventrunner` command line (kept light: a no-change `run` is a whole process)."""
