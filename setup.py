"""Package layout: `kernels/` installs under the import name `nestlearn.kernels`.

A top-level `kernels` package name belongs to another distribution, so the directory is mapped
into the `nestlearn` namespace (this works for editable installs too). Everything else lives in
pyproject.toml.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["nestlearn", "nestlearn.*"])
packages += ["nestlearn.kernels"] + [f"nestlearn.kernels.{p}" for p in find_packages("kernels")]

setup(packages=packages, package_dir={"nestlearn": "nestlearn", "nestlearn.kernels": "kernels"})
