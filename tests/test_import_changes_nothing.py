"""Importing the kit changes nothing global (house rule 13): no warning or logging filter, no logger level,
no torch operator or fake kernel, no random state, no thread count (torch's, OpenCV's).

Each of the kit's modules is imported, in a fresh interpreter, after every other module it brings in: what
those libraries do when imported is theirs, the difference after that is the kit's. ``vitdense.__main__``,
which runs the command, is left out. (``vitdense.export`` registers its fake kernel for torchvision's ``nms``
only while exporting: ``tests/test_export.py``.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOT_IMPORTED = ("vitdense.__main__",)

SNAPSHOT = r"""
import importlib, json, logging, pkgutil, random, sys, warnings

import numpy as np
import torch
from torch._library import simple_registry


def kit_modules():
    import vitdense
    names = [module.name for module in pkgutil.walk_packages(vitdense.__path__, "vitdense.")]
    return ["vitdense", *(name for name in names if name not in NOT_IMPORTED)]


def state():
    loggers = {"": logging.getLogger()} | {
        name: logger for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    return {
        "warnings.filters": [repr(entry) for entry in warnings.filters],
        "loggers": {
            name: [logger.level, logger.disabled, logger.propagate, [repr(f) for f in logger.filters],
                   [repr(h) for h in logger.handlers]]
            for name, logger in loggers.items()
        },
        "logging.disable": logging.root.manager.disable,
        "torch operators": sorted(torch._C._dispatch_get_all_op_names()),
        "torch fake kernels": {
            name: repr(entry.fake_impl.kernel) for name, entry in simple_registry.singleton._data.items()
        },
        "torch random state": torch.random.get_rng_state().tolist(),
        "torch default dtype": str(torch.get_default_dtype()),
        "torch threads": torch.get_num_threads(),
        "opencv threads": __import__("cv2").getNumThreads(),
        "numpy random state": repr(np.random.get_state()[1][:8]),
        "random state": repr(random.getstate()[1][:8]),
    }


NOT_IMPORTED = tuple(sys.argv[2].split(","))
if sys.argv[1] == "list":
    for name in kit_modules():
        importlib.import_module(name)
    print(json.dumps([name for name in sys.modules if name.split(".")[0] != "vitdense"]))
else:
    for name in json.loads(sys.stdin.read()):
        try:
            importlib.import_module(name)
        except Exception:  # a module that only exists as another's attribute (six.moves-like)
            pass
    before = state()
    for name in kit_modules():
        importlib.import_module(name)
    after = state()
    print(json.dumps({
        key: [before[key], after[key]] for key in before
        if key != "loggers" and before[key] != after[key]
    } | {
        f"logger {name!r}": [before["loggers"].get(name), setting]
        for name, setting in after["loggers"].items()
        if before["loggers"].get(name, [0, False, True, [], []]) != setting
    }))
"""


def _run(step: str, stdin: str = "") -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, step, ",".join(NOT_IMPORTED)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.slow(seconds=19)  # a fresh interpreter per import
def test_importing_the_kit_changes_no_global_state():
    others = _run("list")
    changed = json.loads(_run("check", others))
    assert changed == {}, f"importing vitdense changed: {json.dumps(changed, indent=1)[:4000]}"
