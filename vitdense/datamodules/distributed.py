"""Evaluation sampling under DDP: every image exactly once."""

import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


def evaluation_sampler(dataset: Dataset) -> Sampler | None:
    """A sampler that splits ``dataset`` over the processes without repeating any sample, or None alone.

    Lightning's default evaluation sampler pads the last batches by repeating samples so that every process
    runs the same number of steps; a repeated image would then be counted twice in a confusion matrix. Here
    processes may run one batch fewer instead, which is safe in evaluation (no gradient, so DDP syncs no
    buffers). Lightning keeps a sampler that is already a ``DistributedSampler``.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None
