"""The CLI on the semantic segmentation recipes: fit and evaluate one step under tiny overrides."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import CPU_FAST_DEV_RUN
from tests.tiny import TINY_CONFIG
from vitdense.cli import main
from vitdense.datamodules import write_shapes_semseg
from vitdense.heads import multi_scale_flip_inference

RECIPES = Path(__file__).parents[1] / "recipes"
TRAINER = CPU_FAST_DEV_RUN


def _override_file(root: Path, recipe: str) -> Path:
    """Tiny backbone and narrow heads, nested where each recipe puts them (a second --config)."""
    vit = {"config": TINY_CONFIG, "pretrained": None, "weights": None}
    if "linear" in recipe:
        segmenter = {"backbone": {"init_args": {**vit, "out_indices": [0, 1]}}}
    elif "upernet" in recipe:
        # One block per pyramid level; 64 channels give GroupNorm(32) two per group on the 1 x 1 pooled map.
        blocks = {**vit, "config": {**TINY_CONFIG, "num_layers": 4}, "out_indices": [0, 1, 2, 3]}
        backbone = {"vit": {"init_args": blocks}}
        segmenter = {"channels": 64, "aux_channels": 32, "backbone": {"init_args": backbone}}
    else:
        backbone = {"out_channels": 32, "vit": {"init_args": vit}}
        segmenter = {"channels": 32, "aux_channels": 32, "backbone": {"init_args": backbone}}
    model = {"segmenter": {"init_args": segmenter}, "sliding_window": [112, 70]}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": {"init_args": model}}))
    return path


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    write_shapes_semseg(root, num_train=4, num_val=2, seed=3)
    return root


def _run_ade20k(
    subcommand: str, root: Path, tmp_path: Path, *options: str, recipe: str = "ade20k_semseg"
) -> None:
    """``vitdense <subcommand>`` of an ADE20K recipe, tiny, on ``root``, for one step on the CPU.

    ``options`` come last: where one sets what the one-step flags set, it wins.
    """
    main(
        [
            subcommand,
            "--config",
            str(RECIPES / f"{recipe}.yaml"),
            "--config",
            str(_override_file(tmp_path, recipe)),
            f"--data.init_args.root={root}",
            "--data.init_args.num_workers=0",
            *TRAINER,
            f"--trainer.default_root_dir={tmp_path}",
            *options,
        ]
    )


@pytest.mark.parametrize(
    ("recipe", "precision"),
    [
        ("ade20k_semseg", "32-true"),
        ("ade20k_semseg", "bf16-mixed"),
        ("ade20k_linear_frozen", "32-true"),
        ("ade20k_upernet", "32-true"),
    ],
)
def test_ade20k_recipes_fit_and_evaluate_on_ade_layout(recipe, precision, ade_root, tmp_path, capsys):
    """Also at the recipes' own bf16-mixed precision, on the CPU's autocast."""
    options = [
        "--data.init_args.crop_size=112",
        "--data.init_args.scale=[320, 240]",
        "--data.init_args.batch_size=2",
    ]
    _run_ade20k("fit", ade_root, tmp_path, *options, f"--trainer.precision={precision}", recipe=recipe)
    printed = capsys.readouterr().out
    metrics = json.loads(printed.strip().splitlines()[-1])
    assert metrics["split"] == "val" and {"mIoU", "aAcc", "mAcc"} <= set(metrics)
    assert np.isfinite(metrics["mIoU"])
    assert "IoU" in printed and "wall" in printed  # the per-class table names ADE20K's classes


def test_ade20k_test_subcommand_prints_table_and_metrics(ade_root, tmp_path, capsys):
    _run_ade20k("test", ade_root, tmp_path)
    printed = capsys.readouterr().out
    assert "aAcc" in printed and "ceiling" in printed
    metrics = json.loads(printed.strip().splitlines()[-1])
    assert metrics["split"] == "test" and {"mIoU", "aAcc", "mAcc"} <= set(metrics)
    table = next(tmp_path.rglob("test_step0_per_class.csv")).read_text().splitlines()
    assert table[0] == "class,IoU,Acc" and len(table) == 151 and table[1].startswith("wall,")
    report = json.loads(next(tmp_path.rglob("test_step0_metrics.json")).read_text())
    assert report["mIoU"] == metrics["mIoU"] and len(report["per_class"]) == 150


def test_one_test_scale_without_flip_scores_as_single_scale_evaluation(ade_root, tmp_path, capsys):
    """test_scales=[1.0] averages one softmax: the same label maps, so the same scores, to the last digit."""
    runs = {}
    for name, options in {"single": [], "one_scale": ["--model.init_args.test_scales=[1.0]"]}.items():
        (tmp_path / name).mkdir()
        _run_ade20k("test", ade_root, tmp_path / name, *options, "--data.init_args.scale=[320, 240]")
        runs[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        runs[name]["per_class"] = next((tmp_path / name).rglob("test_step0_per_class.csv")).read_text()
    assert runs["one_scale"] == runs["single"]


def test_multi_scale_flip_evaluation_from_the_command_line(ade_root, tmp_path, capsys, monkeypatch):
    """The UperNet recipe with mmseg's aug-test options: every evaluation batch goes through all passes."""
    calls = []

    def recording(infer, images, image_sizes, orig_sizes, scales, flip):
        calls.append((list(scales), flip))
        return multi_scale_flip_inference(infer, images, image_sizes, orig_sizes, scales, flip)

    monkeypatch.setattr("vitdense.tasks.segmentation.multi_scale_flip_inference", recording)
    options = ["--model.init_args.test_scales=[0.5,1.25]", "--model.init_args.test_flip=true"]
    _run_ade20k(
        "test", ade_root, tmp_path, *options, "--data.init_args.scale=[320, 240]", recipe="ade20k_upernet"
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["split"] == "test" and np.isfinite(metrics["mIoU"])
    assert calls == [([0.5, 1.25], True)]  # fast_dev_run: one batch


def test_test_scales_are_checked_when_the_task_is_built(ade_root, tmp_path):
    with pytest.raises(ValueError, match=r"test_scales=\[0.0\]: give positive factors"):
        _run_ade20k("test", ade_root, tmp_path, "--model.init_args.test_scales=[0.0]")


def test_test_subcommand_leaves_out_a_bad_image_under_skip(tmp_path, capsys, caplog):
    """One image per batch: the bad one's batch is empty (None) and passed over; the good one is scored."""
    root = tmp_path / "ade"
    base = write_shapes_semseg(root, num_train=1, num_val=2, seed=3)
    bad = sorted((base / "annotations" / "validation").glob("*.png"))[0]
    Image.fromarray(np.full((240, 320), 200, np.uint8)).save(bad)  # 200 - 1 is no ADE20K class
    options = ["--data.init_args.eval_batch_size=1", "--data.init_args.on_bad_data=skip"]
    _run_ade20k("test", root, tmp_path, *options, "--trainer.fast_dev_run=false")
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["split"] == "test" and np.isfinite(metrics["mIoU"])
    assert f"{bad}: label values" in caplog.text
    # The shapes use a few of ADE20K's 150 classes: the others are named as left out of mIoU.
    assert "classes have no labelled pixel in the test split ('wall', " in caplog.text


def test_an_evaluation_with_every_image_skipped_fails_naming_the_split(tmp_path):
    root = tmp_path / "ade"
    base = write_shapes_semseg(root, num_train=1, num_val=2, seed=3)
    for label in (base / "annotations" / "validation").glob("*.png"):
        Image.fromarray(np.full((240, 320), 200, np.uint8)).save(label)  # 200 - 1 is no ADE20K class
    message = "No labelled pixel was scored in the test split: every image was skipped"
    with pytest.raises(ValueError, match=message):
        _run_ade20k(
            "test", root, tmp_path, "--data.init_args.on_bad_data=skip", "--trainer.fast_dev_run=false"
        )


CAMVID_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "Sign, symbol", "Fence", "Car"]
CAMVID_NAMES += ["Pedestrian", "Bicyclist"]


