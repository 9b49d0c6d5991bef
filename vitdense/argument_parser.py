"""The ``vitdense`` command's argument parsers: an option error in a few lines, with the closest valid name.

jsonargparse prints the subcommand's whole usage (some 50 lines of options) above the one line that says what
was wrong. :class:`VitDenseArgumentParser` prints that line alone (jsonargparse's message, whole), followed by
the closest valid name for a misspelt option or constructor argument and the ``--help`` tip;
:class:`CommandArgumentParser` does the same for the argparse commands (``predict`` from a checkpoint,
``export``), whose own messages already name the closest option.
"""

import argparse
import difflib
import importlib
import inspect
import os
import re
import sys
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["CommandArgumentParser", "VitDenseArgumentParser", "suggestion"]

# "unrecognized arguments: --trainer.max_epohcs 1" (command line) and
# "Subcommand 'fit' does not accept option 'trainer.max_epohcs'" (a recipe's key)
_UNKNOWN_OPTION = re.compile(
    r"unrecognized arguments: --?(?P<key>[^\s=]+)|does not accept option '(?P<nested>[^']+)'"
)
# "Option 'num_wrokers' is not accepted", in a message that names the classes it was tried on as
# "class_path 'X'", "class_path='X'" or "'class_path': 'X'"
_UNKNOWN_INIT_ARG = re.compile(r"Option '(?P<key>[^']+)' is not accepted")
_CLASS_PATH = re.compile(r"class_path'?[=:]?\s*'(?P<path>[\w.]+)'")


class VitDenseArgumentParser(LightningArgumentParser):
    """Lightning's argument parser, with :meth:`error` reporting without the usage dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # raises: jsonargparse tries alternatives, or shows the traceback
        parser = getattr(ex, "subcommand_parser", None) or self
        hint = suggestion(message, parser)
        prog = parser.prog.replace(" [options]", "")
        _exit_with(self, prog, message, hint)


class CommandArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with :meth:`error` reporting without the usage."""

    def error(self, message: str) -> NoReturn:
        _exit_with(self, self.prog, message, None)


def _exit_with(parser: argparse.ArgumentParser, prog: str, message: str, hint: str | None) -> NoReturn:
    """Write the error, the hint if any and the ``--help`` tip to stderr, and exit with status 2."""
    sys.stderr.write(f"error: {message.rstrip()}\n")
    if hint:
        sys.stderr.write(f"{hint}\n")
    sys.stderr.write(f"tip: `{prog} --help` lists the accepted options\n")
    parser.exit(2)


def suggestion(message: str, parser: ArgumentParser) -> str | None:
    """ "did you mean ...?" for the option or constructor argument that ``message`` says is unknown, or None.

    Options are matched against ``parser``'s own (``--trainer.max_epochs``, ``--ckpt_path``); a constructor
    argument against the parameters of the classes the message names (the datamodule, the model and its parts,
    the optimizer), the closest of them all.
    """
    if found := _UNKNOWN_INIT_ARG.search(message):
        key = found["key"]
        candidates = [
            (name, f" of {class_path}")
            for class_path in dict.fromkeys(m["path"] for m in _CLASS_PATH.finditer(message))
            for name in _init_parameters(class_path)
        ]
    elif found := _UNKNOWN_OPTION.search(message):
        key = found["key"] or found["nested"]
        candidates = [
            (option.lstrip("-"), "")
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--")
        ]
    else:
        return None
    scored = [(difflib.SequenceMatcher(None, key, name).ratio(), name, where) for name, where in candidates]
    score, name, where = max(scored, key=lambda item: item[0], default=(0.0, "", ""))
    if score < 0.6:
        return None
    return f"did you mean '{name}'{where}? ('{key}' is not one)"


def _init_parameters(class_path: str) -> list[str]:
    """The constructor parameters of the class named ``class_path``; none where it cannot be imported."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls: Any = getattr(importlib.import_module(module_name), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
