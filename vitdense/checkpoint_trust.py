"""Reading a checkpoint from someone else runs none of its code.

A PyTorch file is a pickle, and unpickling calls whatever functions it names. The kit reads every checkpoint
and weights file weights-only: tensors and plain data, anything else refused by torch without running it
(:func:`read_checkpoint`). A ``vitdense fit`` checkpoint also holds its model's config, whose class paths
(the task, and the detector, backbone, optimizer, scheduler ... it builds) Lightning and jsonargparse import
and instantiate: :func:`check_checkpoint_classes` checks them first, against the modules the kit's recipes
use and the classes a user names, and imports nothing.
"""

import importlib.util
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "KIT_TASKS",
    "TRUSTED_MODULES",
    "UntrustedCheckpointError",
    "check_checkpoint_classes",
    "class_paths",
    "read_checkpoint",
    "weights_only_refusal",
]

# Module prefixes of every class the recipes and the kit's tasks save in a checkpoint's config: the kit's
# own parts, schedulers and tasks; torch's optimizers, schedulers and layers (norms, activations).
TRUSTED_MODULES = ("vitdense.", "torch.optim.", "torch.nn.")
# The tasks a checkpoint may be of, as the CLI saves their class paths (``_class_path``).
KIT_TASKS = (
    "vitdense.tasks.DetectionTask",
    "vitdense.tasks.detection.DetectionTask",
    "vitdense.tasks.SemanticSegmentationTask",
    "vitdense.tasks.segmentation.SemanticSegmentationTask",
)
# What Lightning's CLI saves as ``_instantiator``: ``load_from_checkpoint`` calls it to build the task.
_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
# A dotted import path: jsonargparse imports one given for a callable or a class argument.
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class UntrustedCheckpointError(ValueError):
    """A checkpoint needs more than weights-only loading, or names a class the kit does not trust."""


def _unsafe_globals(path: str | Path) -> list[str]:
    """The Python objects a torch file names beyond tensors and plain data (none for a file in torch's legacy
    format, or no torch file at all: those cannot be listed)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


def weights_only_refusal(path: str | Path) -> str:
    """Why torch refused ``path`` weights-only, for a message: the Python objects it would have called."""
    names = _unsafe_globals(path)
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (
            f"it holds pickled Python objects ({shown}) that loading would import and call, and vitdense "
            "loads only tensors and plain data"
        )
    return "it is damaged, no torch file, or holds pickled Python objects, which vitdense does not load"


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """The checkpoint in ``path``, loaded weights-only.

    Args:
        path: a file written by ``torch.save`` (a Lightning checkpoint).
        map_location: as for ``torch.load``.
        mmap: map the file rather than read it (to look at its config without reading every weight); files in
            torch's legacy format are read.

    Raises:
        FileNotFoundError: no such file (or a link to none).
        UntrustedCheckpointError: the file needs more than weights-only loading.
        ValueError: anything else that makes it no checkpoint (a folder, an empty or damaged file).
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        target = path.readlink()
        raise FileNotFoundError(f"{path} is a link to {target}, which leads to no file (missing, or a loop)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found; runs keep them in <run>/checkpoints/*.ckpt")
    if path.is_dir():
        inside = sorted(child.name for child in path.glob("*.ckpt"))
        listed = f" (it holds {', '.join(inside[:5])})" if inside else ""
        raise ValueError(f"{path} is a folder, not a checkpoint file{listed}: pass one of its .ckpt files")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a checkpoint: a copy or a save cut short?")
    try:
        mmap = mmap and zipfile.is_zipfile(path)
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if _unsafe_globals(path):
            raise UntrustedCheckpointError(
                f"{path} cannot be loaded weights-only: {weights_only_refusal(path)}. Nothing in it was run; "
                "pass a checkpoint written by `vitdense fit`"
            ) from error
        raise ValueError(
            f"{path} is not a readable checkpoint: weights-only loading refused it "
            f"({weights_only_refusal(path)}); nothing in it was run"
        ) from error
    except Exception as error:  # torch.load raises many types for files that are not checkpoints
        first_line = (str(error).strip().splitlines() or [""])[0]
        why = f"{type(error).__name__}: {first_line}"
        raise ValueError(f"{path} is not a readable checkpoint ({why})") from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint (a dict of states)")
    return dict(checkpoint)


def _named_classes(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, where)`` for every class or object a config would have jsonargparse import: each
    ``class_path`` and each string that reads as an import path of an importable top-level module."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if key == "class_path":
                yield (item if isinstance(item, str) else repr(item)), where or "class_path"
            elif key not in ("_class_path", "_instantiator"):
                yield from _named_classes(item, inner)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _named_classes(item, f"{where}[{index}]")
    elif isinstance(value, str) and _DOTTED.match(value) and _importable(value.partition(".")[0]):
        yield value, where


def _importable(top_level: str) -> bool:
    """Whether a top-level module of that name could be imported; locating it runs none of its code."""
    try:
        return importlib.util.find_spec(top_level) is not None
    except (ImportError, ValueError):  # e.g. a module in sys.modules without a spec: count it importable
        return True


def class_paths(config: Any) -> set[str]:
    """Every class path, or import path of a callable, that ``config`` (a parsed run config) names."""
    return {name for name, _ in _named_classes(config)}


def _trusted(name: str, trusted: set[str]) -> bool:
    return name in trusted or (bool(_DOTTED.match(name)) and name.startswith(TRUSTED_MODULES))


def check_checkpoint_classes(
    checkpoint: Mapping[str, Any], path: str | Path, trusted: Iterable[str] = (), allow: str = "{0}"
) -> None:
    """Refuse a checkpoint whose config names a class outside the kit's trust, before anything is imported.

    The task (``hyper_parameters._class_path``) must be one of :data:`KIT_TASKS`, every other class path
    (and import path of a callable) in its config must lie in :data:`TRUSTED_MODULES`, unless ``trusted``
    names it.

    Args:
        checkpoint: as :func:`read_checkpoint` returns it.
        path: the file, for messages.
        trusted: class paths the user allows.
        allow: how the user allows a class, with ``{0}`` for its path (e.g. ``"--trust_class {0}"``).

    Raises:
        UntrustedCheckpointError: naming the file, the class path, where the config has it and how to allow
            it.
    """
    trusted = set(trusted)
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hyper_parameters, Mapping):
        return
    instantiator = hyper_parameters.get("_instantiator")
    if instantiator is not None and instantiator != _INSTANTIATOR:
        raise UntrustedCheckpointError(
            f"{path} asks to be built by {instantiator!r}, not by Lightning's {_INSTANTIATOR}: refused, "
            "nothing of it was imported"
        )
    task = hyper_parameters.get("_class_path")
    if task is not None and task not in KIT_TASKS and task not in trusted:
        raise UntrustedCheckpointError(
            f"{path} holds a {task}, not one of vitdense's tasks (DetectionTask, SemanticSegmentationTask); "
            "nothing of it was imported, as importing and building it could run any code. If you trust this "
            f"checkpoint, allow that class: {allow.format(task)}"
        )
    for name, where in _named_classes(hyper_parameters):
        if not _trusted(name, trusted):
            raise UntrustedCheckpointError(
                f"{path} names {name} (hyper_parameters.{where}), outside the modules vitdense trusts "
                f"({', '.join(prefix + '*' for prefix in TRUSTED_MODULES)}); nothing of it was imported, as "
                f"importing and building it could run any code. If you trust this checkpoint, allow that "
                f"class: {allow.format(name)}"
            )
