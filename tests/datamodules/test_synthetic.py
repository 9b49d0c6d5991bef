"""Tests for vitdense.datamodules.synthetic: determinism, COCO validity, the ShapesDataModule."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from pycocotools.coco import COCO

from vitdense.datamodules import (
    CocoDataModule,
    SegmentationFolderDataModule,
    ShapesDataModule,
    ShapesSegmentationDataModule,
    boxes_from_masks,
    write_shapes_coco,
)


def test_same_seed_gives_byte_identical_json(tmp_path: Path) -> None:
    a = write_shapes_coco(tmp_path / "a", num_train=6, num_val=3, seed=5)
    b = write_shapes_coco(tmp_path / "b", num_train=6, num_val=3, seed=5)
    c = write_shapes_coco(tmp_path / "c", num_train=6, num_val=3, seed=6)
    for key in ("train_annotations", "val_annotations"):
        assert a[key].read_bytes() == b[key].read_bytes()
        assert a[key].read_bytes() != c[key].read_bytes()


def test_files_are_valid_coco(shapes: dict[str, Path]) -> None:
    for split in ("train", "val"):
        coco = COCO(str(shapes[f"{split}_annotations"]))
        assert sorted(coco.getCatIds()) == [1, 3, 7, 8]  # non-contiguous on purpose
        names = [c["name"] for c in coco.loadCats([1, 3, 7, 8])]
        assert names == ["circle", "rectangle", "triangle", "diamond"]
        anns = coco.dataset["annotations"]
        assert any(a["iscrowd"] for a in anns), "each split has a crowd region"
        assert any(isinstance(a["segmentation"], list) for a in anns)
        rles = [a["segmentation"] for a in anns if isinstance(a["segmentation"], dict)]
        assert any(isinstance(rle["counts"], str) for rle in rles), "compressed RLE"
        assert any(isinstance(rle["counts"], list) for rle in rles), "uncompressed RLE (the crowd)"
        assert len({a["image_id"] for a in anns}) < len(coco.imgs), "some images have no annotations"
        for img in coco.dataset["images"]:
            assert img["file_name"].startswith(f"{split}/")
            assert (shapes[f"{split}_images"] / img["file_name"]).is_file()
        ids = [a["id"] for a in anns]
        assert len(set(ids)) == len(ids)
        for ann in anns:
            mask = coco.annToMask(ann)
            assert mask.sum() > 0 and abs(mask.sum() - ann["area"]) <= 1
            x1, y1, x2, y2 = boxes_from_masks(mask[None])[0]
            assert [x1, y1, x2 - x1, y2 - y1] == ann["bbox"]
            if not ann["iscrowd"]:
                assert max(ann["bbox"][2:]) >= 28, "objects must be large enough to learn quickly"


def test_classes_have_typical_colours(shapes: dict[str, Path]) -> None:
    from PIL import Image

    coco = COCO(str(shapes["train_annotations"]))
    means: dict[int, list[np.ndarray]] = {}
    for ann in coco.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        image = np.asarray(Image.open(shapes["train_images"] / coco.imgs[ann["image_id"]]["file_name"]))
        means.setdefault(ann["category_id"], []).append(image[coco.annToMask(ann).astype(bool)].mean(0))
    centres = {cid: np.mean(v, axis=0) for cid, v in means.items()}
    for cid, values in means.items():
        for value in values:
            nearest = min(centres, key=lambda c: np.linalg.norm(centres[c] - value))
            assert nearest == cid


def test_shapes_datamodule_writes_once_and_loads(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    dm = ShapesDataModule(root=str(root), num_train=6, num_val=3, num_workers=0, batch_size=2)
    train_json = root / "annotations" / "instances_train.json"
    stamp = train_json.stat().st_mtime_ns
    assert dm.num_classes == 4 and dm.category_ids == [1, 3, 7, 8]
    again = ShapesDataModule(root=str(root), num_train=6, num_val=3, num_workers=0)
    assert train_json.stat().st_mtime_ns == stamp, "an up-to-date data set is not rewritten"
    assert again.image_size == 224
    ShapesDataModule(root=str(root), num_train=7, num_val=3, num_workers=0)
    assert len(json.loads(train_json.read_text())["images"]) == 7, "changed parameters rewrite the data"
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 224, 224) and images.dtype == torch.uint8
    assert all(t["masks"].shape[1:] == (224, 224) for t in targets)
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape[1:] == (3, 224, 224) and targets[0]["scale"] == 1.0


def test_opencv_runs_single_threaded_once_a_loader_forks_workers_and_not_before(tmp_path: Path) -> None:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        without = ShapesDataModule(root=str(tmp_path), num_train=4, num_val=2, num_workers=0, batch_size=2)
        without.setup("fit")
        next(iter(without.train_dataloader()))
        assert cv2.getNumThreads() == 2  # no worker to fork: OpenCV keeps its threads
        forking = ShapesDataModule(root=str(tmp_path), num_train=4, num_val=2, num_workers=1, batch_size=2)
        forking.setup("fit")
        images, _ = next(iter(forking.train_dataloader()))
        assert cv2.getNumThreads() == 1 and images.shape == (2, 3, 224, 224)
    finally:
        cv2.setNumThreads(threads)


@pytest.mark.parametrize(
    ("module", "parent", "own_defaults", "fixed"),
    [
        (
            ShapesDataModule,
            CocoDataModule,
            {"image_size": 224, "batch_size": 4, "num_workers": 2, "min_scale": 0.5, "max_scale": 1.5},
            [f"{split}_{kind}" for split in ("train", "val", "test") for kind in ("images", "annotations")],
        ),
        (
            ShapesSegmentationDataModule,
            SegmentationFolderDataModule,
            {"crop_size": 224, "scale": (320, 240), "batch_size": 8, "num_workers": 2},
            [f"{split}_{kind}" for split in ("train", "val", "test") for kind in ("images", "labels")]
            + ["num_classes", "class_names", "ignore_index"],
        ),
    ],
)
def test_the_command_line_offers_every_option_of_the_general_datamodule(
    module: type, parent: type, own_defaults: dict, fixed: list[str]
) -> None:
    # As LightningCLI reads the class: the options the Shapes class forwards to its parent are offered with
    # the parent's defaults, its own with its defaults, and what the generated set fixes (its folders, its
    # classes) is no option.
    def defaults(cls: type) -> dict:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        return vars(parser.get_defaults()["data"])

    offered, general = defaults(module), defaults(parent)
    assert {"root", "num_train", "num_val", "seed"} <= offered.keys()
    assert not offered.keys() & set(fixed)
    assert offered.keys() - {"root", "num_train", "num_val", "seed"} == general.keys() - set(fixed)
    for name, value in general.items():
        if name not in fixed and name not in own_defaults:
            assert offered[name] == value, name
    assert {name: offered[name] for name in own_defaults} == own_defaults
    assert "predict_apply_exif" in offered
