"""The ``vitdense`` command (console script and ``python -m vitdense``).

Lightning's subcommands over the kit's tasks and datamodules (:mod:`~vitdense.cli.lightning_cli`), plus
``check-data`` (:mod:`~vitdense.cli.check_data`), ``predict`` from a checkpoint alone
(:mod:`~vitdense.cli.predict_checkpoint`) and ``export`` (:mod:`~vitdense.cli.export_checkpoint`); a user's
mistake is reported in one line (:mod:`~vitdense.cli.errors`).
"""

import os
import sys

from lightning import LightningDataModule, LightningModule

from vitdense.argument_parser import VitDenseArgumentParser
from vitdense.cli.check_data import DataCheckCLI, check_data_command
from vitdense.cli.errors import error_message, is_user_error
from vitdense.cli.export_checkpoint import export_command
from vitdense.cli.lightning_cli import VitDenseCLI
from vitdense.cli.output_filters import command_output_filters
from vitdense.cli.predict_checkpoint import RECIPE_OPTIONS, predict_checkpoint_command

__all__ = [
    "DataCheckCLI",
    "VitDenseCLI",
    "check_data_command",
    "export_command",
    "main",
    "predict_checkpoint_command",
    "run",
]


def run() -> None:
    """The ``vitdense`` console script: :func:`main`, with a user's mistake reported in one line (exit status
    1) instead of a traceback; ``VITDENSE_TRACEBACK=1`` shows the traceback."""
    try:
        main()
    except Exception as error:  # only user errors are caught, the rest is raised again
        if os.environ.get("VITDENSE_TRACEBACK") or not is_user_error(error):
            raise
        command = f"vitdense {sys.argv[1]}" if len(sys.argv) > 1 else "vitdense"
        print(f"{command}: {error_message(error)}", file=sys.stderr)
        print("(VITDENSE_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        raise SystemExit(1) from None


_MORE_COMMANDS = (
    "More commands: `vitdense check-data --config <recipe>` reads every record of a recipe's data and "
    "reports the bad ones; `vitdense predict --ckpt_path <ckpt> --images <file|folder|glob>` runs a "
    "checkpoint without its recipe; `vitdense export --ckpt_path <ckpt>` writes its model with "
    "torch.export. Each has its own --help."
)


def main(args: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m vitdense``.

    Lightning's subcommands (``fit``, ``validate``, ``test``, ``predict``) plus ``check-data`` and ``export``;
    ``predict`` without a recipe's options runs a checkpoint alone (:func:`predict_checkpoint_command`).
    """
    command = sys.argv[1:] if args is None else list(args)
    with command_output_filters():
        if command[:1] == ["predict"] and not any(arg.startswith(RECIPE_OPTIONS) for arg in command[1:]):
            raise SystemExit(predict_checkpoint_command(command[1:]))
        if command[:1] == ["check-data"]:
            raise SystemExit(check_data_command(command[1:]))
        if command[:1] == ["export"]:
            raise SystemExit(export_command(command[1:]))
        VitDenseCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=VitDenseArgumentParser,
            parser_kwargs={"epilog": _MORE_COMMANDS},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
