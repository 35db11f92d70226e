"""eventrunner: keep derived files fresh, per entity, driven by events."""

from eventrunner.core.changes import Changes
from eventrunner.core.errors import EventRunnerError, NeedFullCall, PermanentError, RetryLater

__all__ = [
    "Changes",
    "EventRunnerError",
    "NeedFullCall",
    "PermanentError",
    "RetryLater",
    "__version__",
]
__version__ = "0.1.0"
