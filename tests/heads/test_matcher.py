import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.detection._utils import Matcher

from vitdense.heads.matcher import SyncFreeMatcher

aten = torch.ops.aten


class _HostReads(TorchDispatchMode):
    """Records the operations that make a CUDA host wait: nonzero, item, boolean-mask indexing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        )
        if boolean_index or func in (aten.nonzero.default, aten._local_scalar_dense.default):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("low_quality", [True, False])
@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5)])
def test_matches_equal_torchvision_including_ties_and_low_quality_matches(low_quality, thresholds):
    generator = torch.Generator().manual_seed(0)
    for trial in range(30):
        num_gt, num_pred = 1 + trial % 7, 5 + 13 * trial
        # Coarse values make ties, within a row (one ground truth's best predictions) and across rows.
        quality = torch.randint(0, 11, (num_gt, num_pred), generator=generator).float() / 10
        expected = Matcher(*thresholds, allow_low_quality_matches=low_quality)(quality.clone())
        actual = SyncFreeMatcher(*thresholds, allow_low_quality_matches=low_quality)(quality.clone())
        assert torch.equal(actual, expected), trial


def test_matching_never_reads_the_device_from_the_host():
    quality = torch.rand(5, 300)
    with _HostReads() as reads:
        SyncFreeMatcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    assert reads.seen == []
    with _HostReads() as reads:
        Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    assert reads.seen  # the check would notice torchvision's synchronisations


def test_empty_inputs_are_refused_as_torchvision_does():
    with pytest.raises(ValueError, match="No ground-truth boxes"):
        SyncFreeMatcher(0.5, 0.5)(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="No proposal boxes"):
        SyncFreeMatcher(0.5, 0.5)(torch.zeros(3, 0))
