"""Evaluation under DDP: every sample once over the processes, and a process without one still runs a step."""

import pytest
from torch.utils.data import DataLoader, Dataset

from vitdense.datamodules import EvaluationSampler, collate_detection
from vitdense.datamodules.loading import PaddedSamples, PaddingIndex


class Numbers(Dataset):
    files = ["a.jpg", "b.jpg"]  # an attribute callbacks read from the DataLoader's dataset

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return int(index)


@pytest.mark.parametrize(("size", "replicas"), [(5, 2), (7, 3), (4, 4), (1, 2), (2, 5)])
def test_the_processes_load_every_sample_once(size, replicas):
    loaded = []
    for rank in range(replicas):
        sampler = EvaluationSampler(Numbers(size), replicas, rank)
        indices = list(sampler)
        assert (
            len(indices) == len(sampler) >= 1
        )  # Lightning skips the evaluation of a process without batches
        loaded += [index for index in indices if not isinstance(index, PaddingIndex)]
    assert sorted(loaded) == list(range(size))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_process_without_a_sample_loads_one_empty_batch(num_workers):
    dataset = PaddedSamples(Numbers(1))
    sampler = EvaluationSampler(dataset.dataset, num_replicas=2, rank=1)
    loader = DataLoader(
        dataset, batch_size=2, sampler=sampler, num_workers=num_workers, collate_fn=collate_detection
    )
    assert list(loader) == [None]  # the tasks' steps pass over a None batch
    assert dataset.files == Numbers.files
