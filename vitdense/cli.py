"""The ``vitdense`` command: Lightning's CLI over the kit's tasks and datamodules."""

import json

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class VitDenseCLI(LightningCLI):
    """``fit``, ``validate``, ``test`` and ``predict`` from one flat YAML recipe.

    The datamodule reads its classes from the annotation files, so the model's ``num_classes`` is linked
    from the instantiated datamodule instead of being written twice.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (LightningArgumentParser)
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _print_final_metrics(self) -> None:
        """End the output with one JSON line of the last evaluation's metrics, after the progress bar."""
        metrics = getattr(self.model, "final_metrics", None)
        if metrics and self.trainer.is_global_zero:
            print(json.dumps(metrics), flush=True)

    after_fit = after_validate = after_test = _print_final_metrics


def main(args: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m vitdense``."""
    VitDenseCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