def test_custom_recipe_with_ignore_index_11_needs_two_overrides(tmp_path, monkeypatch, capsys):
    """A CamVid-like set (11 classes, 11 = void) placed where the template expects it."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for index in range(3):
            folder_images = tmp_path / "data/custom/images" / split
            folder_labels = tmp_path / "data/custom/labels" / split
            folder_images.mkdir(parents=True, exist_ok=True)
            folder_labels.mkdir(parents=True, exist_ok=True)
            label = rng.integers(0, 12, (120, 160), dtype=np.uint8)  # 0..10 classes, 11 void
            Image.fromarray(label, mode="L").save(folder_labels / f"{index:03d}.png")
            Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
                folder_images / f"{index:03d}.png"
            )
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(RECIPES / "custom_semseg.yaml"),
            "--data.init_args.num_classes=11",
            "--data.init_args.ignore_index=11",
            f"--data.init_args.class_names={json.dumps(CAMVID_NAMES)}",
            # test scaffolding: tiny model, small crops, CPU
            "--config",
            str(_override_file(tmp_path, "custom_semseg")),
            "--data.init_args.crop_size=112",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
            *TRAINER,
        ]
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["split"] == "val" and 0.0 <= metrics["mIoU"] <= 1.0
    with next(tmp_path.rglob("val_step*_per_class.csv")).open(newline="") as file:
        rows = list(csv.reader(file))
    assert [row[0] for row in rows] == ["class", *CAMVID_NAMES] and {len(row) for row in rows} == {3}
