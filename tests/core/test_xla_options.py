"""`import nestlearn` keeps XLA:CPU's YNNPACK to matrix products, in a fresh process; the switch
and a user's own setting turn it off."""

import os
import subprocess
import sys

import jaxlib
import pytest

from nestlearn.core import xla_options

checked_jaxlib = pytest.mark.skipif(
    not xla_options._jaxlib_checked(jaxlib.__version__),
    reason=f"jaxlib {jaxlib.__version__} is outside CHECKED_JAXLIB: nestlearn sets no flag",
)

# Prints the YNNPACK fusions of an element-wise + reduce function and of a batched product.
PROBE = """
import os, sys
import nestlearn
import jax, jax.numpy as jnp
f = lambda a, b: jnp.sum(a * b, axis=1) * jnp.tanh(a[:, 0])
g = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)
a = jnp.ones((4, 64, 32))
count = lambda fn, *args: jax.jit(fn).lower(*args).compile().as_text().count("__ynn_fusion")
print(count(f, a, a), count(g, a, a.mT), os.environ.get("XLA_FLAGS", ""), sep="|")
"""


def _probe(**env) -> tuple[int, int, str]:
    full = {k: v for k, v in os.environ.items() if k not in (xla_options.ENV, "XLA_FLAGS")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**full, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    elementwise, product, flags = done.stdout.strip().splitlines()[-1].split("|")
    return int(elementwise), int(product), flags


@checked_jaxlib
def test_import_keeps_ynnpack_to_matrix_products():
    assert _probe(**{xla_options.ENV: "0"})[:2] == (1, 1)  # XLA's default: both to YNNPACK
    elementwise, product, flags = _probe()
    assert (elementwise, product) == (0, 1)
    assert flags == " ".join(xla_options.CPU_FLAGS)


@checked_jaxlib
def test_a_users_own_setting_wins():
    mine = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
    elementwise, _, flags = _probe(XLA_FLAGS=mine)
    assert flags == mine and elementwise == 1


@pytest.mark.parametrize(
    ("version", "checked"), [("0.10.2", True), ("0.9.1", False), ("0.11.0", False)]
)
def test_only_jaxlib_versions_checked_with_the_flag_get_it(version, checked):
    assert xla_options._jaxlib_checked(version) is checked


def test_after_the_backends_started_it_warns_and_changes_nothing(monkeypatch):
    monkeypatch.delenv(xla_options.ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    monkeypatch.setattr(xla_options, "_backends_started", lambda: True)
    with pytest.warns(UserWarning, match="imported after JAX started its backends"):
        assert xla_options.apply_cpu_flags() == ()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=0"
