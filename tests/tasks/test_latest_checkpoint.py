"""LatestCheckpoint saves the step that ends training once, whatever ends it; warns before replacing a run;
resumes from last.ckpt, or afresh only where no checkpoint is."""

import logging
import re

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import QUIET_TRAINER
from vitdense.tasks import LatestCheckpoint
from vitdense.tasks.callbacks import MissingCheckpointError, resumable_checkpoints


class Linear(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StopAt(Callback):
    """Requests a stop from step ``step`` on, as EarlyStopping does when its metric stalls."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class CountingLatest(LatestCheckpoint):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.saved_at: list[int] = []

    def _save_checkpoint(self, trainer, filepath) -> None:
        self.saved_at.append(trainer.global_step)
        super()._save_checkpoint(trainer, filepath)


def checkpointing_trainer(root, max_steps: int, **trainer_args) -> lightning.Trainer:
    """A quiet trainer in ``root`` that keeps its latest state every 2 steps."""
    return lightning.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        callbacks=[LatestCheckpoint(every_n_train_steps=2)],
        **QUIET_TRAINER,
        **trainer_args,
    )


def _fit(tmp_path, callbacks, **trainer_args) -> lightning.Trainer:
    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=2)  # 20 steps per epoch
    trainer = lightning.Trainer(
        default_root_dir=tmp_path, callbacks=callbacks, **QUIET_TRAINER, **trainer_args
    )
    trainer.fit(Linear(), data)
    return trainer


def test_a_stop_requested_before_min_steps_saves_only_where_training_ends(tmp_path):
    latest = CountingLatest(every_n_train_steps=1000)
    trainer = _fit(tmp_path, [latest, StopAt(5)], max_steps=100, min_steps=12)
    assert 12 <= trainer.global_step < 100 and latest.saved_at == [trainer.global_step]


def test_training_that_ends_by_steps_or_epochs_is_saved_once_at_its_last_step(tmp_path):
    by_steps = CountingLatest(every_n_train_steps=10)
    _fit(tmp_path / "steps", [by_steps], max_steps=25)
    assert by_steps.saved_at == [10, 20, 25]
    by_epochs = CountingLatest(every_n_train_steps=1000)
    _fit(tmp_path / "epochs", [by_epochs], max_epochs=2)
    assert by_epochs.saved_at == [40]


def test_a_fresh_run_over_an_earlier_one_says_what_it_replaces_and_a_resumed_one_does_not(tmp_path, caplog):
    _fit(tmp_path, [LatestCheckpoint(every_n_train_steps=1000)], max_steps=3)
    assert not [record for record in caplog.records if "earlier run" in record.message]
    with caplog.at_level(logging.WARNING, logger="vitdense.tasks.callbacks"):
        trainer = _fit(tmp_path, [LatestCheckpoint(every_n_train_steps=1000)], max_steps=5)
    (warning,) = [record.message for record in caplog.records if "earlier run" in record.message]
    assert "(step3.ckpt; last.ckpt -> step3.ckpt)" in warning and "--ckpt_path last" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitdense.tasks.callbacks"):
        data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=2)
        resumed = lightning.Trainer(
            default_root_dir=tmp_path,
            logger=False,
            enable_progress_bar=False,
            max_steps=7,
            callbacks=[LatestCheckpoint(every_n_train_steps=1000)],
        )
        resumed.fit(Linear(), data, ckpt_path="last")
    assert trainer.global_step == 5 and resumed.global_step == 7
    assert not [record for record in caplog.records if "earlier run" in record.message]


def test_resuming_finds_the_last_checkpoint_or_an_empty_folder_and_stops_on_anything_else(tmp_path):
    assert resumable_checkpoints(tmp_path / "never_created") == []
    assert resumable_checkpoints(tmp_path) == [], "a first run of a script that always resumes"
    for step in (4, 12, 8):
        (tmp_path / f"step{step}.ckpt").write_bytes(b"state")
    listed = "holds step4.ckpt, step8.ckpt, step12.ckpt"
    no_link = f"no last.ckpt links to the latest step; {tmp_path} {listed}"
    with pytest.raises(MissingCheckpointError, match=no_link):
        resumable_checkpoints(tmp_path)
    last = tmp_path / "last.ckpt"
    last.symlink_to("step16.ckpt")  # e.g. a copy of the folder that left the newest step behind
    with pytest.raises(MissingCheckpointError) as error:
        resumable_checkpoints(tmp_path)
    assert str(error.value) == (
        f"--ckpt_path last: {last} links to step16.ckpt, which leads to no file (missing, or a link loop); "
        f"{tmp_path} {listed}. Pass --ckpt_path {tmp_path / 'step12.ckpt'} to resume from the latest step, "
        "or another trainer.default_root_dir to start afresh (this run would overwrite them)"
    )
    last.unlink()
    last.symlink_to("last.ckpt")  # a loop
    with pytest.raises(MissingCheckpointError, match="links to last.ckpt, which leads to no file"):
        resumable_checkpoints(tmp_path)
    last.unlink()
    last.mkdir()
    with pytest.raises(MissingCheckpointError, match=f"{last} is a folder, not a checkpoint"):
        resumable_checkpoints(tmp_path)
    last.rmdir()
    last.symlink_to("step12.ckpt")
    assert resumable_checkpoints(tmp_path) == [last]
    for step in (4, 8, 12):
        (tmp_path / f"step{step}.ckpt").unlink()
    nothing_else = re.escape(f"{tmp_path} holds no step*.ckpt either. Pass --ckpt_path <a checkpoint>")
    with pytest.raises(MissingCheckpointError, match=nothing_else):
        resumable_checkpoints(tmp_path)


def test_a_run_told_to_resume_from_a_last_link_that_leads_nowhere_stops_and_keeps_the_steps(tmp_path):
    _fit(tmp_path, [LatestCheckpoint(every_n_train_steps=1000)], max_steps=3)
    folder = tmp_path / "checkpoints"
    (folder / "last.ckpt").unlink()
    (folder / "last.ckpt").symlink_to("step9.ckpt")
    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=2)
    trainer = lightning.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        max_steps=5,
        enable_progress_bar=False,
        callbacks=[LatestCheckpoint(every_n_train_steps=1000)],
    )
    fix = f"holds step3.ckpt. Pass --ckpt_path {folder / 'step3.ckpt'}"
    with pytest.raises(MissingCheckpointError, match=fix):
        trainer.fit(Linear(), data, ckpt_path="last")
    assert trainer.global_step == 0
    assert sorted(path.name for path in folder.iterdir()) == ["last.ckpt", "step3.ckpt"]
