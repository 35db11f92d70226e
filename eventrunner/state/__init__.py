"""Disk and memory without an event loop: durable writes, the store, the stat/hash cache, the index."""
