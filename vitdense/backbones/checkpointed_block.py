"""A block run under activation checkpointing that keeps the block's parameter names."""

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointedBlock(nn.Module):
    """Runs ``block`` under :func:`torch.utils.checkpoint.checkpoint` while gradients are recorded.

    Put it where the block was (``encoder.block[i] = CheckpointedBlock(encoder.block[i])``). The block's
    sub-modules become this module's, under their own names, so parameter names, state-dict keys and
    checkpoints stay those of the block; the block object itself stays outside the module tree and only runs
    its forward. In training, the forward keeps only its inputs and is run again in the backward pass
    (non-reentrant, random state preserved so that dropout and drop-path draw the same masks): the block's
    activation memory for one more forward. Without gradients (evaluation, ``torch.no_grad``) it runs once,
    exactly as the block.

    Args:
        block: a module whose parameters and buffers all sit in its sub-modules (a transformer block).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        own = [*block.parameters(recurse=False), *block.buffers(recurse=False)]
        if own:
            raise ValueError(
                f"{type(block).__name__} holds parameters or buffers outside its sub-modules; "
                "CheckpointedBlock would drop them from the module tree. Checkpoint its parent or its "
                "sub-modules instead."
            )
        for name, child in block.named_children():
            self.add_module(name, child)
        # Registering the block too would list every parameter twice, under new names.
        object.__setattr__(self, "block", block)

    def train(self, mode: bool = True) -> "CheckpointedBlock":
        """Switch modes, the block's own flag included (its sub-modules are this module's)."""
        super().train(mode)
        self.block.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The block's forward, with the block's arguments and outputs."""
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)
