"""Python inference: a trained checkpoint, no YAML, applied to a path, a PIL image or an RGB array.

    from vitdense.inference import Predictor

    predictor = Predictor.from_checkpoint("runs/demo_shapes_mask_rcnn/checkpoints/last.ckpt")
    result = predictor("photo.jpg")  # boxes, labels (category ids), names, scores, masks at original size

The images are prepared exactly as ``vitdense predict`` prepares them (same decoding, EXIF orientation, mode
conversion and evaluation transform), and the result is the task's own ``predict_step`` output.
"""

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitdense.backbones import skip_weights_loading
from vitdense.checkpoint_trust import check_checkpoint_classes, read_checkpoint
from vitdense.datamodules.predict_images import as_rgb_array, predict_sample
from vitdense.tasks import VitDenseTask
from vitdense.tasks.task_contract import DenseTask

__all__ = ["Predictor", "load_checkpoint"]

ImageInput = str | Path | Image.Image | np.ndarray


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", trusted_classes: Iterable[str] = ()
) -> VitDenseTask:
    """The task saved in a checkpoint written by ``vitdense fit``, rebuilt from the config it holds.

    Nothing is downloaded and no weights file is read: the checkpoint holds every weight and the
    normalisation statistics. Nothing in the file is run either: it is loaded weights-only, and its config's
    class paths are checked before any is imported
    (:func:`~vitdense.checkpoint_trust.check_checkpoint_classes`).

    Args:
        path: the checkpoint.
        map_location: where its tensors go.
        trusted_classes: class paths outside the kit's trusted modules that its config may name (your own
            task subclass or backbone, say); only for checkpoints you trust.

    Raises:
        FileNotFoundError: no such file.
        UntrustedCheckpointError: the file needs more than weights-only loading, or names a class not trusted.
        ValueError: the file is not a checkpoint written by the ``vitdense`` CLI.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, mmap=True)  # its config only: the weights are read below
    hyper_parameters = checkpoint.get("hyper_parameters")
    class_path = hyper_parameters.get("_class_path") if isinstance(hyper_parameters, Mapping) else None
    if not isinstance(class_path, str):
        raise ValueError(
            f"{path} does not hold the config of its model (it was not written by `vitdense fit`); rebuild "
            "the task in Python and pass its parts: DetectionTask.load_from_checkpoint(path, detector=...)"
        )
    allow = "trusted_classes=['{0}'] in Python, --trust_class {0} for vitdense predict and export"
    check_checkpoint_classes(checkpoint, path, trusted_classes, allow=allow)
    del checkpoint
    module_name, _, class_name = class_path.rpartition(".")
    task_class = getattr(importlib.import_module(module_name), class_name, None) if module_name else None
    if not (isinstance(task_class, type) and issubclass(task_class, VitDenseTask)):
        raise ValueError(f"{path} holds a {class_path}, not a vitdense task")
    with skip_weights_loading():
        task = task_class.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return task.eval()


class Predictor:
    """Runs a trained task on single images, with the evaluation transform and collate it provides
    (:class:`~vitdense.tasks.task_contract.DenseTask`).

    Args:
        task: e.g. a :class:`DetectionTask` or :class:`SemanticSegmentationTask` that was trained (or loaded)
            with its datamodule, so that it knows its evaluation input size.
        device: where to run; default: the task's device.

    Raises:
        TypeError: ``task`` does not provide the task contract.
        ValueError: the task does not know its input size.
    """

    def __init__(self, task: VitDenseTask, device: str | torch.device | None = None) -> None:
        if not isinstance(task, DenseTask):
            raise TypeError(
                "expected a task that provides vitdense.tasks.task_contract.DenseTask (e.g. a DetectionTask "
                f"or SemanticSegmentationTask), got {type(task).__name__}"
            )
        self.transform = task.eval_transform()
        self.collate = task.eval_collate()
        self.task = task.eval() if device is None else task.to(device).eval()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", trusted_classes: Iterable[str] = ()
    ) -> "Predictor":
        """A predictor for the task in a ``vitdense fit`` checkpoint (see :func:`load_checkpoint`, which
        also says what ``trusted_classes`` allows)."""
        return cls(load_checkpoint(path, map_location=device, trusted_classes=trusted_classes))

    @property
    def class_names(self) -> list[str]:
        return list(self.task.label_space.class_names)

    @torch.inference_mode()
    def __call__(self, image: ImageInput) -> dict[str, Any]:
        """The prediction for one image, as ``vitdense predict`` makes it.

        Detection: ``boxes`` float (N, 4) xyxy in original pixels, ``labels`` (N,) dataset category ids,
        ``names`` (N,) class names, ``scores`` (N,), and for Mask R-CNN ``masks`` bool (N, H, W).
        Segmentation: ``label`` int64 (H, W) class indices. Both: ``orig_size`` (H, W) after EXIF rotation.
        """
        file_name = str(image) if isinstance(image, (str, Path)) else None
        sample = predict_sample(as_rgb_array(image), self.transform, file_name, 0)
        images, targets = self.collate([sample])
        images = images.to(self.task.device)
        (output,) = self.task.predict_step((images, targets), 0)
        return self.task.named_prediction(output)
