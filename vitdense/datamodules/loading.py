"""DataLoaders shared by the kit's DataModules, and evaluation sampling under DDP."""

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler


def evaluation_sampler(dataset: Dataset) -> Sampler | None:
    """A sampler that splits ``dataset`` over the processes without repeating any sample, or None alone.

    Lightning's default evaluation sampler pads the last batches by repeating samples so that every process
    runs the same number of steps; a repeated image would then be counted twice in a confusion matrix. Here
    processes may run one batch fewer instead, which is safe in evaluation (no gradient, so DDP syncs no
    buffers). Lightning keeps a sampler that is already a ``DistributedSampler``.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None


class SplitDataModule(L.LightningDataModule):
    """The four DataLoaders of a DataModule whose ``setup`` fills ``train/val/test/predict_dataset``.

    Subclasses set ``batch_size``, ``eval_batch_size``, ``num_workers`` and ``collate_fn``.
    """

    train_dataset: Dataset | None = None
    val_dataset: Dataset | None = None
    test_dataset: Dataset | None = None
    predict_dataset: Dataset | None = None
    batch_size: int
    eval_batch_size: int
    num_workers: int
    collate_fn: Callable[[list[Any]], Any]

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool, stage: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) before asking for its DataLoader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else evaluation_sampler(dataset),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            # Pinned memory only helps host-to-GPU copies; on CPU-only machines it just warns.
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, True, "fit")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.eval_batch_size, False, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.eval_batch_size, False, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, self.eval_batch_size, False, "predict")
