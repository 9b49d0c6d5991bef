"""Shared fixtures for the datamodule tests: a small shapes set and a hand-made COCO writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import MakeCoco
from vitdense.datamodules import write_shapes_coco


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 train / 6 val shapes images (train indices 1 and 11 are empty, 2 has a crowd region)."""
    return write_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=6, seed=0)


@pytest.fixture
def make_coco(tmp_path: Path) -> MakeCoco:
    """Write images (solid grey, given sizes) and a COCO JSON; returns ``(images_root, annotation_file)``.

    ``images``: list of dicts with ``id``, ``file_name``, ``height``, ``width`` (and ``write=False`` to leave
    the file out). ``categories`` defaults to ids 1 and 2.
    """

    def make(
        images: list[dict[str, Any]],
        annotations: list[dict[str, Any]],
        categories: list[dict[str, Any]] | None = None,
    ) -> tuple[Path, Path]:
        root = tmp_path / "images"
        records = []
        for img in images:
            img = dict(img)
            if img.pop("write", True):
                path = root / img["file_name"]
                path.parent.mkdir(parents=True, exist_ok=True)
                size = (int(img["height"]), int(img["width"]), 3)  # sizes may be written as floats
                Image.fromarray(np.full(size, 128, np.uint8)).save(path)
            records.append(img)
        cats = categories if categories is not None else [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
        ann_file = tmp_path / "annotations.json"
        ann_file.write_text(json.dumps({"images": records, "annotations": annotations, "categories": cats}))
        return root, ann_file

    return make
