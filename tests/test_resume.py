"""A run killed mid-epoch and resumed with ``--ckpt_path last`` ends with the weights of one never stopped."""

import pytest
import torch
import yaml
from lightning import Callback

from tests.test_predict import RECIPES, _tiny_vit
from vitdense.cli import main


class KilledAt(Callback):
    """Raises when training step ``step`` (0-based) starts, as a crash or a pre-empted node stops a run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def _args(tmp_path, run: str, workers: int, kill_at: int | None = None, save_every: int = 1) -> list[str]:
    backbone = {"init_args": {"out_channels": 32, "vit": _tiny_vit()}}
    detector = {"init_args": {"head_dim": 32, "fc_dim": 64, "backbone": backbone}}
    overrides = tmp_path / "tiny.yaml"
    overrides.write_text(yaml.safe_dump({"model": {"init_args": {"detector": detector}}}))
    latest = {
        "class_path": "vitdense.tasks.LatestCheckpoint",
        "init_args": {"every_n_train_steps": save_every},
    }
    killer = {"class_path": "tests.test_resume.KilledAt", "init_args": {"step": kill_at}}
    callbacks = tmp_path / f"callbacks_{run}_{kill_at}_{save_every}.yaml"
    callbacks.write_text(yaml.safe_dump({"trainer": {"callbacks": [latest] + ([killer] if kill_at else [])}}))
    return [
        "fit",
        "--config",
        str(RECIPES / "demo_shapes_mask_rcnn.yaml"),
        "--config",
        str(overrides),
        "--config",
        str(callbacks),
        f"--data.init_args.root={tmp_path / 'shapes'}",
        "--data.init_args.num_train=8",  # 4 batches of 2 per epoch
        "--data.init_args.num_val=2",
        "--data.init_args.batch_size=2",
        f"--data.init_args.num_workers={workers}",
        "--trainer.max_steps=7",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=2",  # validation at the very end only
        "--trainer.enable_progress_bar=false",
        "--model.init_args.lr_scheduler.init_args.total_steps=7",
        "--model.init_args.lr_scheduler.init_args.warmup_steps=2",
        f"--trainer.default_root_dir={tmp_path / run}",
    ]


def _final_state(tmp_path, run: str) -> dict:
    (last,) = (tmp_path / run).rglob("last.ckpt")
    return torch.load(last, weights_only=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The last checkpoint of the 7 steps that the first two tests kill and resume, run without a stop and
    with the data loaded in the main process."""
    tmp = tmp_path_factory.mktemp("straight")
    main(_args(tmp, "straight", workers=0))
    return _final_state(tmp, "straight")


@pytest.mark.oldest
@pytest.mark.slow(seconds=9)
def test_kill_and_resume_ends_with_the_uninterrupted_weights(tmp_path, straight):
    # Killed as its 4th step starts, in the middle of the first epoch (4 batches); the latest checkpoint holds
    # 3 steps. The killed run
    # loads its data in a worker process, the straight one in the main process: the order and the
    # augmentation of every sample must not depend on it.
    with pytest.raises(RuntimeError, match="killed at step 3"):
        main(_args(tmp_path, "killed", workers=1, kill_at=3))
    killed = _final_state(tmp_path, "killed")
    assert killed["global_step"] == 3 and killed["epoch"] == 0
    # Resumed with a backbone weights file that has moved since: the checkpoint holds every weight.
    vit = {"init_args": {"weights": str(tmp_path / "moved_away.pt")}}
    moved = {"detector": {"init_args": {"backbone": {"init_args": {"vit": vit}}}}}
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump({"model": {"init_args": moved}}))
    main(
        [
            *_args(tmp_path, "killed", workers=1),
            "--config",
            str(tmp_path / "moved.yaml"),
            "--ckpt_path",
            "last",
        ]
    )

    resumed = _final_state(tmp_path, "killed")
    assert resumed["global_step"] == straight["global_step"] == 7
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]
    torch.testing.assert_close(resumed["state_dict"], straight["state_dict"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        resumed["optimizer_states"][0]["state"],
        straight["optimizer_states"][0]["state"],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.slow(seconds=6)
def test_resuming_from_a_save_on_an_epochs_last_batch_trains_the_next_epoch_whole(tmp_path, straight):
    """The periodic save lands on the first epoch's last batch (step 4 of 4 batches per epoch); the run is
    killed two steps later. Resumed, it must train the whole second epoch: with a DataLoader worker it
    skipped it (the demo's every_n_train_steps is one epoch)."""
    with pytest.raises(RuntimeError, match="killed at step 6"):
        main(_args(tmp_path, "killed", workers=1, kill_at=6, save_every=4))
    killed = _final_state(tmp_path, "killed")
    assert killed["global_step"] == 4 and killed["epoch"] == 0
    main([*_args(tmp_path, "killed", workers=1, save_every=4), "--ckpt_path", "last"])

    resumed = _final_state(tmp_path, "killed")
    assert resumed["global_step"] == straight["global_step"] == 7
    assert resumed["epoch"] == straight["epoch"]
    torch.testing.assert_close(resumed["state_dict"], straight["state_dict"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow(seconds=10)
def test_a_finished_run_extended_by_an_epoch_trains_that_epoch_as_an_uninterrupted_run(tmp_path):
    """The checkpoint saved at the end of training (here: of max_epochs=2, between periodic saves) resumes
    into the next epoch, with its data, and the continued run keeps writing last.ckpt (no last-v1.ckpt)."""
    schedule = ["--trainer.max_steps=-1", "--model.init_args.lr_scheduler.init_args.total_steps=12"]
    main([*_args(tmp_path, "straight", workers=0), *schedule, "--trainer.max_epochs=3"])
    extended = _args(tmp_path, "extended", workers=0, save_every=100)
    main([*extended, *schedule, "--trainer.max_epochs=2"])
    assert _final_state(tmp_path, "extended")["global_step"] == 8
    main([*extended, *schedule, "--trainer.max_epochs=3", "--ckpt_path", "last"])

    straight, extended = _final_state(tmp_path, "straight"), _final_state(tmp_path, "extended")
    assert extended["global_step"] == straight["global_step"] == 12
    torch.testing.assert_close(extended["state_dict"], straight["state_dict"], rtol=1e-5, atol=1e-6)
    assert sorted(path.name for path in (tmp_path / "extended" / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step12.ckpt",
    ]
