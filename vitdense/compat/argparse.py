"""argparse's list of a parser's options, which it keeps only as a private attribute.

Checked by ``tests/compat/test_argparse.py``.
"""

import argparse

__all__ = ["long_options"]


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """``parser``'s ``--`` options without their dashes (``trainer.max_epochs``, ``ckpt_path``)."""
    return [
        option.lstrip("-")
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    ]
