"""ADE20K (ADEChallengeData2016, SceneParsing): its class names, its folder layout and its DataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitdense.datamodules.bad_data import Policy
from vitdense.datamodules.segmentation import SegmentationFolderDataModule
from vitdense.datamodules.segmentation_folder import SegmentationFolder

__all__ = ["ADE20K_CLASSES", "ADE20KDataModule", "ade20k_split_folders", "find_ade20k"]

# ADEChallengeData2016 (SceneParsing, 150 classes) in label order 1..150, i.e. index 0..149 after
# reduce_zero_label; the names mmseg uses (its 'bed ' has a stray space, dropped here).
ADE20K_CLASSES: list[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip


_LAYOUT = (
    "ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"
)
_SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "validation"}


def _split_folders(base: Path, folder: str) -> tuple[Path, Path]:
    """``(images, labels)`` folders of the ADE20K split ``folder`` (``training`` or ``validation``)."""
    return base / "images" / folder, base / "annotations" / folder


def ade20k_split_folders(base: Path) -> dict[str, str]:
    """The training and validation folders of the ``ADEChallengeData2016`` folder ``base``, as the
    ``train_images``, ``train_labels``, ``val_images`` and ``val_labels`` of
    :class:`SegmentationFolderDataModule`."""
    (train_images, train_labels), (val_images, val_labels) = (
        _split_folders(base, folder) for folder in ("training", "validation")
    )
    return {
        "train_images": str(train_images),
        "train_labels": str(train_labels),
        "val_images": str(val_images),
        "val_labels": str(val_labels),
    }


def find_ade20k(root: str | Path) -> Path:
    """The ``ADEChallengeData2016`` folder: ``root/ADEChallengeData2016`` or ``root`` itself, holding the
    ``images`` and ``annotations`` folders of the training split, the validation split or both (a command
    reads only the splits it uses).

    Raises:
        FileNotFoundError: neither holds the image and label folders of any split.
    """
    root = Path(root)
    for candidate in (root / "ADEChallengeData2016", root):
        for folder in ("training", "validation"):
            if all(path.is_dir() for path in _split_folders(candidate, folder)):
                return candidate
    raise FileNotFoundError(
        f"{root}: no ADE20K layout found ({_LAYOUT}); pass the folder that contains ADEChallengeData2016/ "
        "(unzip ADEChallengeData2016.zip from the MIT SceneParsing benchmark there) or that folder itself"
    )


class ADE20KDataModule(SegmentationFolderDataModule):
    """ADE20K (ADEChallengeData2016, SceneParsing): 150 classes, 0 = "other" ignored.

    Training uses ``images/training`` + ``annotations/training``; validation and test use the
    ``validation`` split (the test server's labels are not public). ``reduce_zero_label`` is fixed on:
    raw 0 ("other") -> 255 (ignored), raw 1..150 -> 0..149 named by :data:`ADE20K_CLASSES`. A folder with
    only the validation split serves ``validate``, ``test`` and ``predict``; ``fit`` then names the missing
    training folders.

    Args:
        root: the folder containing ``ADEChallengeData2016/``, or that folder itself.
        Other arguments: as :class:`SegmentationFolderDataModule` (defaults: the mmseg ADE20K 512 x 512
            pipeline with a 518 = 37 x 14 crop).
    """

    def __init__(self, root: str, **kwargs: Any) -> None:
        base = find_ade20k(root)
        folders = ade20k_split_folders(base)
        # The split folders, classes and label mapping are ADE20K's, and test reads the validation split (the
        # test server's labels are not public): named here, they are no arguments of this class.
        super().__init__(
            train_images=folders["train_images"],
            train_labels=folders["train_labels"],
            val_images=folders["val_images"],
            val_labels=folders["val_labels"],
            num_classes=len(ADE20K_CLASSES),
            test_images=None,
            test_labels=None,
            class_names=ADE20K_CLASSES,
            ignore_index=255,
            reduce_zero_label=True,
            **kwargs,
        )
        self.root = root
        self.base = base

    def split_dataset(self, split: str, on_bad_data: Policy) -> SegmentationFolder:
        """A new dataset of ``split``, or an error naming its missing ADE20K folders and the layout.

        Raises:
            FileNotFoundError: the split's image or label folder is missing.
        """
        folder = _SPLIT_FOLDERS[split]
        missing = [str(path) for path in _split_folders(self.base, folder) if not path.is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{self.base}: the ADE20K {folder} split, which the {split} split reads, is missing "
                f"({' and '.join(missing)} not found); the layout is {_LAYOUT}: add the {folder} folders, or "
                "run a command that does not need them (validate, test and predict read the validation split "
                "alone)"
            )
        return super().split_dataset(split, on_bad_data)
