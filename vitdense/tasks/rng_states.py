"""The random number streams a resumed run continues: torch (CPU and CUDA), NumPy and Python's."""

import random
from typing import Any

import numpy as np
import torch


def _numpy_state_to_tensors(state: tuple) -> tuple:
    """NumPy's legacy generator state with its key array as a tensor, loadable with ``weights_only``."""
    name, keys, position, has_gauss, cached_gaussian = state
    return name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian


def _numpy_state_from_tensors(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached_gaussian = state
    return name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian


def capture_rng_states() -> dict[str, Any]:
    """This process's generator states, as tensors and plain types (a checkpoint loads them weights-only)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": random.getstate(),
    }


def gather_rng_states(states: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every process's ``states`` (from :func:`capture_rng_states`) in rank order; None without a process
    group. Every process must call it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    per_rank: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(per_rank, states)
    return per_rank


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators to ``states`` (from :func:`capture_rng_states`). The CUDA streams are set only
    where the machine has as many GPUs as the one that saved them."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(_numpy_state_from_tensors(states["numpy"]))
    random.setstate(states["python"])
