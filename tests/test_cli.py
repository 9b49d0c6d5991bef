"""The real CLI on the real recipes: every recipe parses, and fits one step under tiny overrides."""

import json
import runpy
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.helpers import CPU_FAST_DEV_RUN, built_cli
from tests.test_checkpoint_trust import _one_line_error
from tests.tiny import TINY_CONFIG
from vitdense.cli import main, run
from vitdense.cli.errors import is_user_error
from vitdense.cli.output_filters import command_output_filters
from vitdense.datamodules import resolve_images, write_shapes_coco
from vitdense.tasks import SafeCheckpointIO, StepProgressBar
from vitdense.tasks.base import strict_json
from vitdense.tasks.coco_evaluator import ap_by_class_name

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_every_recipe_is_listed():
    names = {recipe.name for recipe in RECIPES}
    assert {
        "demo_shapes_mask_rcnn.yaml",
        "coco_faster_rcnn.yaml",
        "coco_mask_rcnn.yaml",
        "coco_cascade_mask_rcnn.yaml",
        "coco_mask_rcnn_frozen.yaml",
        "custom_coco_mask_rcnn.yaml",
        "ade20k_semseg.yaml",
        "ade20k_linear_frozen.yaml",
        "custom_semseg.yaml",
        "demo_shapes_semseg.yaml",
    } <= names


