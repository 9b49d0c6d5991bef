"""Training data order and augmentation that a run resumed mid-epoch reproduces exactly.

The training sampler shuffles with a seed and the epoch (as ``DistributedSampler`` does, whatever the number
of processes), can start an epoch after the samples a checkpoint already consumed, and hands every sample a
seed of its own; :class:`SeededSamples` seeds the augmentation with it. A sample's crop, scale and flip then
depend on (seed, epoch, position) only, not on which worker loads it or on what was loaded before, so a run
killed mid-epoch and resumed from its checkpoint sees the same batches as one that never stopped.
"""

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vitdense.datamodules.bad_data import CheckedDataset

__all__ = ["ResumableSampler", "ResumedDataLoader", "SeededIndex", "SeededSamples"]


class SeededIndex(int):
    """A dataset index that carries the random seed its sample is to be augmented with."""

    seed: int

    def __new__(cls, index: int, seed: int) -> "SeededIndex":
        value = super().__new__(cls, index)
        value.seed = seed
        return value

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers receive indices pickled
        return SeededIndex, (int(self), self.seed)


class ResumableSampler(DistributedSampler):
    """Shuffled training indices for one process out of ``num_replicas``, resumable within an epoch.

    Args:
        dataset: the training dataset.
        num_replicas: number of processes (1 without DDP).
        rank: this process.
        seed: shuffling and augmentation seed (the same on every process).
        drop_last: drop the tail that does not divide evenly among processes (else pad by repeating).
        epoch_of: the training epoch about to be iterated, asked when an iteration starts (the DataModule
            passes its trainer's ``current_epoch``); default: the last :meth:`set_epoch`. Lightning sets the
            epoch from a counter that, resumed from a checkpoint saved by the validation that ends an epoch,
            runs one ahead of ``current_epoch``: the resumed run would shuffle differently.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        epoch_of: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
        self.epoch_of = epoch_of
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, consumed: int) -> None:
        """Make the next iteration be over ``epoch``, starting after its first ``consumed`` indices of this
        process, whatever epoch is set or asked for then: a resumed DataLoader with workers is iterated before
        Lightning has counted an epoch that the checkpoint saw end."""
        self._resume = (epoch, consumed)

    def __iter__(self) -> Iterator[SeededIndex]:
        start = 0
        if self._resume is not None:
            epoch, start = self._resume
            self.set_epoch(epoch)
            self._resume = None
        elif self.epoch_of is not None:
            self.set_epoch(self.epoch_of())
        indices = list(super().__iter__())
        for position in range(start, len(indices)):
            global_position = position * self.num_replicas + self.rank
            seed = hash((self.seed, self.epoch, global_position)) % 2**32
            yield SeededIndex(indices[position], seed)


class SeededSamples(Dataset):
    """``dataset.sample(index, index.seed)`` for a :class:`SeededIndex`: each sample augmented from the seed
    it is handed, whichever process loads it and whatever was loaded before; no global random state is
    read or changed. Plain integer indices give ``dataset[index]``.

    Args:
        dataset: a dataset with ``sample(index, seed)``, such as a
            :class:`~vitdense.datamodules.bad_data.CheckedDataset`.
    """

    def __init__(self, dataset: CheckedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if isinstance(index, SeededIndex):
            return self.dataset.sample(int(index), index.seed)
        return self.dataset[index]


class ResumedDataLoader(DataLoader):
    """The training ``DataLoader``, resumable as Lightning defines it (``state_dict`` / ``load_state_dict``).

    Its position is not its own state: it is the DataModule's (saved in checkpoints beside it, see
    :meth:`~vitdense.datamodules.loading.SplitDataModule.state_dict`) and is in its :class:`ResumableSampler`
    when the DataModule makes it. So the state it hands Lightning is empty, and declaring it tells Lightning
    that a run resumed mid-epoch goes on where it stopped (without it, Lightning warns that it may not).
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore here: the DataModule restored the position before the loader was made."""
