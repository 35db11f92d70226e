"""`python -m eventrunner.cli`: the same as the `eventrunner` command."""

from eventrunner.cli.main import console

# Guarded: Dask starts local workers with spawn, which imports the main module again.
if __name__ == "__main__":
    console()
