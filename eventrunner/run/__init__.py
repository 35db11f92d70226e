"""Doing the work: planner, evaluation, the engine, executors, commits and management operations."""
