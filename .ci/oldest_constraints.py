"""Pip constraints that install the lowest versions ``pyproject.toml`` declares, for ``make test-oldest``.

Each runtime dependency is pinned to its ``>=`` or ``==`` bound, read from ``pyproject.toml`` itself, so the
tested versions cannot drift from the declared ones. torch and torchvision are pinned to the versions
installed beside the interpreter that runs this script (the main ``.venv``) instead: pip then installs the
wheels this machine already has, and the kit's torch floor is tested on the GPU machine. Transitive
dependencies float: none of the lowest versions needs an older one.

Usage: ``.venv/bin/python .ci/oldest_constraints.py > constraints.txt``.
"""

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"

# Kept at the installed version: see the module docstring.
NOT_VARIED = ("torch", "torchvision")


def lowest_version(requirement: Requirement) -> str:
    """The version a ``>=`` or ``==`` bound names, e.g. ``2.5.3`` for ``lightning>=2.5.3``."""
    bounds = [spec.version for spec in requirement.specifier if spec.operator in (">=", "==")]
    if len(bounds) != 1:
        raise SystemExit(
            f"{PYPROJECT}: {requirement} needs exactly one '>=' or '==' bound for make test-oldest to pin;"
            " declare the lowest version the kit supports."
        )
    return bounds[0]


def constraints() -> list[str]:
    """One ``name==version`` line per runtime dependency of ``pyproject.toml``."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    lines = []
    for requirement in map(Requirement, dependencies):
        pinned = version(requirement.name) if requirement.name in NOT_VARIED else lowest_version(requirement)
        lines.append(f"{requirement.name}=={pinned}")
    return lines


if __name__ == "__main__":
    print("\n".join(constraints()))
