"""torchvision's balanced positive / negative sampler without host synchronisation."""

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from vitdense.compat.torchvision import BalancedPositiveNegativeSampler


class SyncFreeSampler(BalancedPositiveNegativeSampler):
    """Draws the same balanced subsets as torchvision's sampler without reading counts on the host.

    torchvision lists each image's positives and negatives with `torch.where(condition)` and draws
    `randperm(count)`: on a GPU, two host synchronisations per image, twice per step (RPN and RoI heads).
    Here every candidate gets a uniform random key and the `batch_size_per_image` largest keys are taken with
    `topk`, whose size is known on the host; candidates of the other kind carry key -1 and are masked out. The
    subsets have torchvision's sizes (positives: min(#positives, batch x fraction); negatives: min(#negatives,
    batch - positives taken)) and its distribution (uniform without replacement); the random stream differs.

    Args as `BalancedPositiveNegativeSampler`: `batch_size_per_image`, `positive_fraction`.
    """

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, uint8 masks of the sampled positives (label >= 1) and negatives (label 0); -1 is
        never sampled. All images are sampled together, padded with -1 to the longest."""
        if not matched_idxs:
            return [], []
        lengths = [len(labels) for labels in matched_idxs]
        labels = pad_sequence(matched_idxs, batch_first=True, padding_value=-1)
        keys = torch.rand(labels.shape, device=labels.device)
        max_pos = int(self.batch_size_per_image * self.positive_fraction)
        pos_taken, num_pos = self._largest(torch.where(labels >= 1, keys, -1.0), max_pos)
        neg_taken, _ = self._largest(
            torch.where(labels == 0, keys, -1.0), self.batch_size_per_image - num_pos
        )
        return (
            [mask[:length] for mask, length in zip(pos_taken, lengths)],
            [mask[:length] for mask, length in zip(neg_taken, lengths)],
        )

    def _largest(self, keys: Tensor, count: int | Tensor) -> tuple[Tensor, Tensor]:
        """(B, N) uint8 mask of the (at most) `count` largest non-negative keys of each row, and (B, 1) how
        many that is."""
        k = min(self.batch_size_per_image, keys.shape[1])
        values, indices = keys.topk(k, dim=1)
        taken = (values >= 0) & (torch.arange(k, device=keys.device) < count)
        mask = torch.zeros(keys.shape, dtype=torch.uint8, device=keys.device)
        return mask.scatter(1, indices, taken.to(torch.uint8)), taken.sum(dim=1, keepdim=True)
