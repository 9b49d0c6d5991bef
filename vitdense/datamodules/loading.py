"""DataLoaders and split datasets shared by the kit's DataModules, and evaluation sampling under DDP."""

import logging
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vitdense.compat.lightning import training_position
from vitdense.datamodules import data_check
from vitdense.datamodules.bad_data import BadDataError, CheckedDataset, OnBadData, Policy
from vitdense.datamodules.predict_images import PredictImages
from vitdense.datamodules.resumable import ResumableSampler, ResumedDataLoader, SeededSamples
from vitdense.datamodules.worker_processes import fork_safe_opencv

logger = logging.getLogger(__name__)

# The splits each Trainer stage reads (None: all of them).
STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    None: ("train", "val", "test"),
}


class PaddingIndex(int):
    """The index an evaluation process without a sample of its own loads: :class:`PaddedSamples` turns it
    into a dropped sample (None), so that the process still runs one empty step."""


class EvaluationSampler(DistributedSampler):
    """One process's share of an evaluation dataset: samples ``rank``, ``rank + W``, ... in order, so that
    the processes together load every sample once.

    Lightning's default evaluation sampler pads the last batches by repeating samples so that every process
    runs the same number of steps; a repeated image would then be counted twice in a confusion matrix. Here
    processes may run one batch fewer instead, which is safe in evaluation (no gradient, so DDP syncs no
    buffers). A process left without any sample (fewer samples than processes) loads one
    :class:`PaddingIndex`: Lightning skips the whole evaluation of a process without batches, which would then
    never join the others in gathering the results at the end, and they would wait for it forever.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.num_samples = max(len(self.indices), 1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices or [PaddingIndex(0)])

    def __len__(self) -> int:
        return self.num_samples


class PaddedSamples(Dataset):
    """``dataset``, except that a :class:`PaddingIndex` loads None: a dropped sample, which the collate
    functions leave out (a batch of them only is None, which the tasks' steps pass over).

    Other attributes are the dataset's own (e.g. its ``files``, its ``coco``), for callbacks that read
    them from the DataLoader.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return None if isinstance(index, PaddingIndex) else self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def distributed_evaluation(dataset: Dataset) -> tuple[Dataset, Sampler | None]:
    """The dataset to load and the sampler of one process's share of an evaluation (validation, test or
    prediction) under DDP: an :class:`EvaluationSampler`, which Lightning keeps as it is a
    ``DistributedSampler``; ``(dataset, None)`` in a single process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return dataset, None
    sampler = EvaluationSampler(dataset, dist.get_world_size(), dist.get_rank())
    return (dataset if sampler.indices else PaddedSamples(dataset)), sampler


def check_size_multiple(name: str, value: int, size_divisibility: int) -> None:
    """Raise unless ``value`` (an image or crop side) is a positive multiple of ``size_divisibility``.

    Raises:
        ValueError: naming the argument and the nearest multiples to use.
    """
    if size_divisibility <= 0 or value <= 0:
        raise ValueError(f"{name}={value}, size_divisibility={size_divisibility}: both must be > 0")
    if value % size_divisibility:
        lower = value // size_divisibility * size_divisibility
        nearest = f"{lower} or {lower + size_divisibility}" if lower else f"{size_divisibility}"
        raise ValueError(
            f"{name}={value} is not a multiple of size_divisibility={size_divisibility} (the model's "
            f"patch or coarsest stride, so that every feature map has an integer size); use {nearest}"
        )


def check_loading_arguments(
    batch_size: int, eval_batch_size: int | None, num_workers: int, on_bad_data: str
) -> None:
    """Raise on a batch size below 1, a negative ``num_workers`` or an unknown ``on_bad_data``."""
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1) or num_workers < 0:
        raise ValueError(
            f"batch_size={batch_size}, eval_batch_size={eval_batch_size} must be >= 1 and "
            f"num_workers={num_workers} >= 0"
        )
    if on_bad_data not in ("error", "skip"):
        raise ValueError(f"on_bad_data={on_bad_data!r}; use 'error' or 'skip'")


class SplitDataModule(L.LightningDataModule):
    """The train / val / test datasets of a DataModule, its four DataLoaders and the data check.

    Subclasses set ``batch_size``, ``eval_batch_size``, ``num_workers``, ``collate_fn``, ``on_bad_data``,
    ``check_data``, ``predict_images`` and ``predict_apply_exif``, and implement :meth:`split_source`,
    :meth:`split_dataset` and :meth:`evaluation_transform`.

    With ``check_data`` on, ``setup`` first reads every record of the splits its stage uses
    (:func:`~vitdense.datamodules.data_check.check_data`): under ``on_bad_data="error"`` any bad record
    raises one :class:`BadDataError` holding the whole report; under ``"skip"`` the report is logged and
    the bad records are dropped before the first step. Either way (and without the check) a split left
    without samples raises.
    """

    train_dataset: Dataset | None = None
    val_dataset: Dataset | None = None
    test_dataset: Dataset | None = None
    predict_dataset: Dataset | None = None
    batch_size: int
    eval_batch_size: int
    num_workers: int
    collate_fn: Callable[[list[Any]], Any]
    on_bad_data: OnBadData = "error"
    check_data: bool = False
    predict_images: str | None = None
    predict_apply_exif: bool = True
    _resume_train_at: tuple[int, int, bool] | None = None  # epoch, batches done, saved by an older version

    def split_source(self, split: str) -> tuple[str, ...]:
        """The files of ``split`` (``"train"``, ``"val"`` or ``"test"``), e.g. images and annotations."""
        raise NotImplementedError

    def split_dataset(self, split: str, on_bad_data: Policy) -> CheckedDataset:
        """A new dataset of ``split`` under ``on_bad_data``."""
        raise NotImplementedError

    def evaluation_transform(self) -> Callable[..., Any]:
        """The transform of the validation, test and predict images."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (``fit``, ``validate``, ``test``, ``predict`` or None: all).

        The test split reuses the validation dataset when it has the same files.
        """
        self._setup_splits(stage)
        if stage in ("predict", None) and self.predict_dataset is None and self.predict_images is not None:
            self.predict_dataset = PredictImages(
                self.predict_images, self.evaluation_transform(), self.predict_apply_exif
            )
        if stage == "predict" and self.predict_images is None:
            raise ValueError("predict needs predict_images (an image file, a folder or a glob)")

    def checked_splits(self, stage: str | None = None) -> list[str]:
        """The splits ``stage`` reads, each set of files once: test is val when it has val's files."""
        splits = []
        for split in STAGE_SPLITS.get(stage, ()):
            if split == "test" and self.split_source("test") == self.split_source("val"):
                split = "val"
            if split not in splits:
                splits.append(split)
        return splits

    def _setup_splits(self, stage: str | None) -> None:
        """Fill the datasets of ``stage``'s splits (checked first when ``check_data`` is on)."""
        splits = [s for s in self.checked_splits(stage) if getattr(self, f"{s}_dataset") is None]
        if splits and self.check_data:
            datasets = self._checked_datasets(splits)
        else:
            datasets = {split: self.split_dataset(split, self.on_bad_data) for split in splits}
        for split, dataset in datasets.items():
            data_check.require_samples(split, dataset)
            setattr(self, f"{split}_dataset", dataset)
        if "test" in STAGE_SPLITS.get(stage, ()) and self.test_dataset is None:
            self.test_dataset = self.val_dataset  # the test files are the validation files

    def _checked_datasets(self, splits: list[str]) -> dict[str, CheckedDataset]:
        report = data_check.check_data(self, splits)
        empty = [s.split for s in report.splits if s.samples == 0]
        if empty or (report.errors and self.on_bad_data == "error"):
            if empty:
                why = f"split(s) {', '.join(empty)} have no usable sample; fix the data"
            else:
                why = (
                    f"{report.errors} bad record(s) under on_bad_data='error'; fix them or pass "
                    "on_bad_data='skip' to drop them"
                )
            raise BadDataError(f"The data check found {why}.\n{report.format()}")
        if report.findings:
            logger.warning("%s", report.format(skip_hint=self.on_bad_data != "skip"))
        else:
            logger.info("data check: %s read, no problem found", ", ".join(splits))
        datasets = {}
        for split in report.splits:
            split.dataset.on_bad_data = self.on_bad_data
            datasets[split.split] = split.dataset
        return datasets

    def _loader(
        self,
        dataset: Dataset,
        sampler: Sampler | None,
        batch_size: int,
        loader: type[DataLoader] = DataLoader,
    ) -> DataLoader:
        fork_safe_opencv(self.num_workers)
        return loader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            # Pinned memory only helps host-to-GPU copies; on CPU-only machines it just warns.
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Its own generator for the workers' seeds: loading data never draws from torch's global one,
            # whose stream the model's own random draws (proposal sampling) then keep, resumed or not.
            generator=torch.Generator().manual_seed(torch.initial_seed() % 2**32),
        )

    def _evaluation_loader(self, dataset: Dataset | None, stage: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) before asking for its DataLoader")
        return self._loader(*distributed_evaluation(dataset), batch_size=self.eval_batch_size)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a :class:`ResumableSampler` (seeded by torch's seed, split over the processes), with
        every sample augmented from its own seed: a run resumed mid-epoch sees the batches it would have."""
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before asking for its DataLoader")
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(
            self.train_dataset,
            replicas,
            rank,
            seed=torch.initial_seed() % 2**32,
            epoch_of=(lambda: trainer.current_epoch) if trainer is not None else None,
        )
        if self._resume_train_at is not None:
            epoch, batches, older = self._resume_train_at
            if older and batches * self.batch_size >= len(sampler):  # an epoch's end, as they saved it
                epoch, batches = epoch + 1, 0
            sampler.resume(epoch, batches * self.batch_size)
            self._resume_train_at = None
        return self._loader(SeededSamples(self.train_dataset), sampler, self.batch_size, ResumedDataLoader)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.val_dataset, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.predict_dataset, "predict")

    def state_dict(self) -> dict[str, Any]:
        """Where training is in its epoch, saved in checkpoints so that a resumed run starts there.

        Also from checkpoints saved while ``fit`` validates (``ModelCheckpoint``'s best, mid-epoch with
        ``val_check_interval``), not only from those saved between training steps.
        """
        trainer = self.trainer
        # Interrupted: saved on an exception (ModelCheckpoint's save_on_exception), which resumes at the batch
        # that failed.
        in_fit = trainer is not None and trainer.state.fn == "fit"
        if not in_fit or trainer.state.status not in ("running", "interrupted") or trainer.sanity_checking:
            return {}
        started, completed, processed = training_position(trainer)
        if started == completed:  # between epochs (e.g. at training's end): the next one
            epoch, done = completed, 0
        else:  # in epoch started - 1 (current_epoch lags behind it from its last batch to its end)
            epoch, done = started - 1, processed
            if done >= trainer.num_training_batches:  # saved on the epoch's last batch: the next one
                epoch, done = epoch + 1, 0
        return {
            "train_epoch": epoch,
            "train_batches_done": done,
            "train_batch_size": self.batch_size,
            "train_processes": trainer.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        trainer = self.trainer
        if "train_epoch" not in state_dict or (trainer is not None and trainer.state.fn != "fit"):
            return  # e.g. validate --ckpt_path: a later fit of this datamodule starts afresh
        epoch, done = int(state_dict["train_epoch"]), int(state_dict["train_batches_done"])
        saved = (state_dict.get("train_processes"), state_dict.get("train_batch_size"))
        self._resume_train_at = (epoch, done, None in saved)
        now = (trainer.world_size if trainer is not None else 1, self.batch_size)
        if done and None not in saved and saved != now:
            logger.warning(
                "The checkpoint was saved %d batches into epoch %d by %d process(es) of batch %d; resumed by "
                "%d of batch %d, epoch %d goes on after the first %d batches of each process's new share of "
                "it: some of its samples are seen twice or not at all. The epochs after it are as planned.",
                done,
                epoch,
                *saved,
                *now,
                epoch,
                done,
            )
