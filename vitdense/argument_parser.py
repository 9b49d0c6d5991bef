"""The ``vitdense`` command's argument parsers: an option error in a few lines, with the closest valid name.

jsonargparse prints the subcommand's whole usage (some 50 lines of options) above the one line that says what
was wrong, and argparse prints the usage too. :class:`VitDenseArgumentParser` (Lightning's commands) and
:class:`CommandArgumentParser` (``predict`` from a checkpoint, ``export``) print that line alone (the
message, whole), followed by the closest valid name for a misspelt option or constructor argument and the
``--help`` tip of the command the error belongs to.
"""

import argparse
import difflib
import inspect
import os
import re
import sys
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from vitdense.compat.argparse import long_options
from vitdense.compat.jsonargparse import (
    CLASS_PATH,
    REQUIRED,
    UNKNOWN_INIT_ARG,
    UNKNOWN_OPTION,
    subcommand_parser,
)

__all__ = ["CommandArgumentParser", "VitDenseArgumentParser", "suggestion"]


class VitDenseArgumentParser(LightningArgumentParser):
    """Lightning's argument parser, with :meth:`error` reporting without the usage dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # As jsonargparse reads the variable (get_env_var_bool): only "true" turns debugging on.
        debug = os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true"
        if not self.exit_on_error or debug:
            super().error(message, ex)  # raises: jsonargparse tries alternatives, or shows the traceback
        parser = getattr(ex, "subcommand_parser", None) or self._subcommand_parser(message) or self
        _exit_with(parser, message)

    def _subcommand_parser(self, message: str) -> argparse.ArgumentParser | None:
        """The parser of the subcommand whose required keys ``message`` lists, or None."""
        found = REQUIRED.match(message)
        return None if found is None else subcommand_parser(self, found["subcommand"])


class CommandArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with :meth:`error` reporting without the usage."""

    def error(self, message: str) -> NoReturn:
        _exit_with(self, message)


def _exit_with(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Write the error, the :func:`suggestion` if any and ``parser``'s ``--help`` tip; exit with status 2."""
    try:
        hint = suggestion(message, parser)
    except Exception:  # the hint is an extra: it must not hide the error behind a traceback
        hint = None
    sys.stderr.write(f"error: {message.rstrip()}\n")
    if hint:
        sys.stderr.write(f"{hint}\n")
    sys.stderr.write(f"tip: `{parser.prog.replace(' [options]', '')} --help` lists the accepted options\n")
    parser.exit(2)


def suggestion(message: str, parser: argparse.ArgumentParser) -> str | None:
    """A hint for the option or constructor argument that ``message`` says is unknown, or None.

    An option is matched against ``parser``'s own (``--trainer.max_epochs``, ``--ckpt_path``). A constructor
    argument that another class the message names takes is said to be that class's; otherwise it is matched
    against the parameters of the class it was given to, then of all the classes the message names (the
    datamodule, the model and its parts, the optimizer). A subcommand without its data and model is pointed
    at the recipe.
    """
    if REQUIRED.match(message) and re.search(r"\.(data|model)\b", message):
        return (
            "give the recipe with --config (e.g. recipes/coco_mask_rcnn.yaml), or a run's own copy of it, "
            "lightning_logs/version_N/config.yaml in its default_root_dir; `vitdense predict --ckpt_path` "
            "needs no recipe"
        )
    if found := UNKNOWN_INIT_ARG.search(message):
        return _init_arg_hint(found["key"], found["before"] or found["after"], message)
    if found := UNKNOWN_OPTION.search(message):
        key = found["key"] or found["nested"]
        if close := difflib.get_close_matches(key, long_options(parser), n=1):
            return f"did you mean '{close[0]}'? ('{key}' is not one)"
    return None


def _init_arg_hint(key: str, given_to: str | None, message: str) -> str | None:
    """The hint for constructor argument ``key``, given to class ``given_to`` (None: not known)."""
    parameters = {path: _init_parameters(path) for path in dict.fromkeys(CLASS_PATH.findall(message))}
    if owners := [path for path, names in parameters.items() if key in names and path != given_to]:
        not_of = f", not of {given_to}" if given_to else ""
        return f"'{key}' is an argument of {' and '.join(owners)}{not_of}"
    for paths in ([given_to], list(parameters)):
        # reversed: a name two classes take is attributed to the first the message names
        names = {name: path for path in reversed(paths) for name in parameters.get(path, [])}
        if close := difflib.get_close_matches(key, names, n=1):
            return f"did you mean '{close[0]}' of {names[close[0]]}? ('{key}' is not one)"
    return None


def _init_parameters(class_path: str) -> list[str]:
    """The constructor parameters of the class named ``class_path``; none where its module is not imported.

    Nothing is imported: jsonargparse has imported every class it validated, and importing one it has not
    (named in the "Given value" of a message) could fail in any way.
    """
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(sys.modules.get(module_name), name, None)
    try:
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):  # None, or a callable without a signature
        return []
