"""The experiment scripts' tests load each script by path (`experiments/` is no package)."""

import importlib.util
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="session")
def load_script():
    """`load(name)`: a fresh module of `experiments/<name>.py` (e.g. "lm_compare",
    "configs/memory_study"), executed once per call."""

    def load(name: str):
        path = EXPERIMENTS / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{Path(name).name}_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
