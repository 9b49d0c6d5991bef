"""Lightning internals the kit needs, under public names.

Each is checked by ``tests/compat/test_lightning.py`` against the installed Lightning.
"""

from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

__all__ = [
    "CheckpointSaving",
    "attached_trainer",
    "LightningCLIWithSubcommandHook",
    "RichProgressBarWithTrainDescription",
    "can_stop_early",
    "is_last_batch",
    "rich_progress_bar_arguments",
    "training_position",
]


class LightningCLIWithSubcommandHook(LightningCLI):
    """``LightningCLI`` with :meth:`add_arguments_to_subcommand_parser`, a hook per subcommand.

    Lightning's ``add_arguments_to_parser`` runs before a subcommand's method arguments are added and is not
    told the subcommand: options of one subcommand alone (``predict``'s writer) and defaults of its method
    arguments (``predict``'s ``return_predictions``) need the private ``_prepare_subcommand_parser``.
    """

    def add_arguments_to_subcommand_parser(self, parser: LightningArgumentParser, subcommand: str) -> None:
        """Add options to ``subcommand``'s parser, after Lightning's own (its method arguments included)."""

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        self.add_arguments_to_subcommand_parser(parser, subcommand)
        return parser


class RichProgressBarWithTrainDescription(RichProgressBar):
    """``RichProgressBar`` whose training bar's description is :meth:`train_description` (Lightning's private
    ``_get_train_description`` is the only place it is made)."""

    def train_description(self, current_epoch: int) -> str:
        """The text left of the training bar; Lightning's ``Epoch 3/9`` by default."""
        return super()._get_train_description(current_epoch)

    def _get_train_description(self, current_epoch: int) -> str:
        return self.train_description(current_epoch)


def rich_progress_bar_arguments(bar: RichProgressBar) -> dict[str, Any]:
    """The constructor arguments ``bar`` was built with, to build a bar of a subclass like it.

    ``leave`` and ``console_kwargs`` are kept only as private attributes.
    """
    return {
        "refresh_rate": bar.refresh_rate,
        "leave": getattr(bar, "_leave", False),
        "theme": bar.theme,
        "console_kwargs": getattr(bar, "_console_kwargs", None),
    }


class CheckpointSaving(ModelCheckpoint):
    """``ModelCheckpoint`` with the private methods a subclass needs under public names: where
    ``ckpt_path="last"`` looks (:meth:`find_last_checkpoints`) and a save at a step of its choosing
    (:meth:`save_now`)."""

    def find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        """The ``last*.ckpt`` files the trainer's ``ckpt_path="last"`` chooses among (before ``setup``)."""
        return super()._find_last_checkpoints(trainer)

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:  # called by the trainer
        return self.find_last_checkpoints(trainer)

    def save_now(self, trainer: Trainer) -> None:
        """Save this step as ``every_n_train_steps`` would (top-k and ``last``), unless it is saved already or
        the trainer saves nothing now (``fast_dev_run``, outside ``fit``, sanity checking)."""
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def can_stop_early(trainer: Trainer) -> bool:
    """Whether a requested stop (``trainer.should_stop``) ends training now: before ``min_steps`` /
    ``min_epochs`` Lightning trains on. Lightning's own rule, which counts epochs by a progress counter that
    ``trainer.current_epoch`` does not follow inside ``on_train_epoch_end``."""
    return getattr(trainer.fit_loop, "_can_stop_early", True)


def is_last_batch(trainer: Trainer) -> bool:
    """Whether the training batch being run is its epoch's last (also in an epoch resumed mid-way, and for
    a loader of unknown length)."""
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def training_position(trainer: Trainer) -> tuple[int, int, int]:
    """``(epochs started, epochs completed, batches processed in the current epoch)`` of ``fit``.

    ``trainer.current_epoch`` is the epochs completed; from an epoch's last batch to its end it lags behind
    the epoch being run, which only the started count shows.
    """
    epochs = trainer.fit_loop.epoch_progress.current
    return epochs.started, epochs.completed, trainer.fit_loop.epoch_loop.batch_progress.current.processed


def attached_trainer(module: LightningModule) -> Trainer | None:
    """The trainer ``module`` is attached to, or None: Lightning's public ``module.trainer`` raises when there
    is none (a module built or loaded outside ``Trainer``), so it cannot be asked whether there is one."""
    return module._trainer
