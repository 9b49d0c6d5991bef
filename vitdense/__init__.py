"""vitdense: dense prediction (detection, instance and semantic segmentation) on birder's plain ViT."""

import os

# albumentations 2.0.8 asks PyPI for a newer release at import time; the kit never reaches the network
# unless the user asks for a hub download.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
