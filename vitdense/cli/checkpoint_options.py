"""The option the commands that load a checkpoint alone share."""

import argparse


def add_trust_class_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust_class",
        action="append",
        default=[],
        metavar="MODULE.CLASS",
        help=(
            "a class outside vitdense's trusted modules (vitdense., torch.optim., torch.nn.) that the "
            "checkpoint's config may name, e.g. your own backbone; repeat for several. Only for checkpoints "
            "you trust: building a class can run any code"
        ),
    )
