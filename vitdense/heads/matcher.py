"""torchvision's box matcher without host synchronisation."""

import torch
from torch import Tensor

from vitdense.compat.torchvision import Matcher


class SyncFreeMatcher(Matcher):
    """`torchvision.models.detection._utils.Matcher` with the same results and no device-to-host copies.

    torchvision's matcher finds the low-quality matches with `torch.where(condition)`, a host synchronisation
    per call on a GPU (one per image and step in the RPN): the host stops queueing work until the device has
    caught up. Here the same matches are chosen with element-wise `torch.where`, so matching stays queued
    behind the backbone.

    Args as `Matcher`: `high_threshold`, `low_threshold`, `allow_low_quality_matches`.
    """

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Per prediction (column), the index of its ground truth (row), or -1 (below) / -2 (between)."""
        if match_quality_matrix.numel() == 0:
            # Shapes only: no synchronisation. Same messages as torchvision.
            if match_quality_matrix.shape[0] == 0:
                raise ValueError("No ground-truth boxes available for one of the images during training")
            raise ValueError("No proposal boxes available for one of the images during training")

        matched_vals, all_matches = match_quality_matrix.max(dim=0)
        below = torch.full_like(all_matches, self.BELOW_LOW_THRESHOLD)
        between = torch.full_like(all_matches, self.BETWEEN_THRESHOLDS)
        matches = torch.where(matched_vals < self.low_threshold, below, all_matches)
        between_thresholds = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches = torch.where(between_thresholds, between, matches)
        if self.allow_low_quality_matches:
            # A prediction that is some ground truth's best match (ties included) keeps its best ground truth.
            highest_per_gt = match_quality_matrix.max(dim=1).values
            is_best_for_some_gt = (match_quality_matrix == highest_per_gt[:, None]).any(dim=0)
            matches = torch.where(is_best_for_some_gt, all_matches, matches)
        return matches
