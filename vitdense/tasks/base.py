"""What every vitdense task shares: injected optimizer and scheduler, layer-wise lr decay, final metrics."""

import json
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from vitdense.tasks.optim import apply_lr_scale, layer_decay_param_groups


class VitDenseTask(LightningModule):
    """Base of the kit's LightningModules.

    Subclasses build ``self.model`` and set ``self.final_metrics`` after each evaluation; the CLI prints the
    latter as the run's last line.

    Args:
        optimizer: builds the optimizer from param groups (defaults: AdamW).
        lr_scheduler: builds a per-step scheduler from the optimizer (e.g. ``WarmupMultiStepLR``).
        layer_decay: layer-wise lr decay over the ViT blocks (1.0: off).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float = 1.0,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.layer_decay = layer_decay
        # The latest evaluation's metrics; the CLI prints them as the run's last line.
        self.final_metrics: dict[str, Any] = {}
        self._checkpoint_step: int | None = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_step = checkpoint.get("global_step")

    @property
    def trained_steps(self) -> int:
        """Optimizer steps behind the current weights: the trainer's while fitting, else the checkpoint's."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting or self._checkpoint_step is None:
            return self.global_step
        return int(self._checkpoint_step)

    def save_config(self, *callables: str) -> None:
        """Keep the init args that can be saved (the caller has just run ``save_hyperparameters()``).

        Under the CLI, the hyper-parameters are the run's own config, where model parts such as the detector
        are class paths with init args: a checkpoint then rebuilds the module with ``load_from_checkpoint``
        and no YAML. Parts passed as Python callables cannot be saved and are dropped; pass them again to
        ``load_from_checkpoint``.
        """
        for name in callables:
            if callable(self.hparams.get(name)):
                del self.hparams[name]

    def write_report(self, name: str, content: Any) -> Path | None:
        """Write ``content`` (JSON-able, or a str as is) to the run's log directory, on rank 0 only."""
        # Trainer.log_dir broadcasts from rank 0: every process must ask for it, before any returns.
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        text = content if isinstance(content, str) else json.dumps(content, indent=1, allow_nan=True)
        path.write_text(text)
        return path

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(layer_decay_param_groups(self, self.layer_decay))
        apply_lr_scale(optimizer)
        if self.lr_scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
