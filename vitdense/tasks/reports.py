"""The JSON and text reports an evaluation writes to the run's log directory."""

import json
import math
from pathlib import Path
from typing import Any

from lightning import Trainer

from vitdense.atomic_write import write_atomically


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def strict_json(content: Any, **kwargs: Any) -> str:
    """``content`` as standard JSON: a NaN or infinite number (e.g. the AP of a class without any ground
    truth) becomes ``null``, where ``json.dumps`` would write a bare ``NaN`` that JSON readers reject."""
    return json.dumps(_finite(content), allow_nan=False, **kwargs)


def write_report(trainer: Trainer, name: str, content: Any) -> Path | None:
    """Write ``content`` (JSON, NaN as null; or a str as is) to the trainer's log directory, on rank 0 only,
    whole or not at all (:func:`~vitdense.atomic_write.write_atomically`). Every process must call it."""
    # Trainer.log_dir broadcasts from rank 0: every process must ask for it, before any returns.
    folder = Path(trainer.log_dir or trainer.default_root_dir)
    if not trainer.is_global_zero:
        return None
    text = content if isinstance(content, str) else strict_json(content, indent=1)
    return write_atomically(folder / name, text)
