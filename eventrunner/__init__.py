"""eventrunner: keep derived files fresh, per entity, driven by events."""

from eventrunner.core.errors import EventRunnerError, PermanentError, RetryLater

__all__ = ["EventRunnerError", "PermanentError", "RetryLater", "__version__"]
__version__ = "0.1.0"
