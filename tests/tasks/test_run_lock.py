"""One training run at a time in a checkpoint folder: a second one stops before it writes anything."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.tasks.test_latest_checkpoint import Linear, checkpointing_trainer
from vitdense.atomic_write import OutputWriteError
from vitdense.tasks.run_lock import LOCK_NAME, FolderInUseError, RunLock


def _holder(folder) -> subprocess.Popen:
    """Another process that takes the lock on ``folder`` and keeps it until killed."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from vitdense.tasks.run_lock import RunLock
        RunLock({str(folder)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_held_folder_refuses_a_second_lock_naming_the_holder_and_the_fixes(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(FolderInUseError) as error:
        RunLock(tmp_path).acquire()
    message = str(error.value)
    assert message.startswith(f"{tmp_path} is in use by another training run (pid {os.getpid()} on ")
    assert socket.gethostname() in message
    assert "another trainer.default_root_dir" in message and "--ckpt_path last" in message
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    second = RunLock(tmp_path)
    second.acquire()
    second.release()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists(), "a killed run leaves its lock file behind"
    lock = RunLock(tmp_path)
    lock.acquire()
    assert f"pid {os.getpid()} " in (tmp_path / LOCK_NAME).read_text()
    lock.release()


def test_a_second_run_in_a_folder_in_use_stops_before_it_writes(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=2)
    checkpointing_trainer(tmp_path, max_steps=4).fit(Linear(), data)
    folder = tmp_path / "checkpoints"
    before = {path.name: path.read_bytes() for path in folder.glob("*.ckpt")}
    holder = _holder(folder)  # the first run, still training
    try:
        for ckpt_path in (None, "last"):  # a fresh run, and one that would resume
            trainer = checkpointing_trainer(tmp_path, max_steps=8)
            with pytest.raises(FolderInUseError, match=rf"{folder} is in use by another training run"):
                trainer.fit(Linear(), data, ckpt_path=ckpt_path)
            assert trainer.global_step == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert {path.name: path.read_bytes() for path in folder.glob("*.ckpt")} == before
    # Once it has stopped, a run goes on from where it left.
    trainer = checkpointing_trainer(tmp_path, max_steps=8)
    trainer.fit(Linear(), data, ckpt_path="last")
    assert trainer.global_step == 8 and sorted(path.name for path in folder.iterdir()) == [
        "last.ckpt",
        "step8.ckpt",
    ]


def test_a_checkpoint_folder_that_is_a_file_stops_the_run_at_once(tmp_path):
    (tmp_path / "checkpoints").write_text("not a folder")
    trainer = checkpointing_trainer(tmp_path, max_steps=4)
    refused = rf"cannot write into {tmp_path / 'checkpoints'}: .* is a file"
    with pytest.raises(OutputWriteError, match=refused):
        trainer.fit(Linear(), DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=2))
    assert trainer.global_step == 0
