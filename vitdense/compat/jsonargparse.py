"""What the kit reads of jsonargparse's errors: the English messages it raises, and the parser of a
subcommand whose keys a message names.

jsonargparse reports an unknown option or constructor argument only as message text; the hints of
:mod:`vitdense.argument_parser` match these patterns against it. Checked by
``tests/compat/test_jsonargparse.py`` on messages the installed jsonargparse raises.
"""

import argparse
import re

from jsonargparse import ArgumentParser

__all__ = ["CLASS_PATH", "REQUIRED", "UNKNOWN_INIT_ARG", "UNKNOWN_OPTION", "subcommand_parser"]

# "unrecognized arguments: --trainer.max_epohcs 1" (command line; argparse's words too) and
# "Subcommand 'fit' does not accept option 'trainer.max_epohcs'" (a recipe's key)
UNKNOWN_OPTION = re.compile(
    r"unrecognized arguments: --?(?P<key>[^\s=]+)|does not accept option '(?P<nested>[^']+)'"
)
# "Option 'num_wrokers' is not accepted", after the class it was given to ("class_path 'X':") or before it
# (". Got value: Namespace(class_path='X'")
UNKNOWN_INIT_ARG = re.compile(
    r"(?:class_path '(?P<before>[\w.]+)':\s+)?Option '(?P<key>[^']+)' is not accepted"
    r"(?:\. Got value: Namespace\(class_path='(?P<after>[\w.]+)')?"
)
# The classes the message names, as "class_path 'X'", "class_path='X'" or "'class_path': 'X'"
CLASS_PATH = re.compile(r"class_path'?[=:]?\s*'(?P<path>[\w.]+)'")
# "the following arguments are required: fit.data, fit.model": a subcommand's keys, in the main parser's error
REQUIRED = re.compile(r"the following arguments are required: (?P<subcommand>[\w-]+)\.")


def subcommand_parser(parser: ArgumentParser, subcommand: str) -> argparse.ArgumentParser | None:
    """The parser of ``parser``'s subcommand ``subcommand``, or None (no such subcommand).

    jsonargparse attaches it to most errors (``subcommand_parser``), but not to the main parser's error
    about a subcommand's required keys.
    """
    action = parser._subcommands_action
    return None if action is None else action.choices.get(subcommand)
