"""Refuse a checkpoint or early-stopping callback that monitors a metric the task never logs."""

from collections.abc import Sequence

from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint


def check_monitors(callbacks: Sequence[Callback], logged: Sequence[str], model_name: str) -> None:
    """Refuse a ``ModelCheckpoint`` or ``EarlyStopping`` that monitors a ``val/`` metric not in ``logged``
    (the ``val/...`` names the model logs; none: nothing is checked): Lightning would only stop at the end
    of the first validation, after that much training.

    Raises:
        ValueError: naming the callback, its monitor, ``model_name`` and the metrics it could monitor.
    """
    if not logged:
        return
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and monitor and monitor.startswith("val/"):
            if monitor not in logged:
                raise ValueError(
                    f"{type(callback).__name__} monitors {monitor!r}, which {model_name} never logs; its "
                    f"validation logs {', '.join(logged)}: set the callback's monitor (trainer.callbacks "
                    "in the recipe) to one of them"
                )
