"""Faster / Mask R-CNN training, COCO evaluation and prediction as a LightningModule."""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from vitdense.datamodules.collate import collate_detection
from vitdense.datamodules.predict_images import predict_sample
from vitdense.datamodules.transforms import EvalTransform
from vitdense.heads import RCNNDetector, paste_detections
from vitdense.tasks.base import VitDenseTask
from vitdense.tasks.coco_evaluator import STAT_NAMES, Backend, CocoEvaluator, ap_by_class_name
from vitdense.tasks.label_space import LabelSpace
from vitdense.tasks.task_contract import ExportInputs, PredictionFiles, image_entries
from vitdense.tasks.training_end import training_ends
from vitdense.tasks.visualization import draw_detections, valid_region_at_original

Batch = tuple[torch.Tensor, list[dict[str, Any]]]


class DetectionTask(VitDenseTask):
    """Fine-tunes an :class:`RCNNDetector` and scores it with the official COCO metrics.

    Batches are ``(images, targets)`` from the vitdense COCO datamodules: uint8 (B, 3, H, W) canvases and
    per-image dicts (``boxes`` xyxy canvas pixels, ``labels`` 1..K, ``masks``, ``image_id``, ``scale``,
    ``orig_size``, ``image_size``). Validation and test paste detections back onto the original images and
    score them with pycocotools against the split's annotation file; ``predict_step`` returns them with the
    dataset's own category ids.

    Args:
        num_classes: number of foreground classes (linked from the datamodule by the CLI).
        detector: builds the detector for ``num_classes`` (e.g. :class:`vitdense.heads.MaskRCNN` with its
            backbone as init args).
        optimizer: builds the optimizer from param groups (defaults: AdamW).
        lr_scheduler: builds a per-step scheduler from the optimizer (e.g. ``WarmupMultiStepLR``).
        layer_decay: layer-wise lr decay over the ViT blocks (1.0: off).
        mask_threshold: probability above which a pasted mask pixel is foreground.
        per_class_ap: also print the AP of every class after each evaluation.
        max_nonfinite_in_a_row: a non-finite loss skips its step (warned, counted); this many in a row abort.
        torch_compile: compile the backbone with ``torch.compile`` (static shapes) for speed on a GPU (the
            heads' shapes depend on the data: proposals, NMS); training, evaluation and prediction all run on
            the fixed square canvas (a smaller last batch compiles once more).
        coco_eval_backend: what scores COCO AP: ``"faster_coco_eval"`` (default; pycocotools' numbers to the
            last bit in a fraction of its time and memory) or ``"pycocotools"`` (its own ``COCOeval``).

    Each evaluation writes ``{split}_step{N}_metrics.json`` (with per-class AP) to the run's log directory;
    ``validate`` and ``test`` also write ``{split}_step{N}_{bbox,segm}_results.json``, COCO results files with
    the dataset's category ids (and RLE masks) that pycocotools scores to exactly the printed numbers.
    """

    def __init__(
        self,
        num_classes: int,
        detector: Callable[[int], RCNNDetector],
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float = 1.0,
        mask_threshold: float = 0.5,
        per_class_ap: bool = False,
        max_nonfinite_in_a_row: int = 10,
        torch_compile: bool = False,
        coco_eval_backend: Backend = "faster_coco_eval",
    ) -> None:
        super().__init__(optimizer, lr_scheduler, layer_decay, max_nonfinite_in_a_row, torch_compile)
        self.save_hyperparameters()
        self.save_config("detector", "optimizer", "lr_scheduler")
        self.model = detector(num_classes)
        self.mask_threshold = mask_threshold
        self.per_class_ap = per_class_ap
        iou_types = ("bbox", "segm") if self.model.roi_heads.has_mask() else ("bbox",)
        self.evaluator = CocoEvaluator(iou_types, coco_eval_backend)
        # Category ids and names of labels 1..K, taken from the datamodule and saved in checkpoints so that
        # predictions keep the dataset's own ids.
        ids = range(1, num_classes + 1)
        self.label_space = LabelSpace.of([str(index) for index in ids], ids)
        # The square canvas side of the evaluation transform, from the datamodule; saved in checkpoints so
        # that vitdense.inference prepares images exactly as `vitdense predict` does.
        self.image_size: int | None = None

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if precision in ("bf16-true", "16-true", "bf16", "16"):
            raise ValueError(
                f"trainer.precision={precision!r}: the detection heads need float32 boxes and scores (NMS "
                "and RoI pooling have no bf16/fp16 kernels of their own); use 'bf16-mixed' (or '16-mixed')"
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "category_ids"):
            if len(datamodule.category_ids) != self.hparams.num_classes:
                raise ValueError(
                    f"The datamodule has {len(datamodule.category_ids)} classes but the model was built for "
                    f"{self.hparams.num_classes}: set model.init_args.num_classes to match "
                    "(the CLI links it)."
                )
            self.label_space = LabelSpace.of(datamodule.class_names, datamodule.category_ids)
            self._label_space_from_data = True
        if datamodule is not None and hasattr(datamodule, "image_size"):
            self.image_size = int(datamodule.image_size)
        if (
            stage != "predict"
            and self.model.roi_heads.has_mask()
            and getattr(datamodule, "masks", True) is False
        ):
            raise ValueError(
                f"The detector ({type(self.model).__name__}) has a mask head but the datamodule is built "
                "with masks: false, so there are no masks to train or score it on: set data.init_args.masks: "
                "true (every annotation then needs a 'segmentation'), or for boxes only use the Faster R-CNN "
                "recipe (recipes/coco_faster_rcnn.yaml, detector vitdense.heads.FasterRCNN)"
            )

    def evaluation_metrics(self) -> list[str]:
        """``{bbox,segm}_{AP,AP50,...}``: box AP, and mask AP for a detector with a mask head."""
        return [f"{iou_type}_{stat}" for iou_type in self.evaluator.iou_types for stat in STAT_NAMES]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["image_size"] = self.image_size

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if not self._label_space_from_data:  # else the datamodule's canvas governs, as its categories do
            self.image_size = checkpoint.get("image_size", self.image_size)

    @property
    def category_ids(self) -> list[int]:
        """The dataset's category id of each label 1..K (see :attr:`label_space`)."""
        return list(self.label_space.category_ids)

    @property
    def class_names(self) -> list[str]:
        """The name of each label 1..K (see :attr:`label_space`)."""
        return list(self.label_space.class_names)

    def forward(
        self, images: torch.Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """Detections in the canvas frame; see :meth:`RCNNDetector.forward`."""
        return self.model(images, image_sizes)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        images, targets = batch
        losses = self.model(images, [target["image_size"] for target in targets], targets)
        loss = sum(losses.values())
        batch_size = images.shape[0]
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return self.finite_or_skip(loss, losses, targets)

    def _detect(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        """Detections in the canvas frame, with ``masks`` (N, 1, M, M) probabilities for Mask R-CNN."""
        images, targets = batch
        return self.model(images, [target["image_size"] for target in targets])

    def _paste(self, detection: dict[str, torch.Tensor], target: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One image's detections at its original resolution (see :func:`paste_detections`)."""
        (pasted,) = paste_detections(
            [detection], [target["scale"]], [target["orig_size"]], mask_threshold=self.mask_threshold
        )
        return pasted

    def _evaluation_step(self, batch: Batch | None) -> list[dict[str, torch.Tensor]] | None:
        if batch is None:  # every image of the batch was skipped as bad (see collate_detection)
            return None
        detections = self._detect(batch)
        for target, detection in zip(batch[1], detections, strict=True):
            # One image's full-resolution masks at a time: 100 on a 12 MP photo take 1.2 GB.
            self.evaluator.update(int(target["image_id"]), self._paste(detection, target), self.category_ids)
        return detections

    def validation_step(self, batch: Batch | None, batch_idx: int) -> list[dict[str, torch.Tensor]] | None:
        """Scores the batch; returns its detections in the canvas frame (for image logging)."""
        return self._evaluation_step(batch)

    def test_step(self, batch: Batch | None, batch_idx: int) -> list[dict[str, torch.Tensor]] | None:
        return self._evaluation_step(batch)

    def draw_predictions(
        self, batch: Batch, detections: list[dict[str, torch.Tensor]], score_threshold: float = 0.5
    ) -> list[torch.Tensor]:
        """Each image of ``batch`` at its original size with ``detections`` (from validation_step) drawn."""
        drawn = []
        for image, target, detection in zip(batch[0], batch[1], detections, strict=True):
            pasted = self._paste(detection, target)
            drawn.append(
                draw_detections(
                    valid_region_at_original(image, target["image_size"], target["orig_size"]),
                    pasted["boxes"],
                    pasted["labels"],
                    pasted["scores"],
                    self.class_names,
                    masks=pasted.get("masks"),
                    score_threshold=score_threshold,
                )
            )
        return drawn

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_coco_metrics("val", self.trainer.val_dataloaders)

    def on_test_epoch_end(self) -> None:
        self._log_coco_metrics("test", self.trainer.test_dataloaders)

    def _log_coco_metrics(self, split: str, dataloader: Any) -> None:
        if self.trainer.sanity_checking:
            return
        coco_gt = getattr(dataloader.dataset, "coco", None)
        if coco_gt is None:
            raise TypeError(f"The {split} dataset must expose its pycocotools COCO object as `.coco`")
        metrics = self.evaluator.compute(coco_gt)
        self.log_dict({f"{split}/{name}": value for name, value in metrics.items()}, sync_dist=False)
        self.final_metrics = {"split": split, "step": self.trained_steps, **metrics}
        per_class = {
            iou_type: ap_by_class_name(scores, self.category_ids, self.class_names)
            for iou_type, scores in self.evaluator.per_category_ap.items()
        }
        prefix = f"{split}_step{self.trained_steps}"
        self.write_report(f"{prefix}_metrics.json", {**self.final_metrics, "per_class_AP": per_class})
        if self._last_evaluation_of_run():  # results files of a whole split are large: not every val epoch
            for iou_type in self.evaluator.iou_types:
                # Only process 0 holds every process's results; write_report is called on all (log_dir).
                results = self.evaluator.results_json(iou_type) if self.trainer.is_global_zero else ""
                self.write_report(f"{prefix}_{iou_type}_results.json", results)
        if self.trainer.is_global_zero:
            for iou_type, summary in self.evaluator.summaries.items():
                print(f"COCO {split} {iou_type} (step {self.trained_steps}):\n{summary.rstrip()}", flush=True)
                if self.per_class_ap:
                    width = max(len(name) for name in per_class[iou_type])
                    rows = [f"{name:<{width}}  {100 * ap:6.2f}" for name, ap in per_class[iou_type].items()]
                    print(f"{'class':<{width}}  {iou_type} AP %\n" + "\n".join(rows), flush=True)
        self.evaluator.reset()

    def _last_evaluation_of_run(self) -> bool:
        """Whether this is ``validate``/``test``, or the validation at the end of ``fit``."""
        trainer = self.trainer
        if trainer.state.fn != "fit":
            return True
        return training_ends(trainer, at_epoch_end=True)  # any validation of the last epoch

    def predict_step(self, batch: Batch | None, batch_idx: int) -> list[dict[str, Any]]:
        """Per image: ``boxes`` xyxy in original pixels, ``labels`` (category ids), ``scores``, ``masks``.

        Masks are bool (N, H, W) at the original resolution.
        """
        if batch is None:  # a process with no image of its own under DDP (see EvaluationSampler)
            return []
        outputs = []
        for target, detection in zip(batch[1], self._detect(batch), strict=True):
            detection = self._paste(detection, target)
            lookup = torch.tensor([0, *self.category_ids], device=detection["labels"].device)
            output = {**detection, "labels": lookup[detection["labels"]], **image_entries(target)}
            outputs.append(
                {key: value.cpu() if torch.is_tensor(value) else value for key, value in output.items()}
            )
        return outputs

    def eval_transform(self) -> EvalTransform:
        """Resize into the square evaluation canvas of side :attr:`image_size` (from the datamodule)."""
        if self.image_size is None:
            raise ValueError("the task does not know its input size; set task.image_size (the canvas side)")
        return EvalTransform(self.image_size)

    def eval_collate(self) -> Callable[[list[tuple[torch.Tensor, dict[str, Any]]]], Batch | None]:
        return collate_detection

    def predict_by_sliding_window(self, window: tuple[int, int]) -> None:
        raise ValueError("--sliding_window is for segmenters; a detector predicts on the whole image")

    def named_prediction(self, output: dict[str, Any]) -> dict[str, Any]:
        """``output`` with ``names``, the class name of each detection."""
        names = self.label_space.names_by_id
        return {**output, "names": [names[int(category_id)] for category_id in output["labels"]]}

    def write_prediction(self, files: PredictionFiles, output: dict[str, Any]) -> None:
        files.write_detections(self, output)

    def finish_predictions(self, files: PredictionFiles, records: list[dict[str, Any]], written: int) -> None:
        files.write_predictions_json(self, records)

    def class_table(self) -> dict[str, Any]:
        """The exported detector's ``labels`` 1..K with their dataset category ids and names (not the ids
        themselves, which ``predict`` reports)."""
        labels = [
            {"label": label, "category_id": category_id, "name": name}
            for label, (category_id, name) in enumerate(
                zip(self.label_space.category_ids, self.label_space.class_names), start=1
            )
        ]
        return {"task": "detection", "labels": labels}

    def export_inputs(
        self, image_size: tuple[int, int] | None, sample_rgb: np.ndarray | None, file_name: str | None
    ) -> ExportInputs:
        """The evaluation canvas by default; a sample image is prepared as ``predict`` prepares it, on that
        canvas only."""
        if image_size is None and self.image_size is None:
            raise ValueError("the task does not know its evaluation canvas: give --image_size H W")
        canvas = (self.image_size, self.image_size)
        size = tuple(image_size or canvas)
        if sample_rgb is None:
            return ExportInputs(size, None, None)
        if size != canvas:
            raise ValueError("--sample is prepared on the evaluation canvas; leave --image_size out")
        image, target = predict_sample(sample_rgb, self.eval_transform(), file_name, 0)
        return ExportInputs(size, image, tuple(target["image_size"]))

    def export_wrapper(self, image_size: tuple[int, int]) -> nn.Module:
        """The detector's own :class:`~vitdense.export.DetectorForExport`."""
        return self.model.export_wrapper(image_size)
