"""Pure decisions over plain data: patterns, entity ids, the stage graph, records, staleness.

Standard library only: no asyncio, HTTP, disk or pydantic (tests/test_layers.py checks it).
"""
