"""The ``vitdense`` command: Lightning's CLI over the kit's tasks and datamodules."""

import argparse
import contextlib
import importlib
import json
import linecache
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from torch.utils.data import DataLoader

from vitdense.argument_parser import CommandArgumentParser, VitDenseArgumentParser
from vitdense.atomic_write import OutputWriteError, check_writable_folder, write_atomically
from vitdense.backbones import skip_weights_loading
from vitdense.checkpoint_trust import check_checkpoint_classes, class_paths, read_checkpoint
from vitdense.datamodules import (
    BadDataError,
    PredictImages,
    as_rgb_array,
    check_data,
    distributed_evaluation,
)
from vitdense.inference import Predictor, load_checkpoint
from vitdense.tasks.base import check_checkpoint_task, strict_json
from vitdense.tasks.callbacks import (
    StepProgressBar,
    ThroughputLogger,
    ValidateFinalStep,
    ValidationImageLogger,
    resumable_checkpoints,
)
from vitdense.tasks.checkpoint_io import SafeCheckpointIO
from vitdense.tasks.prediction_writer import PredictionWriter, unreadable_report

# Lightning 2.6 builds torch's LeafSpec, deprecated since torch 2.12, to flatten each predicted batch: the
# warning is Lightning's to fix and says nothing to a user of the command.
warnings.filterwarnings(
    "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
)


