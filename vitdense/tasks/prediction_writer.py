"""``vitdense predict``'s files: a COCO-style JSON and overlays (detection), label PNGs (segmentation)."""

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from vitdense.atomic_write import OutputWriteError, atomic_file, check_writable_folder, write_atomically
from vitdense.datamodules.bad_data import BadDataError
from vitdense.datamodules.instance_masks import InstanceMasks, mask_regions
from vitdense.datamodules.loading import PaddingIndex
from vitdense.datamodules.predict_images import as_rgb_array, passed_over_report
from vitdense.tasks.background_writer import OVERLAY_FORMATS, BackgroundWriter, OverlayFormat
from vitdense.tasks.overlay_drawing import RenderedCaptions, detection_overlay, label_map_overlay

logger = logging.getLogger(__name__)

__all__ = ["PeerStoppedError", "PredictionWriter", "detection_record", "output_names", "unreadable_report"]


class PeerStoppedError(RuntimeError):
    """Another process of a multi-process ``predict`` failed (e.g. out of memory) before the
    processes gathered their detections; this one keeps its own in ``predictions.partial.rank<N>.json``."""


def output_names(files: list[str | Path]) -> dict[str, Path]:
    """Each image's output name: its path relative to the images' common folder, with a ``.png`` suffix;
    always below the output folder (no ``..``, whatever the paths hold).

    Images that would share a name (``photo.jpg`` and ``photo.png``; compared case-insensitively, as macOS
    and Windows file systems do) keep their whole file name instead (``photo.jpg.png``, ``photo.png.png``),
    and a name still taken gets a number (``photo.jpg-1.png``). No image's outputs overwrite another's.
    """
    if not files:
        return {}
    # Normalised first: the common folder of 'a/x/../../b/1.jpg' and 'a/y/../../b/2.jpg' is not 'a', below
    # which they would be '../b/1.jpg', outside the output folder.
    absolute = {str(f): os.path.abspath(f) for f in files}
    root = os.path.commonpath([os.path.dirname(path) for path in absolute.values()])
    relative = {file: Path(os.path.relpath(path, root)) for file, path in absolute.items()}
    users = Counter(str(path.with_suffix(".png")).lower() for path in relative.values())
    names, taken = {}, set()
    for file, path in relative.items():
        name = path.with_suffix(".png")
        if users[str(name).lower()] > 1:
            name = path.with_name(f"{path.name}.png")
        unique, number = name, 0
        while str(unique).lower() in taken:
            number += 1
            unique = name.with_name(f"{name.stem}-{number}.png")
        taken.add(str(unique).lower())
        names[file] = unique
    return names


