"""``vitdense check-data --config <recipe> [overrides]``: read every record of a recipe's data, report."""

import importlib
import sys
import warnings

from lightning import LightningDataModule, LightningModule

from vitdense.argument_parser import VitDenseArgumentParser
from vitdense.cli.lightning_cli import VitDenseCLI
from vitdense.datamodules import BadDataError, check_data


class DataCheckCLI(VitDenseCLI):
    """Parses a recipe and its overrides as ``fit`` does, but builds only the datamodule: no model, no
    trainer (a GPU recipe checks its data on a laptop)."""

    def instantiate_classes(self) -> None:
        # Built directly rather than through jsonargparse, which would fold a BadDataError raised while
        # reading the training annotations into a type-mismatch message.
        config = self.config["data"]
        module_name, _, class_name = config.class_path.rpartition(".")
        datamodule_class = getattr(importlib.import_module(module_name), class_name)
        self.datamodule = datamodule_class(**config.init_args.as_dict())


def check_data_command(args: list[str]) -> int:
    """``vitdense check-data --config <recipe> [overrides]``: read every record of every split, report.

    Returns the exit status: 0 when no record is bad, 1 otherwise (notes alone do not fail).
    """
    with warnings.catch_warnings():
        # The arguments are sys.argv's minus "check-data"; Lightning would warn that they differ.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            cli = DataCheckCLI(
                LightningModule,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                parser_class=VitDenseArgumentParser,
                parser_kwargs={"prog": "vitdense check-data"},
                run=False,
                save_config_callback=None,
                args=args,
            )
        except BadDataError as error:  # the training annotation file is read when the datamodule is built
            print(f"The data check could not start: {error}", file=sys.stderr)
            return 1
    report = check_data(cli.datamodule)
    print(report.format(skip_hint=cli.datamodule.on_bad_data != "skip"), flush=True)
    return 1 if report.errors else 0
