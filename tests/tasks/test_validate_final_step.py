"""ValidateFinalStep: every fit scores its last weights inside fit, whatever its validation schedule."""

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import QUIET_TRAINER
from vitdense.tasks.callbacks import ValidateFinalStep


class Linear(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.validated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(self.global_step))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_at.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(
    ("schedule", "validated_at"),
    [
        ({"max_steps": 6, "max_epochs": -1}, [6]),  # ends before the first validation epoch (5)
        ({"max_steps": 26, "max_epochs": -1}, [25, 26]),  # ends mid-epoch 6, not a validation epoch
        ({"max_epochs": 7}, [25, 35]),  # ends with epoch 7, not a validation epoch
        ({"max_epochs": 10}, [25, 50]),  # ends with a validation epoch: validated once
        # Every 2 batches in every epoch: the 5-batch epoch's last batch is not a validation batch.
        ({"max_epochs": 2, "val_check_interval": 2, "check_val_every_n_epoch": 1}, [2, 4, 7, 9, 10]),
    ],
)
def test_the_last_weights_are_validated_inside_fit_and_seen_by_checkpoints(tmp_path, schedule, validated_at):
    data = DataLoader(TensorDataset(torch.randn(10, 2)), batch_size=2)  # 5 steps per epoch
    best = ModelCheckpoint(monitor="val/score", mode="max", filename="best-step{step}")
    trainer = lightning.Trainer(
        default_root_dir=tmp_path,
        **QUIET_TRAINER,
        num_sanity_val_steps=0,
        callbacks=[ValidateFinalStep(), best],
        **{"check_val_every_n_epoch": 5, **schedule},
    )
    model = Linear()
    trainer.fit(model, data, data)
    assert model.validated_at == validated_at
    assert best.best_model_score == validated_at[-1]
    assert trainer.check_val_every_n_epoch == schedule.get("check_val_every_n_epoch", 5)  # restored
