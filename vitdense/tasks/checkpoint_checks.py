"""Checks that a checkpoint fits the task loading it: the same kind of task, weights of the same shapes."""

import logging
import sys
from typing import Any

import torch

from vitdense.tasks.label_space import LabelSpace

logger = logging.getLogger(__name__)


def warn_if_classes_differ(checkpoint: dict[str, Any], ours: LabelSpace, where: str) -> None:
    """Warn when a checkpoint evaluated on a datamodule (whose label space is ``ours``) was trained with
    other class names."""
    trained = LabelSpace.from_checkpoint(checkpoint, ours, where).class_names
    if trained != ours.class_names:
        logger.warning(
            "The checkpoint was trained with classes %s, the data has %s: scoring with the data's, label by "
            "label",
            list(trained),
            list(ours.class_names),
        )


def check_checkpoint_task(class_path: str, ours: type, checkpoint: str) -> None:
    """Refuse a checkpoint of task ``class_path`` (its ``_class_path``) for a run whose model is ``ours``,
    unless one is the other or a subclass of it.

    The saved class is looked up among the modules already imported, never imported: a checkpoint's class path
    is not run (:mod:`vitdense.checkpoint_trust`). One not imported is compared by name.

    Raises:
        ValueError: naming ``checkpoint`` (a path, or "the checkpoint"), both tasks and the fix.
    """
    module_name, _, class_name = class_path.rpartition(".")
    saved = getattr(sys.modules.get(module_name), class_name, None)
    same = isinstance(saved, type) and (issubclass(ours, saved) or issubclass(saved, ours))
    if not same and class_name != ours.__name__:
        raise ValueError(
            f"{checkpoint} is a {class_name} checkpoint, but this run's model is a {ours.__name__}: pass a "
            f"checkpoint of a {ours.__name__} run, or the checkpoint's own run config (--config <its "
            "run>/config.yaml)"
        )


def check_checkpoint_shapes(
    checkpoint: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    num_classes: int | None,
    label_space: LabelSpace | None,
    where: str,
) -> None:
    """Fail with what differs, rather than with PyTorch's list of size mismatches, when the checkpoint's
    weights do not fit the model whose ``state_dict`` this is (another class count, another backbone size).

    Args:
        checkpoint: as Lightning loaded it.
        state_dict: the model's own.
        num_classes: the model's class count (its ``num_classes`` hyper-parameter), if it has one.
        label_space: the model's classes, if it has them.
        where: the checkpoint's name for messages.

    Raises:
        ValueError: naming the classes only in the checkpoint or only in the data, or the weights that differ.
    """
    differ = [
        (name, tuple(tensor.shape), tuple(state_dict[name].shape))
        for name, tensor in checkpoint.get("state_dict", {}).items()
        if name in state_dict and tuple(tensor.shape) != tuple(state_dict[name].shape)
    ]
    if not differ:
        return
    trained = (checkpoint.get("hyper_parameters") or {}).get("num_classes")
    if trained is not None and num_classes is not None and trained != num_classes:
        here = list(label_space.class_names) if label_space is not None else []
        saved = checkpoint.get("label_space") or checkpoint
        theirs = list(saved.get("class_names") or [])
        hint = (
            " (a COCO file's unused '_background_' category returns with keep_background_category=true)"
            if "_background_" in theirs and "_background_" not in here
            else ""
        )
        raise ValueError(
            f"{where} was trained for {trained} classes, but this data has {num_classes} (only in the "
            f"checkpoint: {[n for n in theirs if n not in here]}; only in the data: "
            f"{[n for n in here if n not in theirs]}): evaluate or fine-tune it on data with the same "
            f"classes{hint}, or start from the backbone weights instead"
        )
    listed = "; ".join(f"{name}: {a} in the checkpoint, {b} here" for name, a, b in differ[:3])
    raise ValueError(
        f"{where} does not fit this model ({len(differ)} weights differ in shape: {listed}); build the "
        "model as it was trained: pass the run's own config.yaml with --config"
    )
