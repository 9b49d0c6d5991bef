"""When ``fit`` ends: the one rule the callbacks and tasks share."""

from lightning import Trainer

__all__ = ["training_ends"]


def training_ends(trainer: Trainer, at_epoch_end: bool) -> bool:
    """Whether the step just taken is training's last by its length: ``max_steps`` reached, or, when
    ``at_epoch_end`` (this step ends its epoch), the epoch is the last of ``max_epochs``.

    A stop requested before the end (``trainer.should_stop``, e.g. by EarlyStopping) is not counted.
    """
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    return at_epoch_end and 0 < max_epochs <= trainer.current_epoch + 1
