"""Extra checks on real photographs from ../shared/data (skipped where that folder is absent)."""

import json
from pathlib import Path

import pytest

from tests.test_cli import _tiny_overrides
from vitdense.cli import main
from vitdense.datamodules import CocoDataModule

LABELME = Path(__file__).resolve().parents[2] / "shared" / "data" / "labelme_voc_coco"
pytestmark = pytest.mark.skipif(not LABELME.is_dir(), reason="../shared/data/labelme_voc_coco not present")


def test_labelme_voc_parses_with_sub_folders_and_without_its_background_category(caplog):
    annotations = str(LABELME / "annotations.json")
    data = CocoDataModule(str(LABELME), annotations, str(LABELME), annotations, image_size=224, num_workers=0)
    # labelme writes category id 0 "_background_", which no annotation uses: the 20 VOC classes remain.
    assert data.category_ids[0] == 1 and data.num_classes == 20 and "_background_" not in data.class_names
    assert "'_background_' has no annotations" in caplog.text
    kept = CocoDataModule(
        str(LABELME), annotations, str(LABELME), annotations, image_size=224, num_workers=0,
        keep_background_category=True,
    )  # fmt: skip
    assert kept.category_ids[0] == 0 and kept.num_classes == 21, "as checkpoints trained with it need"
    data.setup("fit")
    image, target = data.train_dataset[0]
    assert image.shape == (3, 224, 224) and len(target["boxes"]) == len(target["masks"]) > 0
    assert target["labels"].min() >= 1


def test_custom_recipe_trains_and_evaluates_on_real_photos(tmp_path, capsys):
    annotations = str(LABELME / "annotations.json")
    paths = {
        "train_images": LABELME,
        "train_annotations": annotations,
        "val_images": LABELME,
        "val_annotations": annotations,
    }
    recipe = Path(__file__).parents[1] / "recipes" / "custom_coco_mask_rcnn.yaml"
    main(["fit", "--config", str(recipe), *_tiny_overrides(paths, tmp_path)])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["split"] == "val" and {"bbox_AP", "segm_AP"} <= set(metrics)


CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid_val"


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/data/camvid_val not present")
def test_camvid_with_ignore_index_11_trains_with_the_custom_template(tmp_path, capsys):
    from tests.test_cli_segmentation import TRAINER, _override_file

    recipe = Path(__file__).parents[1] / "recipes" / "custom_semseg.yaml"
    images, labels = str(CAMVID / "images"), str(CAMVID / "labels")
    main(
        [
            "fit",
            "--config",
            str(recipe),
            "--data.init_args.num_classes=11",
            "--data.init_args.ignore_index=11",
            f"--data.init_args.train_images={images}",
            f"--data.init_args.train_labels={labels}",
            f"--data.init_args.val_images={images}",
            f"--data.init_args.val_labels={labels}",
            "--config",
            str(_override_file(tmp_path, "custom_semseg")),
            "--data.init_args.crop_size=224",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
            *TRAINER,
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["split"] == "val" and 0.0 <= metrics["mIoU"] <= 1.0
