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
    # 10 px text on a thumbnail; about a 45th of the short side on a photo (torchvision's font stays 10 px).
    assert _caption_height(side) >= max(10, side // 45)


def test_a_caption_stays_inside_the_image():
    image = torch.zeros(3, 60, 200, dtype=torch.uint8)
    box = torch.tensor([[150.0, 50.0, 200.0, 60.0]])  # at the bottom right corner
    drawn = draw_detections(image, box, torch.tensor([1]), torch.tensor([0.9]), ["a_rather_long_name"])
    drawn_columns = drawn.amax(dim=(0, 1)).nonzero()
    assert int(drawn_columns.min()) < 150  # moved left so that the whole caption shows
