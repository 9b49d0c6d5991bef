"""The CLI's checkpoint IO: a checkpoint is whole under its name or not there; loading runs no code."""

import pickle

import fsspec
import lightning
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.full_disk import fill_disk_after
from tests.helpers import Payload
from tests.tasks.test_latest_checkpoint import Linear, checkpointing_trainer
from vitdense.atomic_write import OutputWriteError
from vitdense.checkpoint_trust import UntrustedCheckpointError
from vitdense.tasks.checkpoint_io import SafeCheckpointIO


def test_a_full_disk_leaves_no_truncated_checkpoint_and_the_earlier_one_intact(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    io.save_checkpoint({"step": 4, "state_dict": {"weight": torch.ones(1000)}}, tmp_path / "step4.ckpt")
    fill_disk_after(monkeypatch, 1000)
    for name in ("step6.ckpt", "step4.ckpt"):  # a new file, and one that replaces an earlier file
        with pytest.raises(OutputWriteError, match=f"cannot write {name} into {tmp_path}: its disk is full"):
            io.save_checkpoint({"step": 6, "state_dict": {"weight": torch.zeros(1000)}}, tmp_path / name)
    monkeypatch.undo()
    assert [path.name for path in tmp_path.iterdir()] == ["step4.ckpt"]
    assert io.load_checkpoint(tmp_path / "step4.ckpt")["step"] == 4


def test_a_training_run_on_a_disk_that_fills_keeps_its_last_whole_state(tmp_path, monkeypatch):
    def fit(max_steps: int, ckpt_path: str | None = None) -> lightning.Trainer:
        trainer = checkpointing_trainer(tmp_path, max_steps, plugins=[SafeCheckpointIO()])
        data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=2)
        trainer.fit(Linear(), data, ckpt_path=ckpt_path)
        return trainer

    fit(max_steps=4)
    fill_disk_after(monkeypatch, 500)  # a checkpoint of the linear model takes some 1.5 kB
    with pytest.raises(OutputWriteError, match=f"cannot write step6.ckpt into {tmp_path / 'checkpoints'}"):
        fit(max_steps=8, ckpt_path="last")
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    assert sorted(path.name for path in folder.iterdir()) == ["last.ckpt", "step4.ckpt"]
    assert (folder / "last.ckpt").resolve().name == "step4.ckpt"
    assert fit(max_steps=8, ckpt_path="last").global_step == 8, "the run resumes from the state it kept"


def test_loading_is_weights_only_whatever_the_caller_asks(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "extra": Payload(marker)}, tmp_path / "hostile.ckpt")
    refused = r"hostile.ckpt cannot be loaded weights-only: .*\(io.open\)"
    with pytest.raises(UntrustedCheckpointError, match=refused):
        SafeCheckpointIO().load_checkpoint(tmp_path / "hostile.ckpt", weights_only=False)
    assert not marker.exists()


def test_remote_paths_go_through_lightnings_io(tmp_path):
    io = SafeCheckpointIO()
    io.save_checkpoint({"step": 3}, "memory://runs/step3.ckpt")
    assert io.load_checkpoint("memory://runs/step3.ckpt")["step"] == 3
    torch.save({"extra": Payload(tmp_path / "ran")}, tmp_path / "hostile.ckpt")
    with fsspec.open("memory://runs/hostile.ckpt", "wb") as remote:
        remote.write((tmp_path / "hostile.ckpt").read_bytes())
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint("memory://runs/hostile.ckpt", weights_only=False)
    assert not (tmp_path / "ran").exists()


def test_a_file_without_model_state_is_named_rather_than_failing_inside_lightning(tmp_path):
    torch.save({"state": {"weight": torch.ones(2)}, "signature": {}}, tmp_path / "vit.pt")  # birder's layout
    refused = r"vit.pt is no Lightning checkpoint: it holds no state_dict \(signature, state\); pass a"
    with pytest.raises(ValueError, match=refused):
        SafeCheckpointIO().load_checkpoint(tmp_path / "vit.pt")