@pytest.mark.oldest
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_prints_its_full_config(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: vitdense.tasks." in printed
    assert "class_path: vitdense.backbones.BirderBackbone" in printed
    assert "max_steps:" in printed


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_checkpoints_are_named_as_the_readme_says(recipe):
    """best-step{N}.ckpt: with Lightning's default the name would be best-stepstep=N.ckpt."""
    callbacks = yaml.safe_load(recipe.read_text())["trainer"]["callbacks"]
    best = [c["init_args"] for c in callbacks if c["class_path"].endswith(".ModelCheckpoint")]
    assert best and all(
        args["filename"] == "best-step{step}" and args["auto_insert_metric_name"] is False for args in best
    )


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_coco(root, num_train=8, num_val=4, seed=1)


def _tiny_overrides(shapes: dict, root: Path) -> list[str]:
    # Values nested inside the detector callable go through a second --config: jsonargparse reads a
    # dotted `...pretrained=null` there as the string "None".
    overrides = root / "tiny.yaml"
    vit = {"init_args": {"config": TINY_CONFIG, "pretrained": None, "weights": None}}
    backbone = {"init_args": {"out_channels": 32, "vit": vit}}
    detector = {"init_args": {"head_dim": 32, "fc_dim": 64, "backbone": backbone}}
    overrides.write_text(yaml.safe_dump({"model": {"init_args": {"detector": detector}}}))
    return [
        "--config",
        str(overrides),
        f"--data.init_args.train_images={shapes['train_images']}",
        f"--data.init_args.train_annotations={shapes['train_annotations']}",
        f"--data.init_args.val_images={shapes['val_images']}",
        f"--data.init_args.val_annotations={shapes['val_annotations']}",
        "--data.init_args.image_size=224",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        *CPU_FAST_DEV_RUN,
        f"--trainer.default_root_dir={root}",
    ]


def test_null_weights_on_the_command_line_build_a_randomly_initialised_backbone(shapes, tmp_path):
    """jsonargparse passes a dotted `...pretrained=null` under the detector callable on as "None"."""
    arguments = _tiny_overrides(shapes, tmp_path)
    overrides = yaml.safe_load(Path(arguments[1]).read_text())
    vit = overrides["model"]["init_args"]["detector"]["init_args"]["backbone"]["init_args"]["vit"][
        "init_args"
    ]
    del vit["pretrained"], vit["weights"]
    Path(arguments[1]).write_text(yaml.safe_dump(overrides))
    prefix = "--model.init_args.detector.init_args.backbone.init_args.vit.init_args"
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_faster_rcnn")  # pretrained: capi
    cli = built_cli(
        ["--config", str(recipe), *arguments, f"{prefix}.pretrained=null", f"{prefix}.weights=null"]
    )
    assert cli.model.model.backbone.vit.num_blocks == TINY_CONFIG["num_layers"]


def test_the_progress_bar_counts_steps_against_max_steps(shapes, tmp_path):
    """The recipes train to max_steps with max_epochs -1, where Lightning's bar reads "Epoch 3/-2"."""
    recipe = next(r for r in RECIPES if r.stem == "coco_faster_rcnn")
    arguments = ["--config", str(recipe), *_tiny_overrides(shapes, tmp_path), "--trainer.fast_dev_run=0"]
    cli = built_cli(arguments)
    trainer = cli.trainer
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar)
    bar.setup(trainer, cli.model, stage="fit")
    trainer.fit_loop.max_epochs = -1  # as fit sets it from the recipe
    assert bar._get_train_description(3).strip() == "Epoch 3"
    trainer.fit_loop.max_epochs = 5
    assert bar._get_train_description(3).strip() == "Epoch 3/4"
    trainer.training = True
    assert bar.get_metrics(trainer, cli.model)["step"] == f"0/{trainer.max_steps}"

    # A bar the recipe configures is kept as it is.
    tqdm = tmp_path / "tqdm.yaml"
    tqdm.write_text(
        yaml.safe_dump(
            {"trainer": {"callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}]}}
        )
    )
    cli = built_cli([*arguments, "--config", str(tqdm)])
    assert type(cli.trainer.progress_bar_callback) is TQDMProgressBar


DETECTION_RECIPES = [r for r in RECIPES if r.stem.startswith("coco") or r.stem == "custom_coco_mask_rcnn"]


@pytest.mark.parametrize("recipe", DETECTION_RECIPES, ids=lambda p: p.stem)
def test_coco_recipes_fit_one_step_on_other_data(recipe, shapes, tmp_path, capsys):
    main(["fit", "--config", str(recipe), *_tiny_overrides(shapes, tmp_path)])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["split"] == "val" and "bbox_AP50" in metrics
    assert ("segm_AP50" in metrics) == ("faster" not in recipe.stem)


def test_gpu_recipes_bf16_mixed_precision_trains_and_evaluates_with_detections(shapes, tmp_path, capsys):
    """The GPU recipes' own precision, on the CPU's autocast: every custom part (RoIAlign, matcher, sampler,
    box coder, anchors, mask pasting) must take bf16 features; a zero score threshold keeps detections."""
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_mask_rcnn")
    assert "precision: bf16-mixed" in recipe.read_text()
    keep_all = tmp_path / "keep_all.yaml"
    keep_all.write_text(
        yaml.safe_dump({"model": {"init_args": {"detector": {"init_args": {"score_thresh": 0.0}}}}})
    )
    overrides = [a for a in _tiny_overrides(shapes, tmp_path) if not a.startswith("--trainer.precision")]
    main(["fit", "--config", str(recipe), *overrides, "--config", str(keep_all)])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"bbox_AP50", "segm_AP50"} <= set(metrics)
    for iou_type in ("bbox", "segm"):
        results = json.loads(next(tmp_path.rglob(f"val_step1_{iou_type}_results.json")).read_text())
        assert results and all(np.isfinite(r["score"]) for r in results)


def test_fit_ends_with_the_scores_of_its_final_weights(shapes, tmp_path, capsys):
    """The COCO recipes' val_check_interval does not divide max_steps: fit still scores its last step,
    inside fit, where a checkpoint callback that monitors a metric considers it."""
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_faster_rcnn")
    every_validation = tmp_path / "every_validation.yaml"
    every_validation.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {
                                "monitor": "val/bbox_AP",
                                "save_top_k": -1,
                                "filename": "scored-step{step}",
                                "auto_insert_metric_name": False,
                            },
                        },
                        {"class_path": "vitdense.tasks.LatestCheckpoint"},
                    ]
                }
            }
        )
    )
    schedule = ["--model.init_args.lr_scheduler.init_args.milestones=[4, 5]"]
    steps = ["--trainer.fast_dev_run=0", "--trainer.max_steps=5", "--trainer.val_check_interval=2"]
    tiny = [*_tiny_overrides(shapes, tmp_path), "--config", str(every_validation)]
    main(["fit", "--config", str(recipe), *tiny, *steps, *schedule])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["step"] == 5
    reports = {path.name for path in tmp_path.rglob("val_step*")}
    assert {"val_step2_metrics.json", "val_step4_metrics.json", "val_step5_metrics.json"} <= reports
    assert "val_step5_bbox_results.json" in reports
    scored = {path.name for path in tmp_path.rglob("scored-step*.ckpt")}
    assert scored == {"scored-step2.ckpt", "scored-step4.ckpt", "scored-step5.ckpt"}

    # Resumed and extended: the final scores name the step of the weights left, not the one resumed from.
    extended = [*steps[:1], "--trainer.max_steps=7", *steps[2:], "--ckpt_path", "last"]
    main(["fit", "--config", str(recipe), *tiny, *extended, *schedule])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 7
    assert any(tmp_path.rglob("val_step7_bbox_results.json"))


