"""``make test-oldest`` installs the lowest versions that pyproject.toml declares."""

import importlib.util
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]


def _script():
    path = ROOT / ".ci" / "oldest_constraints.py"
    spec = importlib.util.spec_from_file_location("oldest_constraints", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dependency_is_pinned_to_its_declared_lower_bound():
    declared = [
        Requirement(line)
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    pins = dict(line.split("==") for line in _script().constraints())
    assert list(pins) == [requirement.name for requirement in declared]
    assert pins["torch"] == version("torch") and pins["torchvision"] == version("torchvision")
    for requirement in declared:
        assert requirement.specifier.contains(pins[requirement.name]), requirement
        if requirement.name not in ("torch", "torchvision"):
            assert any(
                spec.operator in (">=", "==") and spec.version == pins[requirement.name]
                for spec in requirement.specifier
            ), requirement


@pytest.mark.parametrize("declared", ["lightning", "lightning<3", "lightning>=2.5,>=2.6"])
def test_a_dependency_without_one_lower_bound_is_refused(declared):
    with pytest.raises(SystemExit, match="needs exactly one '>=' or '==' bound"):
        _script().lowest_version(Requirement(declared))
