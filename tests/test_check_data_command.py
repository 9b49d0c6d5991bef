"""``vitdense check-data``: any recipe's data read once on the CPU, a report, exit status 1 on bad records."""

import json
from pathlib import Path

import pytest

from vitdense.cli import main
from vitdense.datamodules import write_shapes_coco

RECIPES = Path(__file__).parents[1] / "recipes"


def _check(recipe: str, paths: dict, *extra: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "check-data",
                "--config",
                str(RECIPES / recipe),
                f"--data.init_args.train_images={paths['train_images']}",
                f"--data.init_args.train_annotations={paths['train_annotations']}",
                f"--data.init_args.val_images={paths['val_images']}",
                f"--data.init_args.val_annotations={paths['val_annotations']}",
                "--data.init_args.num_workers=0",
                *extra,
            ]
        )
    return exit_info.value.code


def test_a_gpu_recipe_checks_its_data_on_the_cpu_and_names_bad_records(tmp_path, capsys):
    paths = write_shapes_coco(tmp_path, num_train=6, num_val=3, seed=2)
    assert _check("coco_mask_rcnn.yaml", paths) == 0, "clean data: exit 0 (no model, no GPU needed)"
    assert "0 bad record(s)" in capsys.readouterr().out

    coco = json.loads(Path(paths["val_annotations"]).read_text())
    missing = coco["images"][1]["file_name"]
    (Path(paths["val_images"]) / missing).unlink()
    coco["annotations"][0]["bbox"] = [5, 5, 0, 10]
    bad_id = coco["annotations"][0]["id"]
    Path(paths["val_annotations"]).write_text(json.dumps(coco))
    assert _check("coco_mask_rcnn.yaml", paths) == 1
    report = capsys.readouterr().out
    assert missing in report and f"annotation id {bad_id}" in report
    assert "on_bad_data='skip'" not in report, "the recipe reads its data under skip: the hint is moot"
    assert _check("coco_mask_rcnn.yaml", paths, "--data.init_args.on_bad_data=error") == 1
    report = capsys.readouterr().out
    assert missing in report
    assert "or pass on_bad_data='skip' to drop it" in report


def test_an_unreadable_training_file_is_named(tmp_path, capsys):
    paths = write_shapes_coco(tmp_path, num_train=4, num_val=3, seed=2)
    Path(paths["train_annotations"]).write_text("{not json")
    assert _check("coco_faster_rcnn.yaml", paths) == 1
    assert f"{paths['train_annotations']}: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("emptied", "expected"),
    [
        ("images", "the val split has no usable sample"),
        ("annotations", "the val split has 3 image(s) but not one"),
    ],
)
def test_a_split_that_fit_would_refuse_fails_the_check(tmp_path, capsys, emptied, expected):
    paths = write_shapes_coco(tmp_path, num_train=4, num_val=3, seed=2)
    coco = json.loads(Path(paths["val_annotations"]).read_text())
    Path(paths["val_annotations"]).write_text(json.dumps(coco | {emptied: [], "annotations": []}))
    assert _check("coco_faster_rcnn.yaml", paths) == 1
    report = capsys.readouterr().out
    assert f"{paths['val_annotations']}: {expected}" in report
