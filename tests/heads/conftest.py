"""Backbones for the heads tests: a stand-in with the pyramid contract, and the real tiny ViT and pyramid."""

from collections import OrderedDict

import pytest
import torch
from torch import Tensor, nn

from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid

STRIDES = {"p2": 3.5, "p3": 7.0, "p4": 14.0, "p5": 28.0, "p6": 56.0}


class FakePyramidBackbone(nn.Module):
    """Stride-14 conv stem, two 2x deconvs (p3, p2) and two 2x max-pools (p5, p6), like ViTDet's pyramid."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.strides = dict(STRIDES)
        self.size_divisibility = 56
        self.stem = nn.Conv2d(3, out_channels, kernel_size=14, stride=14)
        self.up3 = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2)
        self.up2 = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        p4 = self.stem(images - 0.5)
        p3 = self.up3(p4)
        p2 = self.up2(p3)
        p5 = nn.functional.max_pool2d(p4, 2, 2)
        p6 = nn.functional.max_pool2d(p5, 2, 2)
        return OrderedDict(p2=p2, p3=p3, p4=p4, p5=p5, p6=p6)


@pytest.fixture
def fake_backbone() -> FakePyramidBackbone:
    torch.manual_seed(0)
    return FakePyramidBackbone()


@pytest.fixture(autouse=True)
def one_thread():
    """Run each heads test on one intra-op thread.

    On a shared CPU, threads that wait on each other slowed the 80-step overfit test from 4 s to over
    3 minutes; with one thread it stays at a few seconds whatever else runs.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_vit() -> BirderBackbone:
    """The real birder ViT family at test size: 64 channels, stride 14, random weights."""
    torch.manual_seed(0)
    return BirderBackbone(TINY_NETWORK, config=TINY_CONFIG)


@pytest.fixture
def tiny_pyramid(tiny_vit: BirderBackbone) -> SimpleFeaturePyramid:
    """ViTDet's simple feature pyramid (32 channels, strides 3.5 ... 56) on the tiny ViT."""
    torch.manual_seed(0)
    return SimpleFeaturePyramid(tiny_vit, out_channels=32)
