"""Shared test configuration.

Tests run on the CPU. float64 checks use `jax.enable_x64(True)` as a context manager (see the
`x64` fixture) so the rest of the suite keeps JAX's float32 defaults.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest


@pytest.fixture
def x64():
    """Enable float64 for the duration of one test."""
    with jax.enable_x64(True):
        yield
