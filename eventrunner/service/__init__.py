"""The long-running runtime of `serve`: watcher, scheduler and the event-driven loop."""
