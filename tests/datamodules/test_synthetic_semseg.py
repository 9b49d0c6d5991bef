"""Tests for the semantic shapes set in vitdense.datamodules.synthetic: layout, determinism, DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitdense.datamodules import (
    SHAPES_SEMSEG_CLASSES,
    ADE20KDataModule,
    ShapesSegmentationDataModule,
    write_shapes_semseg,
)


@pytest.fixture(scope="module")
def semseg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_semseg(tmp_path_factory.mktemp("semseg"), num_train=12, num_val=4, seed=0)


def _labels(base: Path, split: str) -> list[Path]:
    return sorted((base / "annotations" / split).glob("*.png"))


def test_same_seed_gives_identical_labels(tmp_path: Path) -> None:
    a = write_shapes_semseg(tmp_path / "a", num_train=4, num_val=2, seed=5)
    b = write_shapes_semseg(tmp_path / "b", num_train=4, num_val=2, seed=5)
    c = write_shapes_semseg(tmp_path / "c", num_train=4, num_val=2, seed=6)
    for split in ("training", "validation"):
        la, lb, lc = _labels(a, split), _labels(b, split), _labels(c, split)
        assert [p.name for p in la] == [p.name for p in lb] and la
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(la, lb))
        assert any(x.read_bytes() != z.read_bytes() for x, z in zip(la, lc))


def test_ade_layout_and_label_values(semseg: Path) -> None:
    assert semseg.name == "ADEChallengeData2016"
    seen: set[int] = set()
    for split, infix, n in (("training", "train", 12), ("validation", "val", 4)):
        labels = _labels(semseg, split)
        assert len(labels) == n and labels[0].name == f"ADE_{infix}_00000001.png"
        for path in labels:
            image = Image.open(semseg / "images" / split / f"{path.stem}.jpg")
            label = Image.open(path)
            assert label.mode == "L" and image.size == label.size == (320, 240)  # (w, h), not multiples of 14
            values = set(np.unique(np.asarray(label)).tolist())
            assert values <= {0, 1, 2, 3, 4} and 0 in values and len(values) > 1
            seen |= values
    assert seen == {0, 1, 2, 3, 4}


def test_classes_have_typical_colours(semseg: Path) -> None:
    means: dict[int, list[np.ndarray]] = {}
    for path in _labels(semseg, "training"):
        label = np.asarray(Image.open(path))
        image = np.asarray(Image.open(semseg / "images" / "training" / f"{path.stem}.jpg")).astype(np.float32)
        for cls in range(1, 5):
            # Erode by one pixel so JPEG ringing at edges does not blur the class colour.
            inside = (label == cls) & (np.roll(label, 1, 0) == cls) & (np.roll(label, -1, 1) == cls)
            if inside.sum() > 200:
                means.setdefault(cls, []).append(image[inside].mean(0))
    centres = {cls: np.mean(v, axis=0) for cls, v in means.items()}
    assert set(centres) == {1, 2, 3, 4}
    for cls, values in means.items():
        for value in values:
            assert min(centres, key=lambda c: np.linalg.norm(centres[c] - value)) == cls


def test_datamodule_writes_once_and_loads(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    dm = ShapesSegmentationDataModule(root=str(root), num_train=4, num_val=2, num_workers=0, batch_size=2)
    assert dm.num_classes == 5 and dm.class_names == SHAPES_SEMSEG_CLASSES and dm.ignore_index == 255
    assert dm.class_names[0] == "background"
    label = root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png"
    stamp = label.stat().st_mtime_ns
    reduced = ShapesSegmentationDataModule(root=str(root), num_train=4, num_val=2, reduce_zero_label=True)
    assert label.stat().st_mtime_ns == stamp, "an up-to-date data set is not rewritten"
    assert reduced.num_classes == 4 and reduced.class_names == SHAPES_SEMSEG_CLASSES[1:]
    ShapesSegmentationDataModule(root=str(root), num_train=3, num_val=2)
    assert len(list(label.parent.glob("*.png"))) == 3, "changed parameters rewrite the data, stale files go"

    dm = ShapesSegmentationDataModule(root=str(root), num_train=3, num_val=2, num_workers=0, batch_size=2)
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 224, 224) and images.dtype == torch.uint8
    assert all(t["label"].shape == (224, 224) and t["label"].dtype == torch.int64 for t in targets)
    images, targets = next(iter(dm.val_dataloader()))
    assert targets[0]["image_size"] == (240, 320) and targets[0]["label"].shape == (240, 320)
    assert images.shape == (1, 3, 252, 322)
    # The set also loads as ADE20K (0 ignored, shapes 1..4 -> 0..3).
    ade = ADE20KDataModule(root=str(root), num_workers=0)
    ade.setup("validate")
    assert set(ade.val_dataset[0][1]["label"].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_foreign_data_is_not_overwritten(tmp_path: Path) -> None:
    images = tmp_path / "ADEChallengeData2016" / "images" / "training"
    images.mkdir(parents=True)
    (images / "real.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_shapes_semseg(tmp_path, num_train=2, num_val=1)
    assert (images / "real.jpg").read_bytes() == b"not ours"
