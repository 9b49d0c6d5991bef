"""Test-wide settings (no network, no writes outside tmp, deterministic threads) and the shared runs."""

import contextlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "vitdense-mpl"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest processes (pytest-xdist) on CI's two cores: one thread each, as torch's
    # default (one per core) in both would have four threads contend for two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

RECIPES = Path(__file__).parents[1] / "recipes"


# The seconds each session demo run trains for on one idle core (tests/test_learning.py, `make test`): its
# readers' group expects them on top of the readers' own.
DEMO_RUN_SECONDS = {"demo_detector_run": 115, "demo_segmenter_run": 80}


def reads_demo_run(run: str) -> pytest.MarkDecorator:
    """The mark of a test that reads the session's demo run ``run`` (a key of :data:`DEMO_RUN_SECONDS`):
    pytest-xdist hands the readers of one run to one process, which trains it once."""
    return pytest.mark.xdist_group(run)


def expected_seconds(group: str, items: list[pytest.Item]) -> float:
    """How long the tests ``items`` of the xdist group ``group`` take on one idle core: the ``seconds`` of
    their ``slow`` marks, plus the demo run the group trains."""
    marked = 0.0
    for item in items:
        for mark in item.iter_markers("slow"):
            if "seconds" not in mark.kwargs:
                raise pytest.UsageError(f"{item.nodeid}: write its mark as @pytest.mark.slow(seconds=N)")
            marked += mark.kwargs["seconds"]
    return marked + DEMO_RUN_SECONDS.get(group, 0)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests for pytest-xdist (``--dist loadgroup``) and hand out the longest groups first.

    A test without an ``xdist_group`` mark joins its module's group, so a module's fixtures are built by one
    process, once. The groups run longest first by :func:`expected_seconds` (then in collection order):
    pytest-xdist gives a process the next group whenever it is nearly done with its own, so the long groups
    spread over both processes while the many short ones fill in at the end; a long group started last would
    keep one process busy while the other idles.
    """
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is None:
            group = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))
        else:
            group = mark.args[0] if mark.args else mark.kwargs["name"]
        groups.setdefault(group, []).append(item)

    ordered = sorted(groups.items(), key=lambda group: expected_seconds(*group), reverse=True)
    items[:] = [item for _, group in ordered for item in group]


@dataclass(frozen=True)
class DemoRun:
    """A bounded training run of a demo recipe.

    Attributes:
        folder: the run's ``trainer.default_root_dir``.
        checkpoint: its ``last.ckpt`` (the weights after the last step).
        metrics: the JSON line the command printed last (the final evaluation's metrics).
    """

    folder: Path
    checkpoint: Path
    metrics: dict[str, Any]


def fit_demo(folder: Path, recipe: str, arguments: list[str]) -> DemoRun:
    """Run ``vitdense fit`` in this process on a recipe of ``recipes/`` with extra ``arguments``."""
    from vitdense.cli import main  # imported here: collecting the tests alone need not import the kit

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(
            [
                *("fit", "--config", str(RECIPES / recipe)),
                *arguments,
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={folder}",
            ]
        )
    (checkpoint,) = folder.rglob("last.ckpt")
    return DemoRun(folder, checkpoint, json.loads(printed.getvalue().strip().splitlines()[-1]))


def demo_detection_schedule(root: Path, steps: int, warmup_steps: int | None = None) -> list[str]:
    """``steps`` steps x 4 images = 2 epochs of ``2 * steps`` images in ``root``, evaluated once at the
    end; the learning rate warms up over ``warmup_steps`` (default a fifth of the steps)."""
    warmup = steps // 5 if warmup_steps is None else warmup_steps
    return [
        f"--data.init_args.root={root}",
        f"--data.init_args.num_train={2 * steps}",
        "--data.init_args.num_val=40",
        f"--trainer.max_steps={steps}",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=2",
        f"--model.init_args.lr_scheduler.init_args.total_steps={steps}",
        f"--model.init_args.lr_scheduler.init_args.warmup_steps={warmup}",
    ]


@pytest.fixture(scope="session")
def process_pair(tmp_path_factory):
    """Two processes that run ``vitdense`` commands as the ranks of one DDP run (:mod:`tests.process_pair`),
    shared by the tests of one pytest process."""
    from tests.process_pair import ProcessPair

    pair = ProcessPair(tmp_path_factory.mktemp("process_pair"))
    yield pair
    pair.close()


@pytest.fixture(scope="session")
def demo_detector_run(tmp_path_factory) -> DemoRun:
    """The demo Mask R-CNN recipe trained for 100 steps (~2 min on one thread): tests/test_learning.py checks
    that it learned, tests/test_distributed.py evaluates and predicts with its weights. Its readers carry
    ``reads_demo_run("demo_detector_run")``."""
    folder = tmp_path_factory.mktemp("demo_detector")
    return fit_demo(folder, "demo_shapes_mask_rcnn.yaml", demo_detection_schedule(folder / "shapes", 100))


@pytest.fixture(scope="session")
def demo_segmenter_run(tmp_path_factory) -> DemoRun:
    """The demo semantic segmentation recipe trained for 100 steps x 8 crops = 10 epochs of 80 images,
    evaluated once at the end (~1.5 min on one thread); shared like :func:`demo_detector_run`."""
    folder = tmp_path_factory.mktemp("demo_segmenter")
    arguments = [
        f"--data.init_args.root={folder / 'shapes'}",
        "--data.init_args.num_train=80",
        "--data.init_args.num_val=20",
        "--trainer.max_steps=100",
        "--trainer.max_epochs=10",
        "--trainer.check_val_every_n_epoch=10",
        "--model.init_args.lr_scheduler.init_args.total_steps=100",
        "--model.init_args.lr_scheduler.init_args.warmup_steps=13",
    ]
    return fit_demo(folder, "demo_shapes_semseg.yaml", arguments)
