"""Tests for vitdense.datamodules.segmentation: label mapping, folder pairing, ADE20K layout, bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image

from vitdense.datamodules import (
    ADE20K_CLASSES,
    ADE20KDataModule,
    BadDataError,
    LabelMapping,
    SegmentationEvalTransform,
    SegmentationFolder,
    SegmentationFolderDataModule,
    SegmentationTrainTransform,
    collate_segmentation,
    find_ade20k,
    read_label,
)


def _write_pair(
    images: Path,
    labels: Path,
    stem: str,
    label: np.ndarray | None,
    *,
    image_hw: tuple[int, int] | None = None,
    suffix: str = ".jpg",
    write_image: bool = True,
) -> None:
    """Write ``images/stem.suffix`` (grey noise, ``image_hw`` or the label's size) and ``labels/stem.png``."""
    hw = image_hw if image_hw is not None else label.shape[:2]
    if write_image:
        path = images / f"{stem}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(len(stem)).integers(60, 200, (*hw, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    if label is not None:
        path = labels / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(path)


def _label(h: int = 20, w: int = 30, values: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    label = np.zeros((h, w), np.uint8)
    for i, v in enumerate(values):
        label[:, i * w // len(values) :] = v
    return label


def _eval(images: Path, labels: Path, **kwargs) -> SegmentationFolder:
    kwargs.setdefault("num_classes", 3)
    return SegmentationFolder(images, labels, SegmentationEvalTransform((64, 48)), **kwargs)


# ----------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------


def test_reduce_zero_label_mapping() -> None:
    mapping = LabelMapping(150, ignore_index=255, reduce_zero_label=True)
    raw = np.array([[0, 1, 2], [75, 150, 255]], np.uint8)
    assert mapping(raw).tolist() == [[255, 0, 1], [74, 149, 255]]
    with pytest.raises(ValueError, match=r"\{151, 200\}"):
        mapping(np.array([[1, 151, 200]], np.uint8))


def test_identity_mapping_and_wide_labels() -> None:
    assert LabelMapping(3)(np.array([0, 1, 2, 255], np.uint8)).tolist() == [0, 1, 2, 255]
    with pytest.raises(ValueError, match=r"\{3\}"):
        LabelMapping(3)(np.array([0, 3], np.uint8))
    wide = LabelMapping(300, ignore_index=65535)
    assert wide.dtype == np.int32
    assert wide(np.array([0, 299, 65535], np.uint16)).tolist() == [0, 299, 65535]
    with pytest.raises(ValueError, match="-1"):
        wide(np.array([-1, 2], np.int32))


def test_ignore_index_must_not_be_a_class() -> None:
    with pytest.raises(ValueError, match="ignore_index=5 must be >= num_classes=10"):
        LabelMapping(10, ignore_index=5)


def test_palette_labels_are_read_as_indices(tmp_path: Path) -> None:
    label = Image.frombytes("P", (2, 2), bytes([0, 1, 2, 1]))
    label.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    label.save(tmp_path / "p.png")
    assert read_label(tmp_path / "p.png").tolist() == [[0, 1], [2, 1]]


# ----------------------------------------------------------------------------------------------------
# Folder datasets
# ----------------------------------------------------------------------------------------------------


def test_images_and_labels_are_matched_by_stem(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _write_pair(images, labels, "b", _label(), suffix=".png")
    _write_pair(images, labels, "a", _label())
    _write_pair(images, labels, "sub/c", _label(), suffix=".jpeg")
    (labels / "README.txt").write_text("not a label")
    dataset = _eval(images, labels)
    assert [(Path(i).name, Path(lb).relative_to(labels).as_posix()) for i, lb in dataset.files] == [
        ("a.jpg", "a.png"),
        ("b.png", "b.png"),
        ("c.jpeg", "sub/c.png"),
    ]


def test_eval_sample_keeps_the_label_at_original_resolution(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    raw = _label(20, 30, (0, 1, 2, 255))
    _write_pair(images, labels, "a", raw)
    dataset = _eval(images, labels, reduce_zero_label=True, num_classes=2)
    image, target = dataset[0]
    # min(64 / 30, 48 / 20) = 2.133: 20 x 30 -> 43 x 64.
    assert image.shape == (3, 43, 64) and image.dtype == torch.uint8
    assert target["image_size"] == (43, 64) and target["orig_size"] == (20, 30)
    assert target["label"].dtype == torch.int64 and target["label"].shape == (20, 30)
    expected = np.where(raw == 0, 255, np.where(raw == 255, 255, raw.astype(int) - 1))
    assert target["label"].numpy().tolist() == expected.tolist()
    assert target["file_name"].endswith("a.jpg")


def test_train_sample_contract(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _write_pair(images, labels, "a", _label(40, 60))
    transform = SegmentationTrainTransform(crop_size=56, scale=(60, 40))
    image, target = SegmentationFolder(images, labels, transform, num_classes=3)[0]
    assert image.shape == (3, 56, 56) and image.dtype == torch.uint8
    assert set(target) == {"label"} and target["label"].shape == (56, 56)
    assert target["label"].dtype == torch.int64


def test_ignore_index_inside_the_uint8_range_loads(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _write_pair(images, labels, "a", _label(values=tuple(range(12))))  # 0..10 classes, 11 ignored
    dataset = _eval(images, labels, num_classes=11, ignore_index=11)
    assert sorted(dataset[0][1]["label"].unique().tolist()) == list(range(12))
    transform = SegmentationTrainTransform(crop_size=56, scale=(60, 40), ignore_index=11)
    _, target = SegmentationFolder(images, labels, transform, num_classes=11, ignore_index=11)[0]
    assert target["label"].max() <= 11


@pytest.mark.parametrize(
    ("case", "reason", "match"),
    [
        ("size", "size_mismatch", r"bad\.png is 20x30 \(h x w\) but its image .*bad\.jpg is 20x31"),
        ("rgb", "label_not_indices", r"bad\.png is a mode RGB image"),
        ("no_label", "missing_label", r"bad\.jpg has no label .*bad\.png; add"),
        (
            "jpeg_label",
            "missing_label",
            r"bad\.jpg has no label .*bad\.png \(.*lbl/bad\.jpg is not a PNG: labels",
        ),
        ("no_image", "missing_image", r"bad\.png has no image"),
    ],
)
def test_bad_records_found_at_construction(tmp_path: Path, case: str, reason: str, match: str) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _write_pair(images, labels, "good", _label())
    if case == "size":
        _write_pair(images, labels, "bad", _label(), image_hw=(20, 31))
    elif case == "rgb":
        _write_pair(images, labels, "bad", np.zeros((20, 30, 3), np.uint8))
    elif case == "no_label":
        _write_pair(images, labels, "bad", None, image_hw=(20, 30))
    elif case == "jpeg_label":
        _write_pair(images, labels, "bad", None, image_hw=(20, 30))
        Image.fromarray(_label()).save(labels / "bad.jpg")
    else:
        _write_pair(images, labels, "bad", _label(), write_image=False)
    with pytest.raises(BadDataError, match=match):
        _eval(images, labels)
    dataset = _eval(images, labels, on_bad_data="skip")
    assert len(dataset) == 1 and dataset.skipped == {reason: 1}
    assert dataset[0][1]["file_name"].endswith("good.jpg")


def test_out_of_range_values_found_at_load_time(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _write_pair(images, labels, "a_bad", _label(values=(0, 1, 7)))
    _write_pair(images, labels, "b_good", _label())
    strict = _eval(images, labels)
    with pytest.raises(BadDataError, match=r"a_bad\.png: label values \{7\} are not in \[0, 3\)"):
        strict[0]
    lenient = _eval(images, labels, on_bad_data="skip")
    assert lenient[0] is None, "evaluation: a bad sample is left out, not replaced by one scored twice"
    assert lenient.skipped == {"label_out_of_range": 1}
    assert lenient[0] is None
    assert lenient.skipped == {"label_out_of_range": 1}, "a known bad sample is not reported twice"
    assert lenient[1][1]["file_name"].endswith("b_good.jpg")
    train = SegmentationFolder(
        images, labels, SegmentationTrainTransform(28, (60, 40)), num_classes=3, on_bad_data="skip"
    )
    assert train[0][1]["label"].shape == (28, 28), "training: a bad sample is replaced by the next one"


def test_missing_folder_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="check the labels argument"):
        (tmp_path / "img").mkdir()
        _eval(tmp_path / "img", tmp_path / "nope")


# ----------------------------------------------------------------------------------------------------
# Collation and DataModules
# ----------------------------------------------------------------------------------------------------


def test_collate_segmentation_pads_to_the_patch_multiple() -> None:
    a, b = torch.full((3, 10, 20), 5, dtype=torch.uint8), torch.full((3, 15, 5), 7, dtype=torch.uint8)
    ta = {"label": torch.zeros(10, 20, dtype=torch.int64)}
    tb = {"label": torch.zeros(15, 5, dtype=torch.int64)}
    images, targets = collate_segmentation([(a, ta), (b, tb)])
    assert images.shape == (2, 3, 28, 28) and images.dtype == torch.uint8
    for image, (h, w), value in zip(images, [(10, 20), (15, 5)], [5, 7]):
        assert (image[:, :h, :w] == value).all()
        assert image[:, h:].sum() == 0 and image[:, :, w:].sum() == 0
    assert targets[0] is ta and targets[1] is tb


def _folder_dm(tmp_path: Path, **kwargs) -> SegmentationFolderDataModule:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    for i in range(3):
        _write_pair(images, labels, f"{i}", _label(40 + i, 60))
    defaults = {"num_classes": 3, "crop_size": 56, "scale": (60, 40), "batch_size": 2, "num_workers": 0}
    paths = [str(images), str(labels), str(images), str(labels)]
    return SegmentationFolderDataModule(*paths, **{**defaults, **kwargs})


def test_folder_datamodule(tmp_path: Path) -> None:
    dm = _folder_dm(tmp_path, predict_images=str(tmp_path / "img"))
    assert dm.num_classes == 3 and dm.class_names == ["0", "1", "2"] and dm.ignore_index == 255
    assert dm.eval_batch_size == 1
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 56, 56) and all(t["label"].shape == (56, 56) for t in targets)
    images, targets = next(iter(dm.val_dataloader()))
    h, w = targets[0]["image_size"]
    assert images.shape == (1, 3, -(-h // 14) * 14, -(-w // 14) * 14)
    assert dm.test_dataset is dm.val_dataset, "test defaults to the validation split"
    images, targets = next(iter(dm.predict_dataloader()))
    assert set(targets[0]) == {"image_id", "orig_size", "image_size", "file_name"}


@pytest.mark.parametrize("eval_batch_size", [1, 2])
def test_evaluation_scores_each_good_image_once_and_leaves_a_bad_one_out(
    tmp_path: Path, eval_batch_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad sample found at load time is not replaced by the next image, which would be scored twice."""
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _write_pair(images, labels, "a_bad", _label(values=(0, 1, 7)))
    for stem in ("b_good", "c_good"):
        _write_pair(images, labels, stem, _label())
    paths = [str(images), str(labels), str(images), str(labels)]
    dm = SegmentationFolderDataModule(
        *paths, num_classes=3, crop_size=56, scale=(60, 40), eval_batch_size=eval_batch_size, num_workers=0,
        on_bad_data="skip",
    )  # fmt: skip
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    scored = [Path(t["file_name"]).stem for batch in batches if batch is not None for t in batch[1]]
    assert scored == ["b_good", "c_good"]
    assert (batches[0] is None) == (eval_batch_size == 1), "a batch of bad samples only is None"
    assert "a_bad.png: label values {7}" in caplog.text


def test_datamodule_names_the_split_argument_of_a_missing_folder(tmp_path: Path) -> None:
    dm = _folder_dm(tmp_path)
    dm.val_labels = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope: folder not found; check the val_labels argument"):
        dm.setup("fit")


@pytest.mark.parametrize("check_data", [False, True])
def test_folder_datamodule_reads_only_the_splits_a_command_uses(tmp_path: Path, check_data: bool) -> None:
    dm = _folder_dm(tmp_path, check_data=check_data)
    dm.train_images, dm.train_labels = str(tmp_path / "no_train_img"), str(tmp_path / "no_train_lbl")
    dm.setup("validate")
    dm.setup("test")
    assert len(dm.val_dataset) == 3 and dm.test_dataset is dm.val_dataset and dm.train_dataset is None
    # with check_data the message is in the data check's report
    missing = "no_train_img: folder not found; check the train_images argument"
    with pytest.raises((FileNotFoundError, BadDataError), match=missing):
        dm.setup("fit")


def test_datamodule_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"crop_size=510 is not a multiple of .*; use 504 or 518"):
        _folder_dm(tmp_path, crop_size=510)
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes=3"):
        _folder_dm(tmp_path, class_names=["a", "b"])
    with pytest.raises(ValueError, match="ignore_index=2"):
        _folder_dm(tmp_path, ignore_index=2)


def _ade_tree(root: Path, splits: tuple[str, ...] = ("training", "validation")) -> Path:
    base = root / "ADEChallengeData2016"
    for split, infix, n in (("training", "train", 2), ("validation", "val", 1)):
        if split not in splits:
            continue
        for i in range(n):
            label = _label(24, 32, (0, 1, 150))
            stem = f"ADE_{infix}_{i + 1:08d}"
            _write_pair(base / "images" / split, base / "annotations" / split, stem, label)
    return base


def test_ade20k_layout(tmp_path: Path) -> None:
    base = _ade_tree(tmp_path)
    assert find_ade20k(tmp_path) == base and find_ade20k(base) == base
    for root in (tmp_path, base):
        dm = ADE20KDataModule(root=str(root), num_workers=0, batch_size=2)
        assert dm.num_classes == 150 and dm.ignore_index == 255
        assert dm.class_names == ADE20K_CLASSES and len(set(ADE20K_CLASSES)) == 150
        assert ADE20K_CLASSES[:5] == ["wall", "building", "sky", "floor", "tree"]
        assert ADE20K_CLASSES[-1] == "flag"
    dm.setup()
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1 and len(dm.test_dataset) == 1
    _, target = dm.val_dataset[0]
    assert sorted(target["label"].unique().tolist()) == [0, 149, 255]  # 1 -> 0, 150 -> 149, 0 -> ignored
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 518, 518)
    assert set(torch.cat([t["label"].unique() for t in targets]).tolist()) <= {0, 149, 255}
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        ADE20KDataModule(root=str(tmp_path / "missing"))


@pytest.mark.parametrize("check_data", [False, True])
def test_ade20k_with_the_validation_split_alone_validates_and_tests(tmp_path: Path, check_data: bool) -> None:
    """As `vitdense test` / `validate` set it up; fit names the missing training folders and the layout."""
    base = _ade_tree(tmp_path, splits=("validation",))
    dm = ADE20KDataModule(root=str(tmp_path), num_workers=0, check_data=check_data)
    dm.setup("test")
    dm.setup("validate")
    assert len(dm.test_dataset) == 1 and dm.test_dataset is dm.val_dataset and dm.train_dataset is None
    _, targets = next(iter(dm.test_dataloader()))
    assert targets[0]["label"].shape == (24, 32)
    with pytest.raises((FileNotFoundError, BadDataError)) as error:  # in the report with check_data
        dm.setup("fit")
    message = str(error.value)
    assert f"{base / 'images' / 'training'} and {base / 'annotations' / 'training'} not found" in message
    assert "ADE20K training split" in message and "images/{training,validation}/*.jpg" in message


def test_workers_draw_different_augmentations(tmp_path: Path) -> None:
    # albumentations would give every forked worker the same random stream; the transform reseeds.
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _write_pair(images, labels, "a", _label(40, 60))
    transform = SegmentationTrainTransform(crop_size=28, scale=(60, 40))
    dataset = torch.utils.data.Subset(SegmentationFolder(images, labels, transform, num_classes=3), [0] * 8)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=2, collate_fn=collate_segmentation
    )
    crops = [targets[0]["label"] for _, targets in loader]
    by_worker = torch.stack(crops[0::2]), torch.stack(crops[1::2])
    assert not torch.equal(*by_worker)


def test_ade20k_offers_every_option_of_the_folder_datamodule_but_what_ade20k_fixes() -> None:
    # As LightningCLI reads the class (``**kwargs`` resolved by jsonargparse), with the general defaults.
    def defaults(cls: type) -> dict:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        return vars(parser.get_defaults()["data"])

    fixed = [f"{split}_{kind}" for split in ("train", "val", "test") for kind in ("images", "labels")]
    fixed += ["num_classes", "class_names", "ignore_index", "reduce_zero_label"]
    offered, general = defaults(ADE20KDataModule), defaults(SegmentationFolderDataModule)
    assert offered.keys() - {"root"} == general.keys() - set(fixed)
    assert all(offered[name] == general[name] for name in offered.keys() - {"root"})
