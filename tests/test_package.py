"""Packaging contract: the kernels directory installs as `nestlearn.kernels`."""

import importlib
import importlib.util


def test_kernels_import_under_nestlearn_namespace():
    mod = importlib.import_module("nestlearn.kernels")
    assert mod.__file__.replace("\\", "/").endswith("kernels/__init__.py")


def test_no_top_level_kernels_package_from_this_project():
    spec = importlib.util.find_spec("kernels")
    # Another distribution may own `kernels`; this project must never provide it.
    assert spec is None or "nestlearn" not in (spec.origin or "")