def detection_record(
    prediction: dict[str, Any], names: dict[int, str], masks: InstanceMasks | None = None
) -> dict[str, Any]:
    """One image's detections as JSON: COCO xywh boxes, category ids and names, scores, RLE masks.

    Args:
        prediction: a ``DetectionTask.predict_step`` output (``boxes`` xyxy, ``labels`` category ids,
            ``scores``, optional bool ``masks`` (N, H, W), ``file_name``, ``orig_size``).
        names: category id -> name.
        masks: ``mask_regions(prediction["masks"])`` when the caller has it already.
    """
    height, width = (int(v) for v in prediction["orig_size"])
    detections = []
    if masks is None and "masks" in prediction:
        masks = mask_regions(prediction["masks"])
    rles = masks.to_rles() if masks is not None else None
    for index, (box, category_id, score) in enumerate(
        zip(prediction["boxes"].tolist(), prediction["labels"].tolist(), prediction["scores"].tolist())
    ):
        x1, y1, x2, y2 = box
        detection = {
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
            "category_id": category_id,
            "category_name": names.get(category_id, str(category_id)),
        }
        if rles is not None:
            rle = rles[index]
            detection["segmentation"] = {
                "size": [int(v) for v in rle["size"]],
                "counts": rle["counts"].decode(),
            }
        detections.append(detection)
    return {
        "file_name": prediction.get("file_name"),
        "height": height,
        "width": width,
        "detections": detections,
    }


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict`` returns, batch by batch, under ``output_dir``.

    Detection: ``predictions.json`` (``categories`` and, per image, ``file_name``, ``height``, ``width`` and
    every detection the model returns: ``bbox`` COCO xywh in original pixels, ``score``, ``category_id``,
    ``category_name``, RLE ``segmentation`` for Mask R-CNN), and ``overlays/<image>.jpg`` with the
    detections scoring at least ``score_threshold`` drawn. Segmentation: ``labels/<image>.png`` (class
    indices 0..K-1 at the original resolution; 16-bit when K > 256; named in ``classes.json``) and
    ``overlays/<image>.jpg``. Overlays are ``.png`` with ``overlay_format="png"``. Output names are those of
    :func:`output_names`: no image's files overwrite another's, and all stay inside ``output_dir``. Overlays
    are drawn and saved, the JSON's records built and the label maps saved, on background threads
    (:class:`~vitdense.tasks.background_writer.BackgroundWriter`), all done before ``predict`` ends or
    stops. Every file is written whole or not at all (:mod:`vitdense.atomic_write`), and a folder that
    cannot be written stops the run before it predicts.

    Files that cannot be read have no outputs; after the others are written, :attr:`unreadable` lists them
    (the command then reports them with :func:`unreadable_report` and exits with status 1).

    Args:
        output_dir: where to write; default ``<run log dir>/predictions``.
        score_threshold: lowest score drawn on detection overlays (the JSON keeps every detection).
        overlays: also write overlays.
        overlay_format: ``"jpeg"`` (default: quality 90, lossy) or ``"png"`` (the drawn pixels exactly, at
            zlib's fast level 1). JPEG is the default for speed: a 1 MP overlay takes ~5 ms of CPU to save
            as JPEG and ~65 ms as PNG, more than drawing it (~45 ms; ``benchmarks/predict_writer.md``), in
            files ~3x smaller. The exact outputs are ``predictions.json`` and the label maps, either way.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        score_threshold: float = 0.5,
        overlays: bool = True,
        overlay_format: OverlayFormat = "jpeg",
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold is a detection score, from 0 to 1: got {score_threshold}")
        self.output_dir = output_dir
        self.score_threshold = score_threshold
        self.overlays = overlays
        if overlay_format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay_format is one of {', '.join(OVERLAY_FORMATS)}: got {overlay_format!r}")
        self.overlay_format = overlay_format
        self._background = BackgroundWriter(overlay_format)  # threads started at the first image
        self._captions = RenderedCaptions()  # each caption's text rendered once a run
        self._folder: Path | None = None
        self._names: dict[str, Path] = {}
        self._records: list[Future[dict[str, Any]]] = []  # built on the background threads, in image order
        self._written = 0
        self._apply_exif = True
        self.images: list[str] = []
        self._unreadable: list[str] = []  # this process's
        self.unreadable: list[str] = []
        self.passed_over: list[tuple[str, str]] = []  # files found with the images, not predicted

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        # Trainer.log_dir broadcasts from rank 0: every process asks.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self._folder = Path(self.output_dir) if self.output_dir is not None else log_dir / "predictions"
        self._records, self._written, self._unreadable, self.unreadable = [], 0, [], []
        # A folder that cannot take the outputs stops the run before it predicts, on every process.
        refusal = None
        if trainer.is_global_zero:
            try:
                check_writable_folder(self._folder)
            except OutputWriteError as error:
                refusal = error
        refusal = trainer.strategy.broadcast(refusal, src=0)
        if refusal is not None:
            raise refusal
        earlier = [
            name for name in ("predictions.json", "labels", "overlays") if (self._folder / name).exists()
        ]
        if earlier and trainer.is_global_zero:
            logger.warning(
                "%s holds an earlier run's outputs (%s): predictions.json is replaced, and the label maps "
                "and overlays of the images predicted again; the others stay. Give another output folder for "
                "this run's alone",
                self._folder,
                ", ".join(earlier),
            )

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataloaders = trainer.predict_dataloaders
        dataset = getattr(dataloaders[0] if isinstance(dataloaders, list) else dataloaders, "dataset", None)
        self.images = [str(path) for path in getattr(dataset, "files", None) or []]
        self.passed_over = list(getattr(dataset, "passed_over", None) or [])
        if self._folder is not None:
            folder = self._folder.resolve()
            inside = [name for name in self.images if Path(name).resolve().is_relative_to(folder)]
            if inside:
                raise ValueError(
                    f"{len(inside)} of the images to predict are in the output folder {self._folder} (e.g. "
                    f"{inside[0]}): an earlier run's outputs would be predicted as images; leave that folder "
                    "out of the images, or write elsewhere (--output_dir, --writer.output_dir)"
                )
        self._names = output_names(self.images)
        self._captions = RenderedCaptions()
        self._apply_exif = getattr(dataset, "apply_exif", True)  # overlays drawn on the pixels predicted on

    def _output_path(self, kind: str, file_name: str | None, image_id: int) -> Path:
        if file_name is None:
            relative = Path(f"image_{image_id:06d}.png")
        else:
            relative = self._names.get(str(file_name)) or Path(Path(file_name).name).with_suffix(".png")
        return self._folder / kind / relative

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        # The images this batch loaded without an output could not be read (a process without images of its
        # own loads a padding index, which is none of them).
        done = {str(output["file_name"]) for output in prediction if output.get("file_name") is not None}
        loaded = [index for index in batch_indices or [] if not isinstance(index, PaddingIndex)]
        self._unreadable += [
            self.images[index]
            for index in loaded
            if index < len(self.images) and self.images[index] not in done
        ]
        for output in prediction:
            pl_module.write_prediction(self, output)

    def write_detections(self, pl_module: LightningModule, output: dict[str, Any]) -> None:
        """Keep one image's detections for ``predictions.json`` and write its overlay."""
        names = dict(zip(pl_module.category_ids, pl_module.class_names, strict=True))
        # Each mask's region, found once here (on the device that holds the masks): the JSON's RLEs and the
        # overlay are read from it, on the background threads, while the model predicts the next batch.
        masks = mask_regions(output["masks"]) if "masks" in output else None
        detections = {key: value for key, value in output.items() if key != "masks"}  # the regions say all
        self._records.append(self._background.run(lambda: detection_record(detections, names, masks)))
        if not self.overlays:
            return
        label_of = {category_id: label for label, category_id in enumerate(pl_module.category_ids, start=1)}
        labels = torch.tensor([label_of[int(c)] for c in output["labels"]], dtype=torch.int64)
        file_name, apply_exif, class_names = output["file_name"], self._apply_exif, pl_module.class_names
        captions = self._captions
        self._background.submit(
            lambda: detection_overlay(
                as_rgb_array(file_name, apply_exif),  # the pixels predicted on (EXIF orientation included)
                output["boxes"],
                labels,
                output["scores"],
                class_names,
                masks=masks,
                score_threshold=self.score_threshold,
                captions=captions,
            ),
            self._overlay_path(output),
        )

    def _overlay_path(self, output: dict[str, Any]) -> Path:
        path = self._output_path("overlays", output["file_name"], output.get("image_id", 0))
        return path.with_suffix(self._background.suffix)

    def write_label_map(self, pl_module: LightningModule, output: dict[str, Any]) -> None:
        """Write one image's label map PNG and its overlay, on the background threads."""
        label_map = output["label"]
        dtype = np.uint8 if pl_module.num_classes <= 256 else np.uint16
        path = self._output_path("labels", output.get("file_name"), output.get("image_id", 0))
        self._background.run(lambda: _save_png(label_map.numpy().astype(dtype), path))
        self._written += 1
        if self.overlays and output.get("file_name") is not None:
            file_name, apply_exif, num_classes = output["file_name"], self._apply_exif, pl_module.num_classes
            self._background.submit(
                lambda: label_map_overlay(as_rgb_array(file_name, apply_exif), label_map, num_classes),
                self._overlay_path(output),
            )

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Keep the detections of the images done before a failure (e.g. out of memory) in
        ``predictions.partial.json`` (one file per process under DDP, which cannot gather here); label maps
        and overlays are already written image by image. An earlier run's ``predictions.json`` then goes.

        Under DDP each process saves its own, as far as it gets: Lightning stops all the processes within
        seconds of one failing.
        """
        self._background.close()  # every record built, or failed
        records = [future.result() for future in self._records if future.exception() is None]
        self._records = []
        if records and self._folder is not None:
            suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
            path = self._folder / f"predictions.partial{suffix}.json"
            try:
                self._write_records(pl_module, records, path)
            except OutputWriteError as error:  # e.g. the full disk that stopped the run: its error stays
                logger.warning("Predicting stopped, and its detections could not be kept: %s", error)
                return
            (self._folder / "predictions.json").unlink(missing_ok=True)  # an earlier run's, not this one's
            print(
                f"Predicting stopped: wrote the {len(records)} images' detections done before to {path}",
                flush=True,
            )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._background.close()

    def _write_records(self, pl_module: LightningModule, records: list[dict[str, Any]], path: Path) -> None:
        categories = [
            {"id": category_id, "name": name}
            for category_id, name in zip(pl_module.category_ids, pl_module.class_names, strict=True)
        ]
        records = sorted(records, key=lambda record: str(record["file_name"]))
        write_atomically(path, json.dumps({"categories": categories, "images": records}))

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the gathered detections (or count the label maps) and note in :attr:`unreadable` the files
        that have no outputs (every process knows them; the command reports them)."""
        self._background.drain()  # an overlay or record that failed stops the run here, before the JSON
        records = [future.result() for future in self._records]
        written, unreadable = self._written, self._unreadable
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list[tuple[list[dict[str, Any]], int, list[str]] | None] = [None] * trainer.world_size
            try:
                dist.all_gather_object(gathered, (records, written, unreadable))
            except RuntimeError as error:  # this process's records stay for on_exception to save
                why = str(error).splitlines()[0]
                raise PeerStoppedError(
                    f"gathering the processes' detections failed, most likely because another process "
                    f"stopped (its error is above): {why}"
                ) from error
            records = [record for part, _, _ in gathered for record in part]
            written = sum(count for _, count, _ in gathered)
            unreadable = [name for _, _, names in gathered for name in names]
        self._records, self._written, self._unreadable = [], 0, []
        self.unreadable = sorted(unreadable)
        if trainer.is_global_zero:
            pl_module.finish_predictions(self, records, written)

    def write_classes_json(self, pl_module: LightningModule, written: int) -> None:
        """Write ``classes.json``, the class of each label map value, after ``written`` label maps."""
        classes = [{"index": index, "name": name} for index, name in enumerate(pl_module.class_names)]
        write_atomically(self._folder / "classes.json", json.dumps({"classes": classes}, indent=1))
        print(
            f"Wrote {written} label maps to {self._folder / 'labels'} (their class indices: "
            f"{self._folder / 'classes.json'})",
            flush=True,
        )

    def write_predictions_json(self, pl_module: LightningModule, records: list[dict[str, Any]]) -> None:
        """Write every image's detection ``records`` (all processes', gathered) as ``predictions.json``."""
        path = self._folder / "predictions.json"
        self._write_records(pl_module, records, path)
        for stale in self._folder.glob("predictions.partial*.json"):  # an earlier failed run's
            stale.unlink()
        print(f"Wrote {len(records)} images' detections to {path}", flush=True)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    """Write an (H, W) or (H, W, 3) array as a PNG file, whole or not at all."""
    with atomic_file(path) as file:
        Image.fromarray(pixels).save(file, format="PNG")


def unreadable_report(files: list[str], total: int, passed_over: Sequence[tuple[str, str]] = ()) -> str:
    """The message for ``files`` (of ``total`` images) that have no outputs because they cannot be read:
    each with why (read again here: the DataLoader workers that found them do not say); then the files
    found with the images and ``passed_over`` (``PredictImages.passed_over``)."""
    if not files:
        return passed_over_report(passed_over)
    reasons = []
    for name in files[:10]:
        try:
            as_rgb_array(name)
            reasons.append(f"{name}: could not be read during the run")  # e.g. replaced since
        except BadDataError as error:  # names the file, why, and the fix
            reasons.append(str(error))
    more = f"\n  ... and {len(files) - 10} more" if len(files) > 10 else ""
    listed = "\n  ".join(reasons)
    if len(files) == total:
        report = f"none of the {total} images could be read:\n  {listed}{more}"
    else:
        report = f"{len(files)} of {total} images could not be read and have no outputs:\n  {listed}{more}"
    return "\n".join(part for part in (report, passed_over_report(passed_over)) if part)
