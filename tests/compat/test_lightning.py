"""The Lightning internals :mod:`vitdense.compat.lightning` uses, checked on a tiny run of the installed
Lightning: each failure names the version and what changed."""

import sys

import lightning
import pytest
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from tests.helpers import QUIET_TRAINER
from vitdense.compat.lightning import (
    CheckpointSaving,
    LightningCLIWithSubcommandHook,
    RichProgressBarWithTrainDescription,
    attached_trainer,
    can_stop_early,
    is_last_batch,
    rich_progress_bar_arguments,
    training_position,
)

pytestmark = pytest.mark.oldest

LIGHTNING = f"lightning {lightning.__version__}"


def test_each_subcommand_parser_passes_the_hook_with_its_method_arguments(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vitdense", "--help"])
    seen = []

    class Recorder(LightningCLIWithSubcommandHook):
        def add_arguments_to_subcommand_parser(self, parser, subcommand):
            seen.append((subcommand, "return_predictions" in parser.get_defaults()))

    with pytest.raises(SystemExit):
        Recorder(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True)
    assert seen == [("fit", False), ("validate", False), ("test", False), ("predict", True)], (
        f"{LIGHTNING}: LightningCLI._prepare_subcommand_parser(klass, subcommand, **kwargs) is no longer "
        "called once per subcommand after its method arguments are added"
    )


class _Probe(Callback):
    """Records what the compat functions read at each training hook."""

    def __init__(self) -> None:
        self.started_at: int | None = None
        self.batches: list[tuple] = []
        self.epoch_ends: list[tuple] = []

    def on_train_start(self, trainer, pl_module):
        self.started_at = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        position = training_position(trainer)
        step = trainer.global_step
        self.batches.append((batch_idx, is_last_batch(trainer), position, step, can_stop_early(trainer)))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_ends.append((training_position(trainer), can_stop_early(trainer)))


class _Bar(RichProgressBarWithTrainDescription):
    def train_description(self, current_epoch):
        self.described = [*getattr(self, "described", []), current_epoch]
        return super().train_description(current_epoch)


class _SavingAtStepTwo(CheckpointSaving):
    def find_last_checkpoints(self, trainer):
        self.looked = True
        return super().find_last_checkpoints(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == 2:
            self.save_now(trainer)
            self.save_now(trainer)  # this step is saved already: skipped


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=callbacks,
        **kwargs,
    )


def test_the_training_loops_counters_and_hooks_read_as_the_kit_expects(tmp_path):
    probe, bar = _Probe(), _Bar()
    saving = _SavingAtStepTwo(
        dirpath=tmp_path / "checkpoints",
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=100,
        save_top_k=1,
        save_last="link",
    )
    trainer = _trainer(tmp_path, [probe, bar, saving], max_epochs=2, min_steps=5)
    trainer.fit(BoringModel())
    expected = [
        (index, index == 2, (epoch + 1, epoch, index + 1), 3 * epoch + index + 1, 3 * epoch + index + 1 >= 5)
        for epoch in (0, 1)
        for index in range(3)
    ]
    assert probe.batches == expected, (
        f"{LIGHTNING}: fit_loop.epoch_loop.batch_progress (is_last_batch, current.processed), "
        "fit_loop.epoch_progress.current (started, completed) or fit_loop._can_stop_early changed"
    )
    # In on_train_epoch_end the epoch is processed, not completed; min_steps=5 is met at the second's end.
    assert probe.epoch_ends == [((1, 0, 3), False), ((2, 1, 3), True)], f"{LIGHTNING}: loop progress changed"
    assert training_position(trainer) == (2, 2, 3), f"{LIGHTNING}: loop progress after fit changed"
    assert bar.described and set(bar.described) <= {0, 1}, (
        f"{LIGHTNING}: RichProgressBar._get_train_description(current_epoch) is no longer called"
    )
    saved = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert saved == ["last.ckpt", "step2.ckpt"], (
        f"{LIGHTNING}: ModelCheckpoint's _should_skip_saving_checkpoint, _monitor_candidates, "
        "_save_topk_checkpoint or _save_last_checkpoint changed"
    )
    resumed = _Probe()
    _trainer(tmp_path, [saving, resumed], max_epochs=3).fit(BoringModel(), ckpt_path="last")
    assert getattr(saving, "looked", False) and resumed.started_at == 2, (
        f"{LIGHTNING}: ckpt_path='last' no longer asks ModelCheckpoint._find_last_checkpoints(trainer)"
    )


def test_a_rich_progress_bars_arguments_are_read_back():
    console_kwargs = {"width": 100}
    bar = RichProgressBar(refresh_rate=3, leave=True, console_kwargs=console_kwargs)
    arguments = rich_progress_bar_arguments(bar)
    expected = {"refresh_rate": 3, "leave": True, "theme": bar.theme, "console_kwargs": console_kwargs}
    assert arguments == expected, (
        f"{LIGHTNING}: RichProgressBar no longer keeps leave and console_kwargs as _leave and _console_kwargs"
    )
    assert rich_progress_bar_arguments(RichProgressBarWithTrainDescription(**arguments)) == arguments


def test_attached_trainer_is_none_outside_a_trainer_and_the_trainer_inside_one(tmp_path):
    module = BoringModel()
    assert attached_trainer(module) is None, f"{LIGHTNING}: LightningModule._trainer is not None before fit"
    trainer = Trainer(
        max_steps=1,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
        **QUIET_TRAINER,
    )
    trainer.fit(module)
    assert attached_trainer(module) is trainer, f"{LIGHTNING}: LightningModule._trainer is not the trainer"
