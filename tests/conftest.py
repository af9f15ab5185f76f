"""Shared test configuration.

Tests run on the CPU. float64 checks use `jax.enable_x64(True)` as a context manager (see the
`x64` fixture) so the rest of the suite keeps JAX's float32 defaults.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's programs are small and most are compiled once: XLA:CPU's LLVM optimisation, not
# the run, dominates their time. Level 0 leaves XLA's optimised HLO as it is (only LLVM's code
# generation changes, so float results may differ in the last bits) and compiles about twice as
# fast; subprocesses inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()

import jax
import pytest


@pytest.fixture
def x64():
    """Enable float64 for the duration of one test."""
    with jax.enable_x64(True):
        yield
