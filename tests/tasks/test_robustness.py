"""A non-finite loss skips its step and is counted; too many in a row stop the run; checkpoints are atomic."""

import logging

import pytest
import torch
from lightning import Trainer
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn
from torch.utils.data import DataLoader

from vitdense.tasks import VitDenseTask


class Regression(VitDenseTask):
    """The smallest task using the kit's loss guard: a linear model, images of NaN where asked."""

    def __init__(self, max_nonfinite_in_a_row: int = 10) -> None:
        super().__init__(
            optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1),
            max_nonfinite_in_a_row=max_nonfinite_in_a_row,
        )
        self.model = nn.Linear(4, 1)
        self.seen_weights: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        self.seen_weights.append(self.model.weight.detach().clone())
        loss = nn.functional.mse_loss(self.model(inputs), torch.zeros(len(inputs), 1))
        return self.finite_or_skip(loss, {"loss_mse": loss}, targets)


def _batches(nan_steps: set[int], steps: int = 6) -> list:
    batches = []
    for step in range(steps):
        inputs = torch.full((2, 4), float("nan")) if step in nan_steps else torch.ones(2, 4) * (step + 1)
        batches.append((inputs, [{"file_name": f"img{step}_{i}.jpg"} for i in range(2)]))
    return batches


def _fit(task: Regression, batches: list) -> Trainer:
    trainer = Trainer(
        max_steps=len(batches),
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, DataLoader(batches, batch_size=None))
    return trainer


def test_a_non_finite_loss_skips_its_step_and_is_counted(caplog):
    task = Regression()
    with caplog.at_level(logging.WARNING):
        _fit(task, _batches(nan_steps={1, 3}))
    assert task.skipped_steps == 2
    # The step after a skipped one starts from the same weights: nothing was applied.
    torch.testing.assert_close(task.seen_weights[2], task.seen_weights[1])
    torch.testing.assert_close(task.seen_weights[4], task.seen_weights[3])
    assert not torch.equal(task.seen_weights[1], task.seen_weights[0]), "finite steps do update"
    assert torch.isfinite(task.model.weight).all()
    warning = next(r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage())
    assert "loss_mse" in warning and "img1_0.jpg" in warning


def test_too_many_non_finite_losses_in_a_row_stop_the_run():
    task = Regression(max_nonfinite_in_a_row=2)
    _fit(task, _batches(nan_steps={1, 3}))  # never two in a row: runs to the end
    task = Regression(max_nonfinite_in_a_row=2)
    with pytest.raises(FloatingPointError, match="Stopping after 2 in a row: lower the learning rate"):
        _fit(task, _batches(nan_steps={2, 3}))


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    io = TorchCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.ones(1000)}, path)

    def killed_mid_write(self, data):  # the process dies after writing a first chunk
        self.f.write(data[:100])
        raise KeyboardInterrupt

    from fsspec.implementations.local import LocalFileOpener

    monkeypatch.setattr(LocalFileOpener, "write", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no partial file left beside it"