class _WithoutLoggingAdvert(logging.Filter):
    """Drops the tip to install Lightning's cloud logger that the trainer logs on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud logging")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_WithoutLoggingAdvert())


class VitDenseCLI(LightningCLI):
    """``fit``, ``validate``, ``test`` and ``predict`` from one flat YAML recipe.

    The datamodule reads its classes from the annotation files, so the model's ``num_classes`` is linked
    from the instantiated datamodule instead of being written twice. Every run also gets, unless its
    recipe configures its own: a CSV logger beside the TensorBoard one, the learning rate and training
    throughput logged, validation images with predictions drawn, the final step validated inside ``fit``
    (:class:`ValidateFinalStep`), the step counted in the progress bar (:class:`StepProgressBar`);
    ``predict`` writes its outputs with a :class:`PredictionWriter` (``--writer.output_dir``,
    ``--writer.score_threshold``).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_lightning_class_args(PredictionWriter, "writer")
            # The writer saves every batch; keeping all full-resolution masks in memory as well is not needed.
            parser.set_defaults(return_predictions=False)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._command_line = (
            list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        )
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """The model's init args from ``--ckpt_path``'s checkpoint, except those given on the command line.

        Lightning builds the model that the checkpoint was trained as (its saved init args win over the
        recipe), but that also silently drops a test-time ``--model.init_args.per_class_ap=true``,
        ``sliding_window`` or ``mask_threshold``: those are put back. The checkpoint's classes are checked
        first (:meth:`_check_checkpoint`).
        """
        before = self.config.clone() if self.config.get("subcommand") else None
        if before is not None:
            self._check_checkpoint()
        super()._parse_ckpt_path()
        if before is None:
            return
        model = f"{self.config.subcommand}.model.init_args"
        for key in _model_arguments(getattr(self, "_command_line", [])):
            with contextlib.suppress(KeyError):  # a key the checkpoint's model does not have stays as parsed
                self.config[f"{model}.{key}"] = before[f"{model}.{key}"]

    def _check_checkpoint(self) -> None:
        """Refuse a ``--ckpt_path`` file that needs more than weights-only loading, whose config names a class
        outside the kit's trusted modules, or that is of another task than this run's model, before Lightning
        merges its config into this run's: jsonargparse would import and build every class it names, and
        build the checkpoint's task whatever the recipe says.

        The classes this run's own config names (the recipe and the options given) are trusted as well: the
        user runs them anyway, and a run evaluated with its own ``config.yaml`` needs no further option. The
        files behind ``last`` and a missing file are left to the trainer, whose :class:`SafeCheckpointIO`
        reads weights-only and says what is missing; they are not merged into the config.
        """
        config = self.config[self.config.subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not (Path(ckpt_path).exists() or Path(ckpt_path).is_symlink()):
            return
        checkpoint = read_checkpoint(ckpt_path, mmap=True)
        allow = "name {0} in this run's config (the recipe given with --config, or an option)"
        check_checkpoint_classes(checkpoint, ckpt_path, class_paths(config.as_dict()), allow=allow)
        task = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
        model = config.get("model")
        module_name, _, class_name = str(model.get("class_path") if model else "").rpartition(".")
        ours = getattr(sys.modules.get(module_name), class_name, None)  # imported by jsonargparse to parse it
        if isinstance(task, str) and isinstance(ours, type):
            check_checkpoint_task(task, ours, f"checkpoint {ckpt_path}")

    def _restores_checkpoint(self) -> bool:
        """Whether the run's weights come from a checkpoint, so the backbone need not load its own."""
        ckpt_path = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
        if ckpt_path is None:
            return False
        if self.subcommand == "fit" and ckpt_path == "last":
            # Resumes when a last checkpoint exists; the first run of a script that always passes it starts
            # from the initial weights, but only where no checkpoint is found at all.
            return bool(self._last_checkpoints())
        return self.subcommand != "fit" or Path(ckpt_path).is_file()

    def _last_checkpoints(self) -> list[Path]:
        """The ``last*.ckpt`` files ``--ckpt_path last`` can find before the trainer exists: in the folders
        of the checkpoint callbacks that name one, and in ``<default_root_dir>/checkpoints``, where
        :class:`~vitdense.tasks.LatestCheckpoint` keeps it by default.

        Raises:
            MissingCheckpointError: a folder's ``last.ckpt`` leads nowhere, or it holds step checkpoints
                without one (:func:`~vitdense.tasks.callbacks.resumable_checkpoints`).
        """
        trainer = self.config[self.subcommand].trainer
        folders = {Path(trainer.get("default_root_dir") or ".") / "checkpoints"}
        callbacks = trainer.get("callbacks") or []
        for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
            init_args = callback.get("init_args") if hasattr(callback, "get") else None
            if init_args is not None and init_args.get("dirpath"):
                folders.add(Path(init_args.dirpath))
        return [path for folder in sorted(folders) for path in resumable_checkpoints(folder)]

    def instantiate_classes(self) -> None:
        with skip_weights_loading() if self._restores_checkpoint() else nullcontext():
            try:
                super().instantiate_classes()
            except ValueError as error:
                # jsonargparse reports a model or datamodule whose constructor failed (a missing annotation
                # file, a weights file that does not fit) as a Union type mismatch, followed by the whole
                # config; the constructor's own error names the file and the fix.
                if str(error).startswith("Does not validate against any") and error.__cause__ is not None:
                    raise error.__cause__ from None
                raise
        self._add_default_loggers_and_callbacks()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, with a :class:`SafeCheckpointIO` (atomic saves, weights-only loads) unless the
        config names a checkpoint IO plugin of its own."""
        config = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {})
        plugins = kwargs.pop("plugins", config.get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(SafeCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def _add_default_loggers_and_callbacks(self) -> None:
        trainer = self.trainer
        loggers = trainer.loggers
        if len(loggers) == 1 and isinstance(loggers[0], TensorBoardLogger):
            # The same folder as TensorBoard's events: metrics.csv beside the reports and checkpoints.
            # CSVLogger warns about a non-empty folder (TensorBoard's) but only replaces its own metrics.csv.
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            tensorboard = loggers[0]
            csv = CSVLogger(tensorboard.save_dir, name=tensorboard.name, version=tensorboard.version)
            trainer.loggers = [tensorboard, csv]
        defaults: list[Callback] = [ThroughputLogger(), ValidationImageLogger(), ValidateFinalStep()]
        if trainer.loggers:
            defaults.append(LearningRateMonitor(logging_interval="step"))
        present = {type(callback) for callback in trainer.callbacks}
        missing = [callback for callback in defaults if type(callback) not in present]
        # Before the checkpoint callbacks, which must see everything logged at the same hook.
        position = next(
            (i for i, callback in enumerate(trainer.callbacks) if isinstance(callback, ModelCheckpoint)),
            len(trainer.callbacks),
        )
        trainer.callbacks[position:position] = missing
        for i, callback in enumerate(trainer.callbacks):
            if type(callback) is RichProgressBar:  # Lightning's default; a bar of another kind is left alone
                trainer.callbacks[i] = StepProgressBar(
                    refresh_rate=callback.refresh_rate,
                    leave=getattr(callback, "_leave", False),
                    theme=callback.theme,
                    console_kwargs=getattr(callback, "_console_kwargs", None),
                )

    def _print_final_metrics(self) -> None:
        """End the output with the folder of the reports and one JSON line of the last evaluation's metrics,
        after the progress bar."""
        metrics = getattr(self.model, "final_metrics", None)
        folder = self.trainer.log_dir or self.trainer.default_root_dir  # broadcast: every process asks
        if metrics and self.trainer.is_global_zero:
            print(f"Metrics, per-class scores and results files: {folder}", flush=True)
            print(strict_json(metrics), flush=True)

    def _quiet_restored_checkpoint_callbacks(self) -> None:
        """Evaluating or predicting from a checkpoint restores its ModelCheckpoint states, which warn that
        this run's folder differs from the training run's: true, and of no consequence outside fit."""
        warnings.filterwarnings("ignore", message="The dirpath has changed from")

    before_validate = before_test = before_predict = _quiet_restored_checkpoint_callbacks

    def after_fit(self) -> None:
        """Score the final weights when the last validation of ``fit`` came before the last step, so that
        every run ends with the metrics and results files of the weights it leaves.

        :class:`ValidateFinalStep` (a default callback) has ``fit`` validate its last step itself; this covers
        a run whose callbacks leave it out. Checkpoint callbacks do not see this validation."""
        metrics = getattr(self.model, "final_metrics", None)
        trainer = self.trainer
        if metrics and metrics.get("step") != trainer.global_step and not trainer.interrupted:
            trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        self._print_final_metrics()

    after_validate = after_test = _print_final_metrics

    def after_predict(self) -> None:
        """Fail (exit status 1, after every readable image's outputs are written) when some images could not
        be read or files found with them were passed over, naming each with why."""
        for callback in self.trainer.callbacks:
            missed = isinstance(callback, PredictionWriter) and (callback.unreadable or callback.passed_over)
            if missed and self.trainer.is_global_zero:
                report = unreadable_report(callback.unreadable, len(callback.images), callback.passed_over)
                raise BadDataError(report)


def _model_arguments(command_line: list[str]) -> list[str]:
    """Dotted keys below ``model.init_args`` given as ``--model.init_args.<key>[=value]`` options."""
    keys = []
    for argument in command_line:
        name = argument.split("=", 1)[0]
        if name.startswith("--model.init_args."):
            keys.append(name.removeprefix("--model.init_args."))
    return keys


class DataCheckCLI(VitDenseCLI):
    """Parses a recipe and its overrides as ``fit`` does, but builds only the datamodule: no model, no
    trainer (a GPU recipe checks its data on a laptop)."""

    def instantiate_classes(self) -> None:
        # Built directly rather than through jsonargparse, which would fold a BadDataError raised while
        # reading the training annotations into a type-mismatch message.
        config = self.config["data"]
        module_name, _, class_name = config.class_path.rpartition(".")
        datamodule_class = getattr(importlib.import_module(module_name), class_name)
        self.datamodule = datamodule_class(**config.init_args.as_dict())


def check_data_command(args: list[str]) -> int:
    """``vitdense check-data --config <recipe> [overrides]``: read every record of every split, report.

    Returns the exit status: 0 when no record is bad, 1 otherwise (notes alone do not fail).
    """
    with warnings.catch_warnings():
        # The arguments are sys.argv's minus "check-data"; Lightning would warn that they differ.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            cli = DataCheckCLI(
                LightningModule,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                parser_class=VitDenseArgumentParser,
                parser_kwargs={"prog": "vitdense check-data"},
                run=False,
                save_config_callback=None,
                args=args,
            )
        except BadDataError as error:  # the training annotation file is read when the datamodule is built
            print(f"The data check could not start: {error}", file=sys.stderr)
            return 1
    report = check_data(cli.datamodule)
    print(report.format(skip_hint=cli.datamodule.on_bad_data != "skip"), flush=True)
    return 1 if report.errors else 0


# Options of Lightning's CLI: ``vitdense predict`` with any of them runs a recipe, without them a checkpoint.
_RECIPE_OPTIONS = ("-c", "--config", "--model", "--data", "--trainer", "--writer", "--print_config", "--seed")


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
        "--overlays", action=argparse.BooleanOptionalAction, default=True, help="write overlay PNGs"
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
    _add_trust_class_option(parser)
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
        writer = PredictionWriter(options.output_dir, options.score_threshold, options.overlays)
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
        print(f"vitdense predict: {_error_message(error)}", file=sys.stderr)
        return 1
    if (writer.unreadable or dataset.passed_over) and trainer.is_global_zero:  # the others end normally
        report = unreadable_report(writer.unreadable, len(dataset), dataset.passed_over)
        print(f"vitdense predict: {report}", file=sys.stderr)
        return 1
    return 0


def _add_trust_class_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust_class",
        action="append",
        default=[],
        metavar="MODULE.CLASS",
        help=(
            "a class outside vitdense's trusted modules (vitdense., torch.optim., torch.nn.) that the "
            "checkpoint's config may name, e.g. your own backbone; repeat for several. Only for checkpoints "
            "you trust: building a class can run any code"
        ),
    )


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
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
        )


def _error_message(error: BaseException) -> str:
    """The message of ``error``, without the worker's traceback PyTorch puts into errors from DataLoader
    workers."""
    message = str(error)
    if "Original Traceback" in message:
        message = message.rstrip().rsplit(f"{type(error).__name__}: ", 1)[-1]
    return message


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
# A frame of the worker's traceback that PyTorch writes into the message of an error from a DataLoader worker.
_WORKER_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in .*\n    (?P<code>.*)$', re.MULTILINE)


def _is_user_error(error: BaseException) -> bool:
    """Whether vitdense raised ``error`` itself, with a message that names the problem and the fix (bad
    data, a bad path, option or config value), so that a traceback would only bury the message.

    That is a :class:`BadDataError` or a ``FileNotFoundError`` (e.g. Lightning's for a ``--ckpt_path``), or an
    error whose innermost frame (in a DataLoader worker: the worker's) is a ``raise`` statement in vitdense's
    own code. An error raised anywhere else (a bug, in vitdense's code or another package's)
    keeps its traceback.
    """
    if isinstance(error, (BadDataError, FileNotFoundError)):
        return True
    worker_frames = list(_WORKER_FRAME.finditer(str(error)))
    if "Original Traceback" in str(error) and worker_frames:  # raised in a DataLoader worker
        file, raising_line = worker_frames[-1]["file"], worker_frames[-1]["code"]
    else:
        traceback = error.__traceback__
        while traceback is not None and traceback.tb_next is not None:
            traceback = traceback.tb_next
        if traceback is None:
            return False
        file = traceback.tb_frame.f_code.co_filename
        raising_line = linecache.getline(file, traceback.tb_lineno)
    return os.path.realpath(file).startswith(_PACKAGE_DIR) and raising_line.lstrip().startswith("raise ")


def run() -> None:
    """The ``vitdense`` console script: :func:`main`, with a user's mistake reported in one line (exit status
    1) instead of a traceback; ``VITDENSE_TRACEBACK=1`` shows the traceback."""
    try:
        main()
    except Exception as error:  # only user errors are caught, the rest is raised again
        if os.environ.get("VITDENSE_TRACEBACK") or not _is_user_error(error):
            raise
        command = f"vitdense {sys.argv[1]}" if len(sys.argv) > 1 else "vitdense"
        print(f"{command}: {_error_message(error)}", file=sys.stderr)
        print("(VITDENSE_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        raise SystemExit(1) from None


def export_command(args: list[str]) -> int:
    """``vitdense export --ckpt_path <ckpt> [--output F.pt2] [--sample IMAGE] [--image_size H W] [--onnx]``.

    Writes the checkpoint's detector or segmenter with ``torch.export`` at a fixed input size, loads it back
    and checks its outputs against eager PyTorch on the sample image; a difference beyond the stated
    tolerances fails with exit status 1. Returns the exit status.
    """
    parser = CommandArgumentParser(
        prog="vitdense export",
        description=(
            "Write a checkpoint's detector or segmenter with torch.export at a fixed input size, load it "
            "back and check its outputs against eager PyTorch on a sample image."
        ),
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `vitdense fit`")
    parser.add_argument(
        "--output",
        default=None,
        help="the .pt2 file (default: beside the checkpoint, or the one a last.ckpt link points at)",
    )
    parser.add_argument(
        "--sample", default=None, help="an image to check on (default: synthetic colour blobs)"
    )
    parser.add_argument(
        "--image_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size (default for detection: the evaluation canvas; required for segmentation)",
    )
    parser.add_argument("--onnx", action="store_true", help="also write and check an .onnx file")
    _add_trust_class_option(parser)
    options = parser.parse_args(args)
    if options.output is not None and Path(options.output).suffix != ".pt2":
        parser.error(f"--output is a .pt2 file (torch.export's package format): got {options.output}")
    # Imported here: vitdense.export registers a tracing rule for torchvision's nms when imported.
    from vitdense.export import ExportCheckError, export_model

    output = Path(options.output) if options.output is not None else _program_path(Path(options.ckpt_path))
    try:
        task = load_checkpoint(options.ckpt_path, trusted_classes=options.trust_class)
        check_writable_folder(output.parent)  # before the minutes of export, not after
        sample_rgb = as_rgb_array(options.sample) if options.sample is not None else None
    except (FileNotFoundError, ValueError, OutputWriteError) as error:  # BadDataError is a ValueError
        parser.error(str(error))
    try:
        image_size, sample, valid_size = task.export_inputs(options.image_size, sample_rgb, options.sample)
    except ValueError as error:
        parser.error(str(error))
    try:
        report = export_model(
            task, image_size, output, sample=sample, valid_size=valid_size, onnx=options.onnx
        )
    except ExportCheckError as error:
        _write_exported_classes(task, output)  # the program stays on disk: so does what its outputs mean
        print(f"The exported model differs from eager PyTorch: {error}", file=sys.stderr)
        return 1
    classes = _write_exported_classes(task, output)
    print(report.summary(), flush=True)
    print(f"{classes}: what the program's outputs mean (class labels, ids and names)", flush=True)
    return 0


def _program_path(checkpoint: Path) -> Path:
    """Where export writes by default: beside the checkpoint, named after it, or for a ``last*.ckpt`` link
    (which moves on with the next save) after the step's checkpoint it points at."""
    if checkpoint.is_symlink() and checkpoint.name.startswith("last"):
        return checkpoint.parent / Path(os.readlink(checkpoint)).with_suffix(".pt2").name
    return checkpoint.with_suffix(".pt2")


def _write_exported_classes(task: LightningModule, program: Path) -> Path:
    """Write :func:`_exported_classes` as ``<name>.classes.json`` beside ``<name>.pt2``; return its path."""
    classes = json.dumps(_exported_classes(task), indent=1)
    return write_atomically(program.with_suffix(".classes.json"), classes)


def _exported_classes(task: LightningModule) -> dict[str, Any]:
    """The class table written beside an exported program: a detector's ``labels`` are 1..K, not the
    dataset's category ids; a segmenter's class indices are 0..K-1."""
    return task.class_table()


_MORE_COMMANDS = (
    "More commands: `vitdense check-data --config <recipe>` reads every record of a recipe's data and "
    "reports the bad ones; `vitdense predict --ckpt_path <ckpt> --images <file|folder|glob>` runs a "
    "checkpoint without its recipe; `vitdense export --ckpt_path <ckpt>` writes its model with "
    "torch.export. Each has its own --help."
)


def main(args: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m vitdense``.

    Lightning's subcommands (``fit``, ``validate``, ``test``, ``predict``) plus ``check-data`` and ``export``;
    ``predict`` without a recipe's options runs a checkpoint alone (:func:`predict_checkpoint_command`).
    """
    command = sys.argv[1:] if args is None else list(args)
    if command[:1] == ["predict"] and not any(arg.startswith(_RECIPE_OPTIONS) for arg in command[1:]):
        raise SystemExit(predict_checkpoint_command(command[1:]))
    if command[:1] == ["check-data"]:
        raise SystemExit(check_data_command(command[1:]))
    if command[:1] == ["export"]:
        raise SystemExit(export_command(command[1:]))
    VitDenseCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=VitDenseArgumentParser,
        parser_kwargs={"epilog": _MORE_COMMANDS},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
