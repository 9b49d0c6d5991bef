"""argparse's option list, as :func:`vitdense.compat.argparse.long_options` reads it."""

import argparse
import sys

import pytest

from vitdense.compat.argparse import long_options

pytestmark = pytest.mark.oldest


def test_the_long_options_of_a_parser_are_listed_without_dashes():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt_path")
    parser.add_argument("-o", "--output_dir")
    parser.add_argument("images")
    listed = long_options(parser)
    assert sorted(listed) == ["ckpt_path", "help", "output_dir"], (
        f"argparse of Python {sys.version.split()[0]}: ArgumentParser._actions is gone or changed"
    )
