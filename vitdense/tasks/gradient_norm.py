"""The gradient norm before clipping, logged so that a run shows whether ``gradient_clip_val`` acts."""

import torch
from lightning import Callback, LightningModule, Trainer
from torch.optim import Optimizer

__all__ = ["GradientNormLogger"]


class GradientNormLogger(Callback):
    """Logs ``train/grad_norm``, the total L2 norm of the gradients the optimizer is about to apply, before
    any clipping: the number that ``torch.nn.utils.clip_grad_norm_`` compares with ``gradient_clip_val``.

    Clipping at ``c`` changes a step exactly when this norm exceeds ``c``. The norm is taken over the
    parameters that Lightning's precision plugin clips (``main_params``) and that have a gradient, at
    ``on_before_optimizer_step``, which Lightning runs after the backward pass and, under fp16 mixed
    precision, after the gradient scaler has unscaled the gradients: the value is the true gradient's norm
    under 32-bit, bf16 and fp16 training alike (an fp16 step whose gradients overflowed logs ``inf``; the
    scaler then skips it). It is computed only on the steps whose metrics are written
    (``trainer.log_every_n_steps``), so the other steps pay nothing, and read back to the host only when the
    metrics are written, with the loss.

    Under DDP every process holds the same all-reduced gradients after the backward pass, so rank 0's norm
    is the global one and the others do not compute it. A strategy that shards gradients (FSDP) would need
    the shards' norms reduced; the kit's recipes use DDP.
    """

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        if not trainer.is_global_zero or trainer.log_every_n_steps == 0:
            return
        # global_step counts the steps already taken: this one's metrics are written when Lightning's
        # own count reaches a multiple of log_every_n_steps, after this step.
        if (trainer.global_step + 1) % trainer.log_every_n_steps != 0:
            return
        parameters = trainer.precision_plugin.main_params(optimizer)
        gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
        if not gradients:  # a skipped step (non-finite loss): no backward pass, nothing to clip
            return
        pl_module.log("train/grad_norm", torch.nn.utils.get_total_norm(gradients), rank_zero_only=True)
