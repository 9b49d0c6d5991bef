"""``vitdense export --ckpt_path <ckpt>``: a checkpoint's model written with ``torch.export`` and checked."""

import json
import os
import sys
from pathlib import Path
from typing import Any

from lightning import LightningModule

from vitdense.argument_parser import CommandArgumentParser
from vitdense.atomic_write import OutputWriteError, check_writable_folder, write_atomically
from vitdense.cli.checkpoint_options import add_trust_class_option
from vitdense.datamodules import as_rgb_array
from vitdense.export import ExportCheckError, export_model
from vitdense.inference import load_checkpoint


def export_command(args: list[str]) -> int:
    """``vitdense export --ckpt_path <ckpt> [--output F.pt2] [--sample IMAGE] [--image_size H W] [--onnx]``.

    Writes the checkpoint's detector or segmenter with ``torch.export`` at a fixed input size, loads it back
    and checks its outputs against eager PyTorch on the sample image; a difference beyond the stated
    tolerances fails with exit status 1. Returns the exit status.
    """
    parser = CommandArgumentParser(
        prog="vitdense export",
        description=(
            "Write a checkpoint's detector or segmenter with torch.export at a fixed input size, load it "
            "back and check its outputs against eager PyTorch on a sample image."
        ),
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `vitdense fit`")
    parser.add_argument(
        "--output",
        default=None,
        help="the .pt2 file (default: beside the checkpoint, or the one a last.ckpt link points at)",
    )
    parser.add_argument(
        "--sample", default=None, help="an image to check on (default: synthetic colour blobs)"
    )
    parser.add_argument(
        "--image_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size (default for detection: the evaluation canvas; required for segmentation)",
    )
    parser.add_argument("--onnx", action="store_true", help="also write and check an .onnx file")
    add_trust_class_option(parser)
    options = parser.parse_args(args)
    if options.output is not None and Path(options.output).suffix != ".pt2":
        parser.error(f"--output is a .pt2 file (torch.export's package format): got {options.output}")
    output = Path(options.output) if options.output is not None else _program_path(Path(options.ckpt_path))
    try:
        task = load_checkpoint(options.ckpt_path, trusted_classes=options.trust_class)
        check_writable_folder(output.parent)  # before the minutes of export, not after
        sample_rgb = as_rgb_array(options.sample) if options.sample is not None else None
    except (FileNotFoundError, ValueError, OutputWriteError) as error:  # BadDataError is a ValueError
        parser.error(str(error))
    try:
        image_size, sample, valid_size = task.export_inputs(options.image_size, sample_rgb, options.sample)
    except ValueError as error:
        parser.error(str(error))
    try:
        report = export_model(
            task, image_size, output, sample=sample, valid_size=valid_size, onnx=options.onnx
        )
    except ExportCheckError as error:
        _write_exported_classes(task, output)  # the program stays on disk: so does what its outputs mean
        print(f"The exported model differs from eager PyTorch: {error}", file=sys.stderr)
        return 1
    classes = _write_exported_classes(task, output)
    print(report.summary(), flush=True)
    print(f"{classes}: what the program's outputs mean (class labels, ids and names)", flush=True)
    return 0


def _program_path(checkpoint: Path) -> Path:
    """Where export writes by default: beside the checkpoint, named after it, or for a ``last*.ckpt`` link
    (which moves on with the next save) after the step's checkpoint it points at."""
    if checkpoint.is_symlink() and checkpoint.name.startswith("last"):
        return checkpoint.parent / Path(os.readlink(checkpoint)).with_suffix(".pt2").name
    return checkpoint.with_suffix(".pt2")


def _write_exported_classes(task: LightningModule, program: Path) -> Path:
    """Write :func:`_exported_classes` as ``<name>.classes.json`` beside ``<name>.pt2``; return its path."""
    classes = json.dumps(_exported_classes(task), indent=1)
    return write_atomically(program.with_suffix(".classes.json"), classes)


def _exported_classes(task: LightningModule) -> dict[str, Any]:
    """The class table written beside an exported program: a detector's ``labels`` are 1..K, not the
    dataset's category ids; a segmenter's class indices are 0..K-1."""
    return task.class_table()
