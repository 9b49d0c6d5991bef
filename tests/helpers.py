"""Checks and test data that several test files share (fixtures live in the conftest.py files)."""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning import LightningDataModule, LightningModule
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from vitdense.cli import VitDenseCLI
from vitdense.heads import Segmenter, whole_inference

CPU_FAST_DEV_RUN = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.fast_dev_run=1",
]
"""CLI flags of one fast_dev_run step on one CPU process, whatever the recipe's trainer section says."""


def assert_detections_within_their_images(
    detections: list[dict[str, Tensor]],
    sizes: list[tuple[int, int]],
    num_classes: int,
    mask_size: int | None = None,
) -> None:
    """Each image's detections: float32 boxes ``[x1, y1, x2, y2]`` clipped to its valid (h, w), not to the
    padded canvas; int64 labels in ``1..num_classes``; one score each; and, given ``mask_size``, one
    (1, mask_size, mask_size) mask each."""
    for det, (h, w) in zip(detections, sizes, strict=True):
        n = det["boxes"].shape[0]
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape == (n, 4)
        assert det["labels"].dtype == torch.int64 and det["labels"].shape == (n,)
        assert det["scores"].shape == (n,)
        if mask_size is not None:
            assert det["masks"].shape == (n, 1, mask_size, mask_size)
        if n:
            assert det["labels"].min() >= 1 and det["labels"].max() <= num_classes
            assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h


def built_cli(args: list[str]) -> VitDenseCLI:
    """The CLI's model, datamodule and trainer for ``args``, without running a subcommand."""
    return VitDenseCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        args=args,
    )


def segmenter_from_recipe(recipe: str, num_classes: int) -> tuple[Segmenter, str]:
    """The ``model`` of a YAML recipe, filled in as a task's ``Callable[[int], Segmenter]`` argument and
    called with ``num_classes``, and the parsed recipe as a saved config (LightningCLI's config.yaml)
    writes it.
    """
    parser = ArgumentParser()
    parser.add_argument("--model", type=Callable[[int], Segmenter])
    config = parser.parse_object(yaml.safe_load(recipe))
    return parser.instantiate(config).model(num_classes), parser.dump(config)


def accuracy_after_overfitting_one_image(build: Callable[[], Segmenter], steps: int = 40) -> float:
    """Pixel accuracy of a 3-class segmenter with an auxiliary head on the one 112 x 112 image of three
    coloured regions it was trained on for ``steps`` AdamW steps (lr 2e-3, loss ``out + 0.4 aux``).

    Args:
        build: makes the segmenter, after the image is drawn from the seeded generator.
        steps: training steps.
    """
    torch.manual_seed(0)
    labels = torch.zeros(1, 112, 112, dtype=torch.int64)
    labels[:, :, 56:] = 1
    labels[:, 70:, 20:90] = 2
    colours = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9]])
    images = (colours[labels].permute(0, 3, 1, 2) + 0.05 * torch.randn(1, 3, 112, 112)).clamp(0, 1)
    model = build().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        outputs = model(images)
        loss = F.cross_entropy(outputs["out"], labels) + 0.4 * F.cross_entropy(outputs["aux"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    (logits,) = whole_inference(model, images, [(112, 112)], [(112, 112)])
    return (logits.argmax(0) == labels[0]).float().mean().item()


MakeCoco = Callable[..., tuple[Path, Path]]
"""The ``make_coco`` fixture of tests/datamodules: writes images and a COCO file, returns both paths."""


def first_worker_error(loader: DataLoader) -> str:
    """The message of the error that iterating ``loader`` raises (re-raised from its worker process)."""
    iterator = iter(loader)
    with pytest.raises(Exception) as info:  # noqa: PT011 - DataLoader re-raises in the main process
        list(iterator)
    message = str(info.value)
    # Shut the worker down now: the traceback would keep it alive until a later garbage collection,
    # which then waits 5 s for it.
    iterator._shutdown_workers()
    del info, iterator
    return message


class Payload:
    """Unpickled, it creates the file ``marker``: what a hostile checkpoint or weights file would run if it
    were loaded with pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def coco_ann(
    annotation_id: int, bbox: list[Any] | None = None, *, image_id: int = 1, **fields: Any
) -> dict[str, Any]:
    """A COCO annotation of category 1 whose segmentation is the polygon of its box.

    Args:
        annotation_id: its ``id``.
        bbox: ``[x, y, w, h]`` in pixels, ``[2, 2, 8, 6]`` if None; one with a coordinate that is no number
            (a bad record) gets an empty segmentation.
        image_id: its ``image_id``.
        fields: fields to add or to replace (``category_id``, ``segmentation``, ``iscrowd``, ``area``...).
    """
    x, y, w, h = bbox if bbox is not None else [2, 2, 8, 6]
    polygon = (
        [[x, y, x + w, y, x + w, y + h, x, y + h]] if bbox is None or isinstance(x, (int, float)) else []
    )
    annotation = {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }
    return annotation | {"segmentation": polygon} | fields


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
