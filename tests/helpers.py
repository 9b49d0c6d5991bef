"""Checks that several test files share (fixtures live in the conftest.py files)."""

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

CPU_FAST_DEV_RUN = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.fast_dev_run=1",
]
"""CLI flags of one fast_dev_run step on one CPU process, whatever the recipe's trainer section says."""

QUIET_TRAINER = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
"""``lightning.Trainer`` arguments of a test run that writes no logs and prints no progress or summary."""


def assert_one_cell_covers_its_pixels(
    resamplers: Mapping[str, Callable[[Tensor], Tensor]], strides: Mapping[str, float], channels: int
) -> None:
    """A response confined to one cell of a 4x4 stride-14 ViT map covers exactly that cell's pixels at every
    pyramid level: each level's resampling is phase-aligned with the image at its declared stride.

    Args:
        resamplers: per level, the map from the ViT grid (B, ``channels``, 4, 4) to that level's grid.
        strides: the pyramid's declared stride of each level (``p2`` ... ``p5``).
        channels: channels of the ViT map.
    """
    vit_map = torch.zeros(1, channels, 4, 4)
    vit_map[..., 2, 1] = 1.0  # ViT cell (2, 1): pixel rows [28, 42), cols [14, 28)
    expected = {"p2": (28, 42, 14, 28), "p3": (28, 42, 14, 28), "p4": (28, 42, 14, 28), "p5": (28, 56, 0, 28)}
    for name, resample in resamplers.items():
        with torch.no_grad():
            response = (resample(vit_map) - resample(torch.zeros_like(vit_map))).abs().sum(1)[0]
        stride = strides[name]
        rows, cols = torch.nonzero(response > 0, as_tuple=True)
        extent = (
            rows.min() * stride,
            (rows.max() + 1) * stride,
            cols.min() * stride,
            (cols.max() + 1) * stride,
        )
        assert tuple(float(v) for v in extent) == expected[name], name
