"""``vitdense predict --ckpt_path <ckpt> --images <file|folder|glob>``: a checkpoint on images, no recipe."""

import argparse
import sys
from collections.abc import Callable
from typing import Any

from lightning import LightningDataModule, Trainer
from torch.utils.data import DataLoader

from vitdense.argument_parser import CommandArgumentParser
from vitdense.cli.checkpoint_options import add_trust_class_option
from vitdense.cli.errors import error_message
from vitdense.datamodules import BadDataError, PredictImages, distributed_evaluation
from vitdense.datamodules.worker_processes import fork_safe_opencv
from vitdense.inference import Predictor, load_checkpoint
from vitdense.tasks.prediction_writer import PredictionWriter, unreadable_report

# Options of Lightning's CLI: ``vitdense predict`` with any of them runs a recipe, without them a checkpoint.
RECIPE_OPTIONS = ("-c", "--config", "--model", "--data", "--trainer", "--writer", "--print_config", "--seed")


def predict_checkpoint_command(args: list[str]) -> int:
    """``vitdense predict --ckpt_path <ckpt> --images <file|folder|glob> [--output_dir D] ...``.

    Runs a ``vitdense fit`` checkpoint on images with nothing else: no recipe, no annotation file, no
    weights file. The checkpoint holds the model's config, its classes and its input size; the outputs are
    those of ``vitdense predict --config <run>/config.yaml`` (:class:`PredictionWriter`). Returns the exit
    status: 0, or 1 when an image cannot be read.
    """
    parser = CommandArgumentParser(
        prog="vitdense predict",
        description=(
            "Run a checkpoint written by `vitdense fit` on images, with no recipe and no annotation file. "
            "With a recipe instead, `vitdense predict --config <run>/config.yaml --help` lists Lightning's "
            "options."
        ),
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `vitdense fit`")
    parser.add_argument(
        "--images", required=True, help="an image file, a folder or a glob ('photos/**/*.jpg')"
    )
    parser.add_argument("--output_dir", default="predictions", help="where to write (default: predictions)")
    parser.add_argument(
        "--score_threshold", type=float, default=0.5, help="lowest score drawn on overlays (default: 0.5)"
    )
    parser.add_argument(
        "--overlays", action=argparse.BooleanOptionalAction, default=True, help="write overlays"
    )
    parser.add_argument(
        "--overlay_format",
        choices=("png", "jpeg"),
        default="jpeg",
        help="overlays as JPEGs (default), or PNGs: exact, ~10x slower to save, ~3x larger",
    )
    parser.add_argument(
        "--apply_exif",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "turn images as their EXIF orientation says, how viewers show them (default); --no-apply_exif "
            "keeps the stored pixels, the frame of annotations made by a tool that ignored EXIF"
        ),
    )
    parser.add_argument(
        "--sliding_window",
        type=int,
        nargs=2,
        metavar=("CROP", "STRIDE"),
        help=(
            "a segmenter: predict by a sliding window of CROP px moved by STRIDE px (default: as the run "
            "evaluated, its config's sliding_window or the whole image)"
        ),
    )
    add_trust_class_option(parser)
    parser.add_argument("--batch_size", type=int, default=1, help="images per batch (default: 1)")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--accelerator", default="auto", help="Lightning's accelerator (default: auto)")
    parser.add_argument("--devices", default="1", help="Lightning's devices (default: 1)")
    parser.add_argument(
        "--precision", default="32-true", help="Lightning's precision, e.g. bf16-mixed (default: 32-true)"
    )
    options = parser.parse_args(args)
    if options.batch_size < 1 or options.num_workers < 0:
        parser.error(f"--batch_size={options.batch_size} must be >= 1, --num_workers >= 0")
    try:
        writer = PredictionWriter(
            options.output_dir, options.score_threshold, options.overlays, options.overlay_format
        )
        predictor = Predictor(load_checkpoint(options.ckpt_path, trusted_classes=options.trust_class))
        dataset = PredictImages(options.images, predictor.transform, options.apply_exif)
        if options.sliding_window is not None:
            predictor.task.predict_by_sliding_window(tuple(options.sliding_window))
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    images = _ImagesToPredict(dataset, options.batch_size, options.num_workers, predictor.collate)
    devices = int(options.devices) if options.devices.lstrip("-").isdigit() else options.devices
    trainer = Trainer(
        accelerator=options.accelerator,
        devices=devices,
        precision=options.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer],
        default_root_dir=options.output_dir,
    )
    try:
        trainer.predict(predictor.task, datamodule=images, return_predictions=False)
    except BadDataError as error:
        print(f"vitdense predict: {error_message(error)}", file=sys.stderr)
        return 1
    if (writer.unreadable or dataset.passed_over) and trainer.is_global_zero:  # the others end normally
        report = unreadable_report(writer.unreadable, len(dataset), dataset.passed_over)
        print(f"vitdense predict: {report}", file=sys.stderr)
        return 1
    return 0


class _ImagesToPredict(LightningDataModule):
    """The images of ``predict --ckpt_path``, shared among the processes as the kit's datamodules share
    theirs (:func:`~vitdense.datamodules.distributed_evaluation`): each image once, even when there are
    fewer images than processes."""

    def __init__(
        self, dataset: PredictImages, batch_size: int, num_workers: int, collate_fn: Callable[[list], Any]
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.collate_fn = collate_fn

    def predict_dataloader(self) -> DataLoader:
        dataset, sampler = distributed_evaluation(self.dataset)
        fork_safe_opencv(self.num_workers)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
        )
