"""jsonargparse's error messages and subcommand parsers, as :mod:`vitdense.compat.jsonargparse` reads them."""

import json
from importlib.metadata import version

import pytest
from jsonargparse import ActionConfigFile, ArgumentParser, ArgumentError

from vitdense.compat.jsonargparse import (
    CLASS_PATH,
    REQUIRED,
    UNKNOWN_INIT_ARG,
    UNKNOWN_OPTION,
    subcommand_parser,
)

pytestmark = pytest.mark.oldest

CHANGED = (
    f"jsonargparse {version('jsonargparse')} words its errors differently than vitdense.compat.jsonargparse "
    "reads"
)


class Widget:
    def __init__(self, num_workers: int = 1) -> None:
        self.num_workers = num_workers


def _parser() -> ArgumentParser:
    """A main parser with a subcommand ``fit`` as Lightning's: a config file, a required key, a class."""
    fit = ArgumentParser(exit_on_error=False)
    fit.add_argument("--config", action=ActionConfigFile)
    fit.add_argument("--max_epochs", type=int)
    fit.add_argument("--data", type=int, required=True)
    fit.add_subclass_arguments(Widget, "widget")
    parser = ArgumentParser(exit_on_error=False, prog="vitdense")
    parser.add_subcommands().add_subcommand("fit", fit)
    return parser


def _message(args: list[str]) -> str:
    with pytest.raises(ArgumentError) as error:
        _parser().parse_args(args)
    return str(error.value)


def test_an_unknown_option_on_the_command_line_and_in_a_recipe_is_named(tmp_path):
    found = UNKNOWN_OPTION.search(_message(["fit", "--data", "1", "--max_epohcs", "1"]))
    assert found is not None and found["key"] == "max_epohcs", CHANGED
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: 1\nmax_epohcs: 2\n")
    found = UNKNOWN_OPTION.search(_message(["fit", "--config", str(recipe)]))
    assert found is not None and found["nested"] == "max_epohcs", CHANGED


def test_an_unknown_constructor_argument_is_named_with_its_class(tmp_path):
    widget = f"{__name__}.Widget"
    recipe = tmp_path / "recipe.yaml"
    misspelt = {"class_path": widget, "init_args": {"num_wrokers": 2}}
    recipe.write_text(json.dumps({"data": 1, "widget": misspelt}))
    for args in (
        ["fit", "--data", "1", "--widget", json.dumps(misspelt)],
        ["fit", "--config", str(recipe)],
    ):
        message = _message(args)
        found = UNKNOWN_INIT_ARG.search(message)
        assert found is not None and found["key"] == "num_wrokers", f"{CHANGED}:\n{message}"
        assert widget in (found["before"], found["after"]), f"{CHANGED}:\n{message}"
        assert widget in CLASS_PATH.findall(message), f"{CHANGED}:\n{message}"


def test_a_subcommands_missing_keys_name_the_subcommand_whose_parser_is_found():
    message = _message(["fit"])
    found = REQUIRED.match(message)
    assert found is not None and found["subcommand"] == "fit", f"{CHANGED}:\n{message}"
    parser = _parser()
    assert subcommand_parser(parser, "fit") is not None, (
        f"jsonargparse {version('jsonargparse')}: ArgumentParser._subcommands_action is gone or changed"
    )
    assert subcommand_parser(parser, "fit").get_defaults().max_epochs is None
    assert subcommand_parser(parser, "check-data") is None
    assert subcommand_parser(ArgumentParser(), "fit") is None  # a parser without subcommands
