"""LatestCheckpoint saves the step that ends training once, whatever ends it; warns before replacing a run."""

import logging

import lightning
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from vitdense.tasks import LatestCheckpoint


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


def _fit(tmp_path, callbacks, **trainer_args) -> lightning.Trainer:
    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=2)  # 20 steps per epoch
    trainer = lightning.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **trainer_args,
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
