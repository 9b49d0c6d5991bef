"""Lightning's CLI over the kit's tasks and datamodules: ``vitdense fit|validate|test|predict --config``."""

import contextlib
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from lightning import Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from vitdense.backbones import skip_weights_loading
from vitdense.checkpoint_trust import check_checkpoint_classes, class_paths, read_checkpoint
from vitdense.compat.lightning import LightningCLIWithSubcommandHook, rich_progress_bar_arguments
from vitdense.datamodules import BadDataError
from vitdense.tasks.base import check_checkpoint_task, strict_json
from vitdense.tasks.callbacks import (
    StepProgressBar,
    ThroughputLogger,
    ValidateFinalStep,
    ValidationImageLogger,
    resumable_checkpoints,
)
from vitdense.tasks.checkpoint_io import SafeCheckpointIO
from vitdense.tasks.gradient_norm import GradientNormLogger
from vitdense.tasks.prediction_writer import PredictionWriter, unreadable_report


class VitDenseCLI(LightningCLIWithSubcommandHook):
    """``fit``, ``validate``, ``test`` and ``predict`` from one flat YAML recipe.

    The datamodule reads its classes from the annotation files, so the model's ``num_classes`` is linked
    from the instantiated datamodule instead of being written twice. Every run also gets, unless its
    recipe configures its own: a CSV logger beside the TensorBoard one, the learning rate and training
    throughput logged, validation images with predictions drawn, the final step validated inside ``fit``
    (:class:`ValidateFinalStep`), the gradient norm before clipping (:class:`GradientNormLogger`), the step
    counted in the progress bar (:class:`StepProgressBar`); ``predict`` writes its outputs with a
    :class:`PredictionWriter` (``--writer.output_dir``, ``--writer.score_threshold``, ``--writer.overlays``,
    ``--writer.overlay_format``).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def add_arguments_to_subcommand_parser(self, parser: LightningArgumentParser, subcommand: str) -> None:
        if subcommand == "predict":
            parser.add_lightning_class_args(PredictionWriter, "writer")
            # The writer saves every batch; keeping all full-resolution masks in memory as well is not needed.
            parser.set_defaults(return_predictions=False)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path``'s checkpoint (:meth:`_check_checkpoint`) before Lightning merges
        its model's init args into the config (:meth:`before_instantiate_classes`)."""
        self._command_line = (
            list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        )
        super().parse_arguments(parser, args)
        self._parsed_config = self.config.clone() if self.config.get("subcommand") else None
        if self._parsed_config is not None:
            self._check_checkpoint()

    def before_instantiate_classes(self) -> None:
        """Put back the model's init args given on the command line.

        Lightning builds the model that ``--ckpt_path``'s checkpoint was trained as (after
        :meth:`parse_arguments`, its saved init args win over the recipe), but that also silently drops a
        test-time ``--model.init_args.per_class_ap=true``, ``sliding_window`` or ``mask_threshold``.
        """
        before = self._parsed_config
        if before is None:
            return
        model = f"{self.config.subcommand}.model.init_args"
        for key in _model_arguments(self._command_line):
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
            # (Filters set while the command runs are undone when it ends: command_output_filters.)
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            tensorboard = loggers[0]
            csv = CSVLogger(tensorboard.save_dir, name=tensorboard.name, version=tensorboard.version)
            trainer.loggers = [tensorboard, csv]
        # GradientNormLogger: train/grad_norm, the norm before clipping, shows whether clipping acts.
        defaults: list[Callback] = [
            ThroughputLogger(),
            ValidationImageLogger(),
            ValidateFinalStep(),
            GradientNormLogger(),
        ]
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
                trainer.callbacks[i] = StepProgressBar(**rich_progress_bar_arguments(callback))

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
        this run's folder differs from the training run's: true, and of no consequence outside fit. (Until
        the command ends: :func:`~vitdense.cli.output_filters.command_output_filters`.)"""
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
