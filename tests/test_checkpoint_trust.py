"""Loading a checkpoint or weights file from someone else runs none of its code, through every entry point."""

import re
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import Payload
from tests.tiny import TINY_CONFIG
from vitdense.checkpoint_trust import (
    KIT_TASKS,
    TRUSTED_MODULES,
    UntrustedCheckpointError,
    check_checkpoint_classes,
    class_paths,
    read_checkpoint,
)
from vitdense.cli import main, run
from vitdense.inference import Predictor, load_checkpoint
from vitdense.tasks import DetectionTask, SemanticSegmentationTask

RECIPES = Path(__file__).parents[1] / "recipes"
RECIPE = RECIPES / "demo_shapes_mask_rcnn.yaml"


def _run_arguments(root: Path, shapes: Path) -> list[str]:
    """A one-step run of the demo recipe on a tiny model, writing into ``root``."""
    vit = {"init_args": {"config": TINY_CONFIG}}
    backbone = {"init_args": {"out_channels": 32, "vit": vit}}
    detector = {"init_args": {"head_dim": 32, "fc_dim": 64, "backbone": backbone}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"detector": detector}}}))
    return [
        "--config",
        str(RECIPE),
        "--config",
        str(root / "tiny.yaml"),
        f"--data.init_args.root={shapes}",
        "--data.init_args.num_train=2",
        "--data.init_args.num_val=1",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--trainer.max_steps=1",
        "--trainer.max_epochs=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """A checkpoint of one training step, and the arguments of a run like the one that wrote it."""
    tmp = tmp_path_factory.mktemp("trained")
    shapes = tmp / "shapes"
    main(["fit", *_run_arguments(tmp / "run", shapes)])
    checkpoint = (tmp / "run" / "checkpoints" / "last.ckpt").resolve()
    image = tmp / "photo.png"
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(image)
    return SimpleNamespace(checkpoint=checkpoint, shapes=shapes, image=image)


def _variant(trained: SimpleNamespace, path: Path, change) -> Path:
    """The trained checkpoint, with ``change(checkpoint)`` applied, saved as ``path``."""
    checkpoint = torch.load(trained.checkpoint, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


def _one_line_error(argv: list[str], monkeypatch, capsys) -> str:
    """Run the console script; check that it fails with exit status 1 and a message without a traceback."""
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as exit_info:
        patch.setattr(sys, "argv", ["vitdense", *argv])
        run()
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and "Traceback" not in "\n".join(error)
    assert error[-1] == "(VITDENSE_TRACEBACK=1 shows where it was raised)"
    return error[-2]


def _argument_error(argv: list[str], capsys) -> str:
    """Run ``predict --ckpt_path`` or ``export``; check that it fails as an argument error, in one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and error[0].startswith("error: ") and len(error) == 2, error
    return error[0]


def test_a_hostile_checkpoint_runs_nothing_through_any_entry_point(trained, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    hostile = _variant(trained, tmp_path / "hostile.ckpt", lambda c: c.update(extra=Payload(marker)))
    refused = f"{hostile} cannot be loaded weights-only: it holds pickled Python objects (io.open) that"
    with pytest.raises(UntrustedCheckpointError, match=re.escape(refused)):
        load_checkpoint(hostile)
    with pytest.raises(UntrustedCheckpointError, match="cannot be loaded weights-only"):
        Predictor.from_checkpoint(hostile)
    predict = ["predict", "--ckpt_path", str(hostile), "--images", str(trained.image)]
    error = _argument_error([*predict, f"--output_dir={tmp_path / 'out'}"], capsys)
    assert error.startswith(f"error: {refused}")
    assert _argument_error(["export", "--ckpt_path", str(hostile)], capsys).startswith(f"error: {refused}")
    arguments = _run_arguments(tmp_path / "again", trained.shapes)
    for subcommand in ("fit", "validate", "test"):
        error = _one_line_error([subcommand, *arguments, "--ckpt_path", str(hostile)], monkeypatch, capsys)
        assert error.startswith(f"vitdense {subcommand}: {refused}")
    # Resumed as `last`: the trainer reads the file (its checkpoint IO), not the CLI.
    folder = tmp_path / "again" / "checkpoints"
    folder.mkdir()
    (folder / "step1.ckpt").write_bytes(hostile.read_bytes())
    (folder / "last.ckpt").symlink_to("step1.ckpt")
    error = _one_line_error(["fit", *arguments, "--ckpt_path", "last"], monkeypatch, capsys)
    assert error.startswith(f"vitdense fit: {folder / 'last.ckpt'} cannot be loaded weights-only")
    assert not marker.exists()


def test_a_hostile_backbone_weights_file_runs_nothing(trained, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    torch.save({"signature": Payload(marker), "state": {}}, tmp_path / "vit.pt")
    weights = "--model.init_args.detector.init_args.backbone.init_args.vit.init_args.weights"
    arguments = [*_run_arguments(tmp_path, trained.shapes), f"{weights}={tmp_path / 'vit.pt'}"]
    error = _one_line_error(["fit", *arguments], monkeypatch, capsys)
    assert error.startswith(
        f"vitdense fit: Weights file {tmp_path / 'vit.pt'} cannot be loaded weights-only: it holds pickled "
        "Python objects (io.open)"
    )
    assert not marker.exists()


@pytest.fixture
def recorded(tmp_path, monkeypatch) -> SimpleNamespace:
    """A module of a user's own task and optimizer that records being imported."""
    name = f"recorded_{uuid.uuid4().hex[:8]}"
    imported = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib

            import torch

            from vitdense.tasks import DetectionTask

            pathlib.Path({str(imported)!r}).touch()


            class RecordedTask(DetectionTask):
                pass


            class RecordedAdamW(torch.optim.AdamW):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield SimpleNamespace(
        name=name, imported=imported, task=f"{name}.RecordedTask", optimizer=f"{name}.RecordedAdamW"
    )
    sys.modules.pop(name, None)


def _with_task(class_path: str):
    return lambda checkpoint: checkpoint["hyper_parameters"].update(_class_path=class_path)


def _with_optimizer(class_path: str):
    return lambda checkpoint: checkpoint["hyper_parameters"]["optimizer"].update(class_path=class_path)


def test_a_checkpoint_naming_a_class_outside_the_trusted_modules_is_refused_before_importing_it(
    trained, recorded, tmp_path
):
    of_task = _variant(trained, tmp_path / "task.ckpt", _with_task(recorded.task))
    of_optimizer = _variant(trained, tmp_path / "optimizer.ckpt", _with_optimizer(recorded.optimizer))
    with pytest.raises(UntrustedCheckpointError) as error:
        load_checkpoint(of_task)
    assert str(error.value).startswith(f"{of_task} holds a {recorded.task}, not one of vitdense's tasks")
    assert str(error.value).endswith(
        f"allow that class: trusted_classes=['{recorded.task}'] in Python, --trust_class {recorded.task} for "
        "vitdense predict and export"
    )
    with pytest.raises(UntrustedCheckpointError) as error:
        Predictor.from_checkpoint(of_optimizer)
    assert str(error.value).startswith(
        f"{of_optimizer} names {recorded.optimizer} (hyper_parameters.optimizer), outside the modules "
        "vitdense trusts (vitdense.*, torch.optim.*, torch.nn.*); nothing of it was imported"
    )
    assert not recorded.imported.exists() and recorded.name not in sys.modules

    task = load_checkpoint(of_task, trusted_classes=[recorded.task])
    assert type(task).__name__ == "RecordedTask" and recorded.imported.exists()
    predictor = Predictor.from_checkpoint(of_optimizer, trusted_classes=[recorded.optimizer])
    optimizer = predictor.task.configure_optimizers()["optimizer"]
    assert type(optimizer).__name__ == "RecordedAdamW"


def test_the_commands_refuse_a_class_outside_the_trusted_modules_until_the_user_names_it(
    trained, recorded, tmp_path, monkeypatch, capsys
):
    checkpoint = _variant(trained, tmp_path / "optimizer.ckpt", _with_optimizer(recorded.optimizer))
    refused = f"{checkpoint} names {recorded.optimizer} (hyper_parameters.optimizer), outside the modules"
    predict = ["predict", "--ckpt_path", str(checkpoint), "--images", str(trained.image)]
    predict += [f"--output_dir={tmp_path / 'out'}", "--num_workers=0"]
    error = _argument_error(predict, capsys)
    allow = f"--trust_class {recorded.optimizer} for vitdense predict and export"
    assert error.startswith(f"error: {refused}") and error.endswith(allow)
    error = _argument_error(["export", "--ckpt_path", str(checkpoint)], capsys)
    assert error.startswith(f"error: {refused}") and error.endswith(allow)
    arguments = [*_run_arguments(tmp_path / "run", trained.shapes), "--ckpt_path", str(checkpoint)]
    error = _one_line_error(["validate", *arguments], monkeypatch, capsys)
    assert error.startswith(f"vitdense validate: {refused}")
    assert error.endswith(
        f"name {recorded.optimizer} in this run's config (the recipe given with --config, or an option)"
    )
    assert not recorded.imported.exists() and recorded.name not in sys.modules

    with pytest.raises(SystemExit) as exit_info:
        main([*predict, "--trust_class", recorded.optimizer])
    assert exit_info.value.code == 0 and (tmp_path / "out" / "predictions.json").is_file()
    main(["validate", *arguments, f"--model.init_args.optimizer={recorded.optimizer}"])
    assert recorded.imported.exists()


def test_a_checkpoint_of_another_task_is_refused_before_its_config_replaces_the_recipes(
    trained, tmp_path, monkeypatch, capsys
):
    segmentation = "vitdense.tasks.SemanticSegmentationTask"
    checkpoint = _variant(trained, tmp_path / "other.ckpt", _with_task(segmentation))
    arguments = [*_run_arguments(tmp_path / "run", trained.shapes), "--ckpt_path", str(checkpoint)]
    error = _one_line_error(["validate", *arguments], monkeypatch, capsys)
    assert error == (
        f"vitdense validate: checkpoint {checkpoint} is a SemanticSegmentationTask checkpoint, but this "
        "run's model is a DetectionTask: pass a checkpoint of a DetectionTask run, or the checkpoint's own "
        "run config (--config <its run>/config.yaml)"
    )


def test_files_that_are_no_checkpoint_are_named_with_why(trained, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "step4.ckpt").write_bytes(trained.checkpoint.read_bytes())
    (tmp_path / "empty.ckpt").touch()
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    (tmp_path / "loop.ckpt").symlink_to("loop.ckpt")
    (tmp_path / "moved.ckpt").symlink_to(tmp_path / "gone" / "step9.ckpt")
    torch.save(torch.ones(3), tmp_path / "tensor.ckpt")
    for name, error, message in [
        ("run", ValueError, " is a folder, not a checkpoint file (it holds step4.ckpt): pass one of its"),
        ("empty.ckpt", ValueError, " is empty (0 bytes), not a checkpoint"),
        ("notes.ckpt", ValueError, " is not a readable checkpoint: weights-only loading refused it (it is"),
        ("loop.ckpt", FileNotFoundError, " is a link to loop.ckpt, which leads to no file"),
        ("moved.ckpt", FileNotFoundError, f" is a link to {tmp_path / 'gone' / 'step9.ckpt'}, which leads"),
        ("tensor.ckpt", ValueError, " holds a Tensor, not a checkpoint (a dict of states)"),
        ("missing.ckpt", FileNotFoundError, ": checkpoint not found"),
    ]:
        with pytest.raises(error) as raised:
            load_checkpoint(tmp_path / name)
        assert str(raised.value).startswith(f"{tmp_path / name}{message}")
    error = _argument_error(["export", "--ckpt_path", str(folder)], capsys)
    not_a_file = "is a folder, not a checkpoint file (it holds step4.ckpt): pass one of its .ckpt files"
    assert error == f"error: {folder} {not_a_file}"


def test_the_trusted_modules_are_those_of_the_kits_recipes_and_tasks(trained):
    assert {DetectionTask, SemanticSegmentationTask} == {
        getattr(sys.modules[path.rpartition(".")[0]], path.rpartition(".")[2]) for path in KIT_TASKS
    }
    for recipe in RECIPES.glob("*.yaml"):
        model = yaml.safe_load(recipe.read_text())["model"]
        assert model["class_path"] in KIT_TASKS, recipe.name
        assert all(name.startswith(TRUSTED_MODULES) for name in class_paths(model)), recipe.name
    checkpoint = read_checkpoint(trained.checkpoint)
    check_checkpoint_classes(checkpoint, trained.checkpoint)  # nothing to allow in what `vitdense fit` saves
    assert checkpoint["hyper_parameters"]["_class_path"] in KIT_TASKS
