"""Marks the costly members of the shared kernel suites as `slow`.

A suite subclass lists test names (``item.originalname``) or full parametrized names
(``item.name``) in ``SLOW_TESTS``; those run under ``make test-slow`` only. This keeps the default
run within the kernels' time budget while every backend still has the whole suite.
"""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        slow = getattr(item.cls, "SLOW_TESTS", ())
        if item.originalname in slow or item.name in slow:
            item.add_marker(pytest.mark.slow)
