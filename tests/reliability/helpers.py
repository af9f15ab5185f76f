"""Shared pieces of the reliability tests: the tiny train config file and a run of
`experiments/main.py` in a subprocess."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "tests" / "train" / "tiny_config.py"


def run_main(*args: str, timeout: float = 300, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python experiments/main.py *args` on the CPU, from the repository root."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "main.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def _module(path: Path, name: str):
    """The module of a file under tests/ (loaded by path: its directory is no package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(model: str | None = None):
    """The pipeline tests' tiny experiment config (`tests/train/tiny_config.py`)."""
    return _module(TINY_CONFIG, "reliability_tiny_config").get_config(model)


def write_tiny_gguf(path: Path) -> dict:
    """A tiny Llama GGUF file (`tests/pretrained/conftest.py`'s writer)."""
    writer = _module(ROOT / "tests" / "pretrained" / "conftest.py", "reliability_gguf")
    return writer.write_tiny_gguf(path)
