"""The training sampler resumes mid-epoch; every sample's augmentation follows its own seed."""

import hashlib
import pickle
import warnings

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from tests.helpers import QUIET_TRAINER
from vitdense.datamodules import CocoDetection, ShapesSegmentationDataModule, TrainTransform
from vitdense.datamodules.resumable import ResumableSampler, SeededIndex, SeededSamples


def _epoch(sampler: ResumableSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return [(int(index), index.seed) for index in sampler]


def test_an_epoch_resumed_after_k_samples_yields_the_rest_of_the_same_epoch():
    sampler = ResumableSampler(range(10), seed=3)
    full = _epoch(sampler, 2)
    assert sorted(index for index, _ in full) == list(range(10))
    sampler.resume(epoch=2, consumed=4)
    assert _epoch(sampler, 2) == full[4:]
    assert _epoch(sampler, 2) == full, "the skip applies once"
    sampler.resume(epoch=2, consumed=4)
    assert _epoch(sampler, 1) == full[4:], "the resumed epoch whatever epoch is set before the iteration"
    assert _epoch(sampler, 2) == full
    assert _epoch(sampler, 3) != full, "each epoch has its own order"
    assert len({seed for _, seed in full}) == 10, "each position has its own seed"


def test_processes_share_out_one_epoch_and_resume_their_own_part():
    parts = [ResumableSampler(range(9), num_replicas=2, rank=rank, seed=0) for rank in (0, 1)]
    epochs = [_epoch(part, 0) for part in parts]
    assert sorted(index for index, _ in epochs[0] + epochs[1]) == sorted([*range(9), epochs[0][0][0]])
    assert not {seed for _, seed in epochs[0]} & {seed for _, seed in epochs[1]}
    parts[1].resume(epoch=0, consumed=2)
    assert _epoch(parts[1], 0) == epochs[1][2:]


class RandomSample(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3)

    def sample(self, index: int, seed: int) -> torch.Tensor:
        return torch.rand(3, generator=torch.Generator().manual_seed(seed))  # stands for an augmentation


def test_a_sample_depends_on_its_seed_only_not_on_the_worker_or_the_callers_state():
    indices = [SeededIndex(i, seed=100 + i) for i in range(6)]
    assert pickle.loads(pickle.dumps(indices[2])).seed == 102
    samples = SeededSamples(RandomSample())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    alone = torch.stack([samples[index] for index in indices])
    assert torch.equal(torch.get_rng_state(), before), "the caller's random state is left as it was"
    loader = DataLoader(samples, batch_size=2, sampler=indices, num_workers=1)
    torch.testing.assert_close(torch.cat(list(loader)), alone)
    assert not torch.equal(alone[0], alone[1])


class BatchRecorder(lightning.LightningModule):
    """Records a checksum of every training batch; validation logs a constant for ModelCheckpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[tuple[int, float]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, float(batch[0].float().sum())))
        return self.layer(batch[0].float().mean((2, 3))).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _shapes(tmp_path, num_workers: int = 0, batch_size: int = 2) -> ShapesSegmentationDataModule:
    return ShapesSegmentationDataModule(
        str(tmp_path / "shapes"), num_train=10, num_val=2, crop_size=56, scale=(80, 60),
        batch_size=batch_size, num_workers=num_workers,
    )  # fmt: skip


def _fit(
    tmp_path, ckpt_path=None, num_workers: int = 0, datamodule=None, **trainer_args
) -> tuple[lightning.Trainer, BatchRecorder]:
    """Fit a BatchRecorder on 10 shapes images (5 batches per epoch), seeded as every run of a test is."""
    lightning.seed_everything(1)
    datamodule = datamodule or _shapes(tmp_path, num_workers)
    model = BatchRecorder()
    trainer = lightning.Trainer(
        default_root_dir=tmp_path,
        **QUIET_TRAINER,
        num_sanity_val_steps=0,
        **trainer_args,
    )
    trainer.fit(model, datamodule, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize(
    ("val_check_interval", "saved_at"), [(3, 3), (1.0, 5)], ids=["mid-epoch", "end-of-epoch"]
)
def test_a_run_resumed_from_a_checkpoint_saved_by_validation_sees_the_batches_it_would_have(
    tmp_path, val_check_interval, saved_at, num_workers
):
    """ModelCheckpoint saves while fit validates (the recipes' best checkpoints): the data position must be
    in it, and the epoch after an end-of-epoch one must shuffle as in a run that never stopped."""

    def fit(ckpt_path=None) -> list[tuple[int, float]]:
        saver = ModelCheckpoint(tmp_path / "ckpt", filename="{step}", monitor="val/score", save_top_k=-1)
        schedule = {"max_steps": 2 * saved_at + 2, "val_check_interval": val_check_interval}
        return _fit(tmp_path, ckpt_path, num_workers, limit_val_batches=1, callbacks=[saver], **schedule)[
            1
        ].seen

    straight = fit()
    resumed = fit(tmp_path / "ckpt" / f"step={saved_at}.ckpt")
    assert resumed[0][0] == saved_at
    assert resumed == straight[saved_at:]


def test_a_checkpoint_saved_after_fit_resumes_into_the_next_epoch(tmp_path):
    """After fit, Lightning has counted the next epoch: a position saved then would skip that epoch."""
    no_checkpoints = {"limit_val_batches": 0, "enable_checkpointing": False}
    _, straight = _fit(tmp_path, max_epochs=2, **no_checkpoints)
    trainer, _ = _fit(tmp_path, max_epochs=1, **no_checkpoints)
    trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    _, resumed = _fit(tmp_path, tmp_path / "after_fit.ckpt", max_epochs=2, **no_checkpoints)
    assert resumed.seen == straight.seen[5:] and len(resumed.seen) == 5


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("saved_at", [3, 5, 10], ids=["mid-epoch", "last-batch", "last-batch-of-epoch-2"])
def test_a_run_resumed_from_a_checkpoint_saved_between_steps_sees_the_batches_it_would_have(
    tmp_path, saved_at, num_workers
):
    """Saved every N steps (LatestCheckpoint), also on an epoch's last batch: Lightning then resumes into the
    next epoch, which must be whole and shuffled as in a run that never stopped. With workers, Lightning
    iterates the resumed loader before it counts the finished epoch."""

    def fit(ckpt_path=None) -> list[tuple[int, float]]:
        saver = ModelCheckpoint(
            tmp_path / "ckpt", filename="{step}", every_n_train_steps=saved_at, save_top_k=-1
        )
        return _fit(tmp_path, ckpt_path, num_workers, limit_val_batches=0, callbacks=[saver], max_steps=13)[
            1
        ].seen

    straight = fit()
    resumed = fit(tmp_path / "ckpt" / f"step={saved_at}.ckpt")
    assert resumed == straight[saved_at:]


class SaveAtTrainEnd(lightning.Callback):
    def __init__(self, path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)


def test_a_checkpoint_saved_at_the_end_of_training_resumes_into_the_next_epoch(tmp_path):
    """At on_train_end, current_epoch already counts the finished epoch while its batch count is full."""
    no_checkpoints = {"limit_val_batches": 0, "enable_checkpointing": False}
    _, straight = _fit(tmp_path, max_epochs=2, **no_checkpoints)
    _fit(tmp_path, max_epochs=1, callbacks=[SaveAtTrainEnd(tmp_path / "end.ckpt")], **no_checkpoints)
    _, resumed = _fit(tmp_path, tmp_path / "end.ckpt", max_epochs=2, **no_checkpoints)
    assert resumed.seen == straight.seen[5:] and len(resumed.seen) == 5


def test_an_older_checkpoint_saved_on_an_epochs_last_batch_resumes_into_the_next_epoch(tmp_path):
    """Checkpoints written before the position of an epoch's end was saved as (next epoch, 0) hold
    (epoch, batches per epoch)."""
    saver = ModelCheckpoint(tmp_path / "ckpt", filename="{step}", every_n_train_steps=5, save_top_k=-1)
    _, straight = _fit(tmp_path, limit_val_batches=0, callbacks=[saver], max_steps=8)
    checkpoint = torch.load(tmp_path / "ckpt" / "step=5.ckpt", weights_only=False)
    state = next(value for value in checkpoint.values() if isinstance(value, dict) and "train_epoch" in value)
    assert (state["train_epoch"], state["train_batches_done"]) == (1, 0)
    state.clear()
    state.update({"train_epoch": 0, "train_batches_done": 5})  # as written then
    torch.save(checkpoint, tmp_path / "older.ckpt")
    _, resumed = _fit(tmp_path, tmp_path / "older.ckpt", limit_val_batches=0, max_steps=8)
    assert resumed.seen == straight.seen[5:]


def test_validating_a_checkpoint_leaves_a_later_fit_to_start_afresh(tmp_path):
    saver = ModelCheckpoint(tmp_path / "ckpt", filename="{step}", every_n_train_steps=3, save_top_k=-1)
    _, straight = _fit(tmp_path, limit_val_batches=1, callbacks=[saver], max_steps=4)
    datamodule = _shapes(tmp_path)
    lightning.Trainer(logger=False, enable_progress_bar=False, limit_val_batches=1).validate(
        BatchRecorder(), datamodule, ckpt_path=tmp_path / "ckpt" / "step=3.ckpt"
    )
    _, fresh = _fit(
        tmp_path, datamodule=datamodule, limit_val_batches=0, enable_checkpointing=False, max_steps=4
    )
    assert fresh.seen == straight.seen


def test_resuming_with_another_batch_size_says_what_happens_to_the_epoch(tmp_path, caplog):
    datamodule = _shapes(tmp_path, batch_size=4)
    state = {"train_epoch": 2, "train_batches_done": 3, "train_batch_size": 2, "train_processes": 1}
    with caplog.at_level("WARNING"):
        datamodule.load_state_dict(state)
    assert "by 1 process(es) of batch 2; resumed by 1 of batch 4" in caplog.text
    caplog.clear()
    _shapes(tmp_path).load_state_dict(state)
    assert not caplog.text


class FailingAt(BatchRecorder):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.step:
            raise RuntimeError("out of memory")  # stands for any failure inside a step
        return super().training_step(batch, batch_idx)


@pytest.mark.oldest
def test_a_checkpoint_saved_on_an_exception_resumes_at_the_batch_that_failed(tmp_path):
    _, straight = _fit(tmp_path, limit_val_batches=0, enable_checkpointing=False, max_steps=8)
    saver = ModelCheckpoint(tmp_path / "ckpt", filename="failed", save_on_exception=True, save_top_k=0)
    lightning.seed_everything(1)
    trainer = lightning.Trainer(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[saver], max_steps=8,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.fit(FailingAt(3), _shapes(tmp_path))
    _, resumed = _fit(tmp_path, tmp_path / "ckpt" / "failed.ckpt", limit_val_batches=0, max_steps=8)
    assert resumed.seen == straight.seen[3:]


def test_resuming_with_a_larger_batch_size_goes_on_with_the_next_epochs_as_planned(tmp_path):
    """4 of 5 batches of 2 done; resumed at batch 4, 16 samples would be past the epoch's 10: that only
    means the rest of this epoch is skipped (as warned), not that the position is an older checkpoint's
    epoch end."""
    saver = ModelCheckpoint(tmp_path / "ckpt", filename="{step}", every_n_train_steps=4, save_top_k=-1)
    _fit(tmp_path, limit_val_batches=0, callbacks=[saver], max_steps=4)
    batch_4 = {"limit_val_batches": 0, "enable_checkpointing": False, "max_steps": 10}
    _, straight = _fit(tmp_path, datamodule=_shapes(tmp_path, batch_size=4), **batch_4)  # 3 batches an epoch
    resumed_from = tmp_path / "ckpt" / "step=4.ckpt"
    _, resumed = _fit(tmp_path, resumed_from, datamodule=_shapes(tmp_path, batch_size=4), **batch_4)
    assert [checksum for _, checksum in resumed.seen] == [checksum for _, checksum in straight.seen[3:9]]


def _checksum(sample: tuple[torch.Tensor, dict]) -> str:
    image, target = sample
    digest = hashlib.sha256(image.numpy().tobytes())
    for key in ("boxes", "labels", "masks", "label"):
        if key in target:
            digest.update(target[key].numpy().tobytes())
    return digest.hexdigest()[:16]


def test_augmented_training_samples_are_pinned(shapes, tmp_path):
    """The augmentation of a seeded sample is fixed: a refactor of the seeding or of the transforms must
    leave these checksums (image, boxes, labels, masks / label map) as they are, or the demo's metrics
    move."""
    coco = CocoDetection(
        shapes["train_images"],
        shapes["train_annotations"],
        TrainTransform(224, min_scale=0.5, max_scale=1.5),
        masks=True,
    )
    semseg = _shapes(tmp_path)
    semseg.setup("fit")
    got = {
        name: [_checksum(SeededSamples(dataset)[SeededIndex(i, 1000 + 7 * i)]) for i in range(4)]
        for name, dataset in (("coco", coco), ("semseg", semseg.train_dataset))
    }
    assert got == {
        "coco": ["f7d37720537a816c", "51286162d8385817", "8e4c2593396e2f67", "30815101acefc57f"],
        "semseg": ["7c8ad19fd8e5d07d", "608958f3574dabce", "4a3e15babf07baa2", "91535532fbf1f2e8"],
    }


def test_a_run_resumed_mid_epoch_is_not_warned_of_its_data_and_leaves_the_warning_filters_alone(tmp_path):
    # Lightning warns that a loader without state may not resume mid-epoch; the training loader declares its
    # (empty) state: its position is the DataModule's. No filter is added to silence the warning instead.
    saver = ModelCheckpoint(tmp_path / "ckpt", filename="{step}", every_n_train_steps=3, save_top_k=-1)
    _fit(tmp_path, limit_val_batches=0, callbacks=[saver], max_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        checkpoint = tmp_path / "ckpt" / "step=3.ckpt"
        trainer, recorder = _fit(tmp_path, checkpoint, limit_val_batches=0, max_steps=6)
        assert warnings.filters == filters
    assert not [w for w in caught if "resuming from a checkpoint" in str(w.message)], caught
    assert recorder.seen[0][0] == 3 and trainer.global_step == 6