def test_a_constructor_error_reaches_the_user_as_raised(shapes, tmp_path):
    """Not folded by jsonargparse into a Union type mismatch followed by the whole config."""
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_faster_rcnn")
    missing = tmp_path / "nope.json"
    args = [*_tiny_overrides(shapes, tmp_path), f"--data.init_args.train_annotations={missing}"]
    with pytest.raises(FileNotFoundError, match="nope.json: annotation file not found; check the"):
        main(["fit", "--config", str(recipe), *args])


def test_detection_in_half_precision_weights_is_refused_with_the_fix(shapes, tmp_path):
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_faster_rcnn")
    args = [*_tiny_overrides(shapes, tmp_path), "--trainer.precision=bf16-true"]
    with pytest.raises(ValueError, match="use 'bf16-mixed'"):
        main(["fit", "--config", str(recipe), *args])


@pytest.mark.oldest
def test_demo_recipe_fits_and_tests_one_step(tmp_path, capsys):
    demo = Path(__file__).parents[1] / "recipes" / "demo_shapes_mask_rcnn.yaml"
    common = [
        "--config",
        str(demo),
        f"--data.init_args.root={tmp_path / 'shapes'}",
        "--data.init_args.num_train=8",
        "--data.init_args.num_val=4",
        "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    main(["fit", *common, "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.max_epochs=1"])
    saved = list(tmp_path.rglob("config.yaml"))
    assert saved and "vitdense.heads.MaskRCNN" in saved[0].read_text(), "fit saves its full config"
    capsys.readouterr()
    main(["test", *common, "--model.init_args.per_class_ap=true"])
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in printed and "triangle" in printed
    metrics = json.loads(printed.strip().splitlines()[-1])
    assert metrics["split"] == "test" and {"bbox_AP50", "segm_AP50"} <= set(metrics)

    # The written results files, in the folder printed, scored by pycocotools alone, give the printed
    # numbers to the last digit.
    where, folder = printed.strip().splitlines()[-2].split(": ", 1)
    assert where == "Metrics, per-class scores and results files"
    report = json.loads((Path(folder) / "test_step0_metrics.json").read_text())
    assert set(report["per_class_AP"]["segm"]) == {"circle", "rectangle", "triangle", "diamond"}
    ground_truth = COCO(str(tmp_path / "shapes" / "annotations" / "instances_val.json"))
    for iou_type in ("bbox", "segm"):
        results = str(next(tmp_path.rglob(f"test_step0_{iou_type}_results.json")))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        for index, name in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
            assert metrics[f"{iou_type}_{name}"] == evaluation.stats[index], (iou_type, name)


def test_console_script_and_module_entry_point(capsys, monkeypatch):
    """In this process: the script's entry point as installed, the module as ``python -m`` runs it."""
    (script,) = entry_points(group="console_scripts", name="vitdense")
    assert Path(sys.executable).with_name("vitdense").is_file()
    for start in (script.load(), lambda: runpy.run_module("vitdense", run_name="__main__")):
        monkeypatch.setattr(sys, "argv", ["vitdense", "--help"])
        with pytest.raises(SystemExit) as exit_info:
            start()
        result = capsys.readouterr()
        assert exit_info.value.code == 0, result.err
        assert "fit" in result.out and "predict" in result.out


@pytest.mark.oldest
def test_the_console_script_reports_a_users_mistake_in_one_line(shapes, tmp_path, monkeypatch, capsys):
    recipe = Path(__file__).parents[1] / "recipes" / "custom_coco_mask_rcnn.yaml"
    missing = tmp_path / "instances_train.json"
    argv = ["vitdense", "fit", "--config", str(recipe), *_tiny_overrides(shapes, tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, f"--data.init_args.train_annotations={missing}"])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[0].startswith(f"vitdense fit: {missing}") and "Traceback" not in "\n".join(error)
    monkeypatch.setenv("VITDENSE_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="instances_train.json"):
        run()


def test_only_errors_vitdense_raises_itself_lose_their_traceback():
    def raised(function, *args):
        try:
            function(*args)
        except Exception as error:
            return error
        raise AssertionError("expected an error")

    assert is_user_error(raised(resolve_images, "/no/such/*.jpg"))  # a `raise` in vitdense
    assert not is_user_error(raised(strict_json, object()))  # raised in the json module
    assert not is_user_error(raised(ap_by_class_name, None, [1], ["a"]))  # a bug's AttributeError in vitdense


class _CallingDataset(torch.utils.data.Dataset):
    """Item i is ``calls[i][0](*calls[i][1:])``."""

    def __init__(self, *calls):
        self.calls = calls

    def __len__(self):
        return len(self.calls)

    def __getitem__(self, index):
        function, *args = self.calls[index]
        return function(*args)


def test_errors_from_a_dataloader_worker_are_judged_by_the_workers_traceback():
    # One loader for the three errors: a loader whose worker raised takes torch's 5 s join timeout to shut
    # down (when the garbage collector gets to it, in a later test).
    calls = [(resolve_images, "/no/such/*.jpg"), (strict_json, object())]
    calls.append((ap_by_class_name, None, [1], ["a"]))
    loader = torch.utils.data.DataLoader(_CallingDataset(*calls), num_workers=1, batch_size=None)
    batches = iter(loader)
    errors = []
    for _ in calls:
        with pytest.raises(Exception, match="Original Traceback") as raised:
            next(batches)
        errors.append(raised.value)
    assert [is_user_error(error) for error in errors] == [True, False, False]


def test_the_trainer_logs_no_advert_for_lightnings_cloud_logger(caplog):
    """The commands filter it while they run."""
    with caplog.at_level("INFO"), command_output_filters():
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert "GPU available" in caplog.text and "litlogger" not in caplog.text


def test_fit_resumes_from_last_or_from_nothing_and_stops_on_anything_between(
    shapes, tmp_path, monkeypatch, capsys
):
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_faster_rcnn")
    fit = ["fit", "--config", str(recipe), *_tiny_overrides(shapes, tmp_path), "--ckpt_path", "last"]
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "step3.ckpt").write_bytes(b"an earlier run's state")
    (folder / "last.ckpt").symlink_to("step5.ckpt")  # its newest step was lost
    for fix in (None, lambda: (folder / "last.ckpt").unlink()):
        if fix is not None:
            fix()
        error = _one_line_error(fit, monkeypatch, capsys)
        assert error.startswith("vitdense fit: --ckpt_path last: ")
        assert f"{folder} holds step3.ckpt. Pass --ckpt_path {folder / 'step3.ckpt'}" in error
        assert (folder / "step3.ckpt").read_bytes() == b"an earlier run's state"
        assert not (tmp_path / "lightning_logs").exists(), "stopped before building anything"
    (folder / "step3.ckpt").unlink()
    main(fit)  # no checkpoint at all: the first run of a script that always resumes starts afresh
    assert (tmp_path / "val_step1_metrics.json").is_file(), "trained its first step"


def test_a_checkpoint_folder_that_cannot_be_written_stops_fit_in_one_line(
    shapes, tmp_path, monkeypatch, capsys
):
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_faster_rcnn")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.write_text("a file where the run keeps its checkpoints")
    fit = ["fit", "--config", str(recipe), *_tiny_overrides(shapes, tmp_path)]
    error = _one_line_error(fit, monkeypatch, capsys)
    not_a_folder = f"{checkpoints} is a file, not a folder; write elsewhere"
    assert error == f"vitdense fit: cannot write into {checkpoints}: {not_a_folder}"


def test_the_cli_gives_every_trainer_a_checkpoint_io_that_writes_whole_files_and_reads_weights_only(
    shapes, tmp_path
):
    recipe = next(r for r in DETECTION_RECIPES if r.stem == "coco_faster_rcnn")
    cli = built_cli(["--config", str(recipe), *_tiny_overrides(shapes, tmp_path)])
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
