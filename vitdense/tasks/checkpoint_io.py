"""How the CLI's trainers write and read checkpoints: whole or not at all, and weights-only."""

import os
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vitdense.atomic_write import atomic_file
from vitdense.checkpoint_trust import read_checkpoint

__all__ = ["SafeCheckpointIO"]


Path = str | os.PathLike


def _is_local(path: Path) -> bool:
    """Whether ``path`` is a local file rather than an fsspec URL (``s3://bucket/...``)."""
    return "://" not in str(path)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` / ``torch.load`` checkpoint IO, made safe for local files.

    Saving writes a temporary file in the checkpoint's own folder, syncs it and renames it over the final name
    (:func:`~vitdense.atomic_write.atomic_file`): a full disk or a killed process never leaves a truncated
    ``step{N}.ckpt`` under its name, and a read-only or full folder stops the run with one line naming it.
    (Lightning's own IO writes through an fsspec transaction, which stages local files in the system's
    temporary folder and copies them over.) Loading is weights-only whatever the caller asks, with a one-line
    error for a file that is no checkpoint or needs more (:func:`~vitdense.checkpoint_trust.read_checkpoint`),
    or that holds no model state (a backbone's weights file, say).
    Remote paths (``s3://`` ...) go through Lightning's IO, loaded weights-only too.

    The ``vitdense`` CLI gives it to every trainer whose config names no checkpoint IO plugin of its own;
    in Python, pass ``Trainer(plugins=[SafeCheckpointIO()])``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Path, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local(path):  # Lightning's IO refuses storage options
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_file(path) as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self, path: Path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        checkpoint = read_checkpoint(path, map_location=map_location)
        if "state_dict" not in checkpoint:
            keys = ", ".join(sorted(map(str, checkpoint))[:6])
            raise ValueError(
                f"{path} is no Lightning checkpoint: it holds no state_dict ({keys}); pass a checkpoint "
                "written by `vitdense fit` (a birder weights file goes to the backbone's weights option)"
            )
        return checkpoint
