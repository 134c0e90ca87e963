"""The package list (everything else is in pyproject.toml): deepiot's packages plus deepiot.configs, which
pyproject.toml's package-dir maps onto the repository's top-level configs/ folder."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["deepiot", "deepiot.*"]), "deepiot.configs"])
