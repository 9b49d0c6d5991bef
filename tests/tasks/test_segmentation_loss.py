import torch
from torch.nn import functional as F

from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid
from vitdense.heads import PyramidSegmenter
from vitdense.tasks.segmentation import labelled_cross_entropy


def _segmenter(num_classes: int) -> PyramidSegmenter:
    vit = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG)
    backbone = SimpleFeaturePyramid(vit, out_channels=32, scale_factors=(4.0, 2.0, 1.0), top_block=False)
    return PyramidSegmenter(num_classes, backbone, in_features=("p2", "p3", "p4"), channels=32)


def test_a_batch_without_labelled_pixels_has_a_zero_loss_with_zero_gradients():
    """A crop of unlabelled area only: PyTorch's mean over no pixel is NaN, which would skip the step (and
    count it as non-finite); the loss is zero instead, and backward reaches every parameter, as DDP needs."""
    torch.manual_seed(0)
    model = _segmenter(3).train()
    images = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    ignored = torch.full((2, 56, 56), 255, dtype=torch.int64)
    labels = ignored.clone()
    labels[:, :10, :10] = 1

    def gradients(labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = labelled_cross_entropy(model(images)["out"], labels, ignore_index=255)
        loss.backward()
        return loss, {name: param.grad for name, param in model.named_parameters() if param.grad is not None}

    loss, grads = gradients(ignored)
    assert loss.item() == 0.0
    _, labelled_grads = gradients(labels)
    assert grads.keys() == labelled_grads.keys() and len(grads) > 10  # the same parameters as a real loss
    assert not any(grad.any() for grad in grads.values())

    logits = model(images)["out"]
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    assert torch.equal(labelled_cross_entropy(logits, labels, ignore_index=255), expected)  # bit for bit
