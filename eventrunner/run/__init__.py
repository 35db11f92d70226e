"""Doing the work: the session (one lifecycle), planner, evaluation, engine, commits, the run
report, and the management layer (management.py changes state, queries.py reads it)."""
