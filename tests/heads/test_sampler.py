import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vitdense.heads.sampler import SyncFreeSampler

aten = torch.ops.aten


def _labels(num_pos: int, num_neg: int, num_ignored: int, generator: torch.Generator) -> torch.Tensor:
    labels = torch.cat(
        [torch.randint(1, 5, (num_pos,), generator=generator), torch.zeros(num_neg), -torch.ones(num_ignored)]
    ).long()
    return labels[torch.randperm(len(labels), generator=generator)]


@pytest.mark.parametrize(
    "num_pos,num_neg,num_ignored",
    [(0, 0, 5), (3, 0, 2), (0, 600, 0), (10, 1000, 50), (200, 1000, 0), (200, 100, 7), (1, 2, 0)],
)
def test_subsets_have_torchvision_sizes_and_come_from_their_kind(num_pos, num_neg, num_ignored):
    generator = torch.Generator().manual_seed(0)
    sampler = SyncFreeSampler(256, 0.25)
    labels = [_labels(num_pos, num_neg, num_ignored, generator), _labels(num_neg, num_pos, 0, generator)]
    positives, negatives = sampler(labels)
    for image_labels, pos, neg in zip(labels, positives, negatives):
        assert pos.dtype == neg.dtype == torch.uint8 and pos.shape == neg.shape == image_labels.shape
        expected_pos = min(int((image_labels >= 1).sum()), 64)
        expected_neg = min(int((image_labels == 0).sum()), 256 - expected_pos)
        assert int(pos.sum()) == expected_pos and int(neg.sum()) == expected_neg
        assert bool((image_labels[pos.bool()] >= 1).all()) and bool((image_labels[neg.bool()] == 0).all())


def test_every_candidate_is_equally_likely():
    torch.manual_seed(0)
    labels = torch.tensor([1] * 10 + [0] * 30 + [-1] * 5)
    sampler = SyncFreeSampler(12, 0.25)  # 3 of 10 positives, 9 of 30 negatives: p = 0.3 for each
    draws = 3000
    counts = torch.zeros(len(labels))
    for _ in range(draws):
        positives, negatives = sampler([labels])
        counts += positives[0] + negatives[0]
    frequency = counts / draws
    assert frequency[:40].min() > 0.26 and frequency[:40].max() < 0.34  # 0.3 +- 4.8 standard errors
    assert frequency[40:].sum() == 0


def test_sampling_never_reads_the_device_from_the_host():
    class HostReads(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (aten.nonzero.default, aten._local_scalar_dense.default, aten.randperm.default):
                self.seen.append(func)
            return func(*args, **(kwargs or {}))

    labels = [torch.randint(-1, 3, (1000,)) for _ in range(2)]
    with HostReads() as reads:
        SyncFreeSampler(256, 0.5)(labels)
    assert reads.seen == []
