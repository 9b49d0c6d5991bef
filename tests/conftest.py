"""Test-wide settings: no network, no writes outside tmp, deterministic threads."""

import os
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "vitdense-mpl"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
