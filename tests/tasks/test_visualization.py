"""Detection overlays read on a photo as on a thumbnail."""

import pytest
import torch

from vitdense.tasks.visualization import draw_detections


def _caption_height(side: int) -> int:
    """Rows drawn below a box's top edge, above its empty inside, in a column inside the caption."""
    image = torch.zeros(3, side, side, dtype=torch.uint8)
    top = side // 10
    box = torch.tensor([[top, top, side // 2, side // 2]], dtype=torch.float32)
    drawn = draw_detections(image, box, torch.tensor([1]), torch.tensor([0.9]), ["circle"])
    column = drawn[:, :, top + side // 25].amax(dim=0)
    rows = 0
    while column[top + rows] > 0:
        rows += 1
    return rows


@pytest.mark.parametrize("side", [224, 3000])
def test_captions_grow_with_the_image(side):
    # 10 px text on a thumbnail; about a 60th of the long side on a photo (torchvision's font stays 10 px).
    assert _caption_height(side) >= max(10, side // 60)
