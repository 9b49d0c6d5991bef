"""What a task's class outputs mean: class names, the dataset's ids, the ignored label."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHECKPOINT_KEY = "label_space"


@dataclass(frozen=True)
class LabelSpace:
    """The classes a task predicts, in the model's order, saved in its checkpoints as one entry.

    Attributes:
        class_names: the name of each class: of detection labels 1..K, or segmentation class indices 0..K-1.
        category_ids: the dataset's id of each class, in the same order (a COCO file's category ids for
            detection, which predictions report; the class indices 0..K-1 for segmentation).
        ignore_index: the label value of unlabelled pixels (segmentation); None for detection.

    Raises:
        ValueError: names and ids of different lengths.
    """

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.category_ids):
            raise ValueError(
                f"a label space needs one category id per class name: got {len(self.class_names)} names "
                f"{list(self.class_names)} and {len(self.category_ids)} ids {list(self.category_ids)}"
            )

    @classmethod
    def of(
        cls, class_names: Sequence[str], category_ids: Sequence[int], ignore_index: int | None = None
    ) -> "LabelSpace":
        """A label space from any sequences (e.g. a datamodule's lists)."""
        return cls(
            tuple(str(name) for name in class_names),
            tuple(int(category_id) for category_id in category_ids),
            None if ignore_index is None else int(ignore_index),
        )

    @property
    def names_by_id(self) -> dict[int, str]:
        """Category id -> class name."""
        return dict(zip(self.category_ids, self.class_names, strict=True))

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain lists and ints, which a checkpoint loads weights-only."""
        return {
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Mapping[str, Any], default: "LabelSpace", where: str
    ) -> "LabelSpace":
        """The label space saved in ``checkpoint`` (by :meth:`to_checkpoint`).

        A checkpoint written before label spaces were saved as one entry holds ``class_names`` and
        ``category_ids`` (detection) or ``ignore_index`` (segmentation) at its top level; whatever it lacks
        is taken from ``default``, the task's own.

        Raises:
            ValueError: a malformed entry, naming ``where`` (the checkpoint) and the fix.
        """
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            legacy_keys = ("class_names", "category_ids", "ignore_index")
            saved = {key: checkpoint[key] for key in legacy_keys if key in checkpoint}
        if not isinstance(saved, Mapping):
            raise ValueError(
                f"{where} has a malformed {CHECKPOINT_KEY!r} entry ({type(saved).__name__}): save the "
                "checkpoint again with vitdense, or rebuild the task and set its label_space"
            )
        try:
            return cls.of(
                saved.get("class_names", default.class_names),
                saved.get("category_ids", default.category_ids),
                saved.get("ignore_index", default.ignore_index),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where} has a malformed {CHECKPOINT_KEY!r} entry: {error}") from error
