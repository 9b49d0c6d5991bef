"""Semantic segmentation training, dataset-level mIoU evaluation and prediction as a LightningModule."""

import csv
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from vitdense.datamodules.collate import collate_segmentation
from vitdense.datamodules.segmentation_transforms import SegmentationEvalTransform
from vitdense.heads import Segmenter, multi_scale_flip_inference, slide_inference, whole_inference
from vitdense.tasks.base import VitDenseTask
from vitdense.tasks.label_space import LabelSpace
from vitdense.tasks.segmentation_metrics import format_class_table, segmentation_scores
from vitdense.tasks.task_contract import ExportInputs, PredictionFiles, image_entries
from vitdense.tasks.visualization import draw_label_map, valid_region_at_original

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, list[dict[str, Any]]]


def checked_sliding_window(window: Sequence[int] | None, divisor: int) -> tuple[int, int] | None:
    """``window`` as ``(crop, stride)``, checked when it is set rather than at the first validation.

    Raises:
        ValueError: a stride not in ``(0, crop]`` or a crop that is not a multiple of ``divisor`` (the
            model's size divisibility), naming the nearest good crops.
    """
    if window is None:
        return None
    crop, stride = (int(side) for side in window)
    if not 0 < stride <= crop:
        raise ValueError(f"sliding_window=(crop, stride)={tuple(window)}: need 0 < stride <= crop")
    if crop % divisor:
        below, above = crop // divisor * divisor, (crop // divisor + 1) * divisor
        nearest = f"{below} or {above}" if below else f"{above}"
        raise ValueError(
            f"sliding_window crop {crop} must be a multiple of the model's size_divisibility {divisor}; use "
            f"{nearest} (usually the training crop)"
        )
    return crop, stride


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``.

    Args:
        logits: float (B, K, H, W).
        labels: int64 (B, H, W) class indices 0..K-1 or ``ignore_index``.

    Returns:
        A scalar. Without any labelled pixel (a crop of unlabelled area), zero rather than PyTorch's 0 / 0 =
        NaN, still computed from ``logits``: its backward gives every parameter a zero gradient, so the step
        is not skipped as non-finite and DDP finds the gradients of every process.
    """
    if bool((labels != ignore_index).any()):
        return F.cross_entropy(logits, labels, ignore_index=ignore_index)
    return logits.sum() * 0.0


class SemanticSegmentationTask(VitDenseTask):
    """Fine-tunes a :class:`Segmenter` with cross-entropy and scores it as the ADE20K benchmark does.

    Batches are ``(images, targets)`` from the vitdense segmentation datamodules: uint8 (B, 3, H, W) and
    per-image dicts. Training targets hold ``label`` int64 (H, W) at the crop; evaluation targets hold the
    ``label`` at the image's original resolution with ``orig_size`` and ``image_size`` (the valid region of
    the resized image in the padded batch). Predictions are made at the original resolution, either from the
    whole image or by a sliding window whose overlapping logits are averaged (optionally also over scales and
    a left-right flip: ``test_scales``, ``test_flip``), and accumulated in one confusion matrix over the split
    (summed across processes under DDP): mIoU, aAcc, mAcc and per-class IoU, printed and written to the run's
    log directory as ``{split}_step{N}_metrics.json`` and ``_per_class.csv``.

    Args:
        num_classes: number of classes K (linked from the datamodule by the CLI).
        segmenter: builds the model for ``num_classes`` (e.g. :class:`vitdense.heads.PyramidSegmenter`).
        optimizer: builds the optimizer from param groups (default: AdamW).
        lr_scheduler: builds a per-step scheduler (e.g. ``WarmupPolyLR``).
        layer_decay: layer-wise lr decay over the ViT blocks (1.0: off).
        aux_weight: weight of the auxiliary head's loss, when the model has one.
        sliding_window: ``(crop, stride)`` in pixels for sliding-window evaluation; None: whole image.
        test_scales: multi-scale evaluation (mmseg's aug-test) in validation, test and predict: each image
            (at the evaluation resize) is also resized by these factors, e.g. ``[0.5, 0.75, 1.0, 1.25, 1.5,
            1.75]``, and run whole or by sliding window at each scale; the softmax probabilities of all
            passes, resized to the original image, are averaged (as mmseg; see
            :func:`vitdense.heads.multi_scale_flip_inference`). None: the evaluation resize only.
        test_flip: also run every scale mirrored left-right and average it in (doubles the passes). From
            the command line: ``--model.init_args.test_scales=[0.5,0.75,1.0,1.25,1.5,1.75]
            --model.init_args.test_flip=true``.
        max_nonfinite_in_a_row: a non-finite loss skips its step (warned, counted); this many in a row abort.
        torch_compile: compile the whole segmenter (backbone, heads, upsampling) with ``torch.compile``
            (static shapes) for speed on a GPU; training crops and sliding windows run compiled, whole-image
            evaluation eager (its sizes vary).
    """

    def __init__(
        self,
        num_classes: int,
        segmenter: Callable[[int], Segmenter],
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float = 1.0,
        aux_weight: float = 0.4,
        sliding_window: tuple[int, int] | None = None,
        test_scales: list[float] | None = None,
        test_flip: bool = False,
        max_nonfinite_in_a_row: int = 10,
        torch_compile: bool = False,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, layer_decay, max_nonfinite_in_a_row, torch_compile)
        self.save_hyperparameters()
        self.save_config("segmenter", "optimizer", "lr_scheduler")
        self.model = segmenter(num_classes)
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self.sliding_window = checked_sliding_window(sliding_window, self.model.size_divisibility)
        if test_scales is not None and (not test_scales or min(test_scales) <= 0):
            raise ValueError(f"test_scales={test_scales}: give positive factors, e.g. [0.75, 1.0, 1.25]")
        self.test_scales = list(test_scales) if test_scales is not None else None
        self.test_flip = test_flip
        # Taken from the datamodule at setup and saved in checkpoints.
        names = [str(index) for index in range(num_classes)]
        self.label_space = LabelSpace.of(names, range(num_classes), ignore_index=255)
        # The evaluation resize's (long, short) reference, so that vitdense.inference prepares images as
        # `vitdense predict` does.
        self.eval_scale: tuple[int, int] | None = None
        self.confmat = MulticlassConfusionMatrix(
            num_classes, ignore_index=self.label_space.ignore_index, validate_args=False
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "ignore_index"):
            return
        if datamodule.num_classes != self.num_classes:
            raise ValueError(
                f"The datamodule has {datamodule.num_classes} classes but the model was built for "
                f"{self.num_classes}: set model.init_args.num_classes to match (the CLI links it)."
            )
        class_names = list(datamodule.class_names)
        self._set_label_space(LabelSpace.of(class_names, range(len(class_names)), datamodule.ignore_index))
        self.eval_scale = tuple(int(side) for side in datamodule.scale)
        self._label_space_from_data = True

    def _set_label_space(self, label_space: LabelSpace) -> None:
        self.label_space = label_space
        self.confmat.ignore_index = label_space.ignore_index

    @property
    def ignore_index(self) -> int:
        """The label value of unlabelled pixels (see :attr:`label_space`)."""
        return self.label_space.ignore_index

    @property
    def class_names(self) -> list[str]:
        """The name of each class index 0..K-1 (see :attr:`label_space`)."""
        return list(self.label_space.class_names)

    def evaluation_metrics(self) -> list[str]:
        return ["mIoU", "aAcc", "mAcc"]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["eval_scale"] = self.eval_scale

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        eval_scale = checkpoint.get("eval_scale")
        if not self._label_space_from_data and eval_scale is not None:  # else the datamodule's scale governs
            self.eval_scale = tuple(eval_scale)

    def compiled_part(self) -> torch.nn.Module:
        """The whole segmenter: every shape in it follows from the crop's."""
        return self.model

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": logits (B, K, H, W)}`` (plus ``"aux"`` in training); see :class:`Segmenter`."""
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        images, targets = batch
        labels = torch.stack([target["label"] for target in targets])
        outputs = self.model(images)
        losses = {"loss_ce": labelled_cross_entropy(outputs["out"], labels, self.ignore_index)}
        if "aux" in outputs:
            aux = labelled_cross_entropy(outputs["aux"], labels, self.ignore_index)
            losses["loss_aux"] = self.aux_weight * aux
        loss = sum(losses.values())
        batch_size = images.shape[0]
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return self.finite_or_skip(loss, losses, targets)

    def _original_logits(self, batch: Batch) -> list[torch.Tensor]:
        """Per image, float32 (K, H0, W0) class scores at the original resolution: logits, or the averaged
        probabilities of the ``test_scales`` / ``test_flip`` passes; their argmax is the label map."""
        images, targets = batch
        image_sizes = [tuple(target["image_size"]) for target in targets]
        orig_sizes = [tuple(target["orig_size"]) for target in targets]
        if self.test_scales is None and not self.test_flip:
            return self._single_scale_logits(images, image_sizes, orig_sizes)
        scales = self.test_scales or [1.0]
        return multi_scale_flip_inference(
            self._single_scale_logits, images, image_sizes, orig_sizes, scales, self.test_flip
        )

    def _single_scale_logits(
        self, images: torch.Tensor, image_sizes: list[tuple[int, int]], orig_sizes: list[tuple[int, int]]
    ) -> list[torch.Tensor]:
        if self.sliding_window is None:
            # Every image runs at its own size: a static-shape compile would recompile for each one.
            with torch.compiler.set_stance("force_eager"):
                return whole_inference(self.model, images, image_sizes, orig_sizes)
        crop, stride = self.sliding_window
        return slide_inference(self.model, images, image_sizes, orig_sizes, crop, stride)

    def _evaluation_step(self, batch: Batch | None) -> list[torch.Tensor] | None:
        if batch is None:  # every image of the batch was skipped as bad (see collate_segmentation)
            return None
        predictions = [logits.argmax(dim=0) for logits in self._original_logits(batch)]
        for target, prediction in zip(batch[1], predictions, strict=True):
            self.confmat.update(prediction, target["label"])
        return predictions

    def validation_step(self, batch: Batch | None, batch_idx: int) -> list[torch.Tensor] | None:
        """Scores the batch; returns its label maps at original resolution (for image logging)."""
        return self._evaluation_step(batch)

    def test_step(self, batch: Batch | None, batch_idx: int) -> list[torch.Tensor] | None:
        return self._evaluation_step(batch)

    def draw_predictions(self, batch: Batch, label_maps: list[torch.Tensor], **_: Any) -> list[torch.Tensor]:
        """Each image of ``batch`` at its original size tinted by its predicted ``label_maps``."""
        return [
            draw_label_map(
                valid_region_at_original(image, target["image_size"], target["orig_size"]),
                label_map,
                self.num_classes,
            )
            for image, target, label_map in zip(batch[0], batch[1], label_maps, strict=True)
        ]

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _log_scores(self, split: str) -> None:
        confmat = self.confmat.compute()  # summed over processes
        self.confmat.reset()
        if self.trainer.sanity_checking:
            return
        if confmat.sum() == 0:
            raise ValueError(
                f"No labelled pixel was scored in the {split} split: every image was skipped as bad (see the "
                f"messages above) or every label is ignore_index {self.ignore_index}; fix the {split} data"
            )
        absent = [name for name, count in zip(self.class_names, confmat.sum(dim=1).tolist()) if count == 0]
        if absent and self.trainer.is_global_zero:
            shown = ", ".join(repr(name) for name in absent[:10]) + (", ..." if len(absent) > 10 else "")
            logger.warning(
                "%d of %d classes have no labelled pixel in the %s split (%s): their IoU is 0 where "
                "predicted and otherwise left out of mIoU. Binary masks saved as 0 / 255 lose their "
                "foreground when 255 is ignore_index (%d here): write it as class 1",
                len(absent),
                len(self.class_names),
                split,
                shown,
                self.ignore_index,
            )
        scores = segmentation_scores(confmat)
        summary = {name: float(scores[name]) for name in ("mIoU", "aAcc", "mAcc")}
        self.log_dict({f"{split}/{name}": value for name, value in summary.items()})
        self.final_metrics = {"split": split, "step": self.trained_steps, **summary}
        per_class = {
            name: {"IoU": iou, "Acc": accuracy}
            for name, iou, accuracy in zip(self.class_names, scores["IoU"].tolist(), scores["Acc"].tolist())
        }
        prefix = f"{split}_step{self.trained_steps}"
        self.write_report(f"{prefix}_metrics.json", {**self.final_metrics, "per_class": per_class})
        rows = io.StringIO()  # the csv module quotes names such as "Sign, symbol"
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["class", "IoU", "Acc"])
        writer.writerows([name, values["IoU"], values["Acc"]] for name, values in per_class.items())
        self.write_report(f"{prefix}_per_class.csv", rows.getvalue())
        if self.trainer.is_global_zero:
            table = format_class_table(scores, self.class_names)
            print(f"Semantic segmentation, {split} (step {self.trained_steps}):\n{table}", flush=True)

    def predict_step(self, batch: Batch | None, batch_idx: int) -> list[dict[str, Any]]:
        """Per image: ``label`` int64 (H0, W0) class indices at original resolution, with its file name."""
        if batch is None:  # a process with no image of its own under DDP (see EvaluationSampler)
            return []
        outputs = []
        for target, logits in zip(batch[1], self._original_logits(batch), strict=True):
            outputs.append({"label": logits.argmax(dim=0).cpu(), **image_entries(target)})
        return outputs

    def eval_transform(self) -> SegmentationEvalTransform:
        """The evaluation resize to :attr:`eval_scale` (from the datamodule)."""
        if self.eval_scale is None:
            raise ValueError("the task does not know its input size; set task.eval_scale (long, short)")
        return SegmentationEvalTransform(self.eval_scale)

    def eval_collate(self) -> Callable[[list[tuple[torch.Tensor, dict[str, Any]]]], Batch | None]:
        return collate_segmentation

    def predict_by_sliding_window(self, window: tuple[int, int]) -> None:
        self.sliding_window = checked_sliding_window(window, self.model.size_divisibility)

    def named_prediction(self, output: dict[str, Any]) -> dict[str, Any]:
        """``output`` as it is: its class indices name :attr:`class_names`."""
        return output

    def write_prediction(self, files: PredictionFiles, output: dict[str, Any]) -> None:
        files.write_label_map(self, output)

    def finish_predictions(self, files: PredictionFiles, records: list[dict[str, Any]], written: int) -> None:
        files.write_classes_json(self, written)

    def class_table(self) -> dict[str, Any]:
        """The exported segmenter's class indices 0..K-1 with their names, and the ignored label."""
        classes = [{"index": index, "name": name} for index, name in enumerate(self.label_space.class_names)]
        return {"task": "semantic_segmentation", "classes": classes, "ignore_index": self.ignore_index}

    def export_inputs(
        self, image_size: tuple[int, int] | None, sample_rgb: np.ndarray | None, file_name: str | None
    ) -> ExportInputs:
        """``image_size`` must be given (images vary in size); a sample image is resized to it."""
        if image_size is None:
            raise ValueError("a segmenter needs --image_size H W (multiples of its size divisibility)")
        size = tuple(image_size)
        if sample_rgb is None:
            return ExportInputs(size, None, None)
        image = torch.from_numpy(sample_rgb.copy()).permute(2, 0, 1)
        sample = F.interpolate(image[None].float(), size=size, mode="bilinear")
        return ExportInputs(size, sample[0].round().clamp(0, 255).to(torch.uint8), None)

    def export_wrapper(self, image_size: tuple[int, int]) -> nn.Module:
        """The segmenter's own :class:`~vitdense.export.SegmenterForExport`."""
        return self.model.export_wrapper(image_size)
