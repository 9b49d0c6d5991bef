"""An option error from the real CLI: jsonargparse's message and the closest valid name, without the usage."""

import sys
from pathlib import Path

import pytest
import yaml

from vitdense import argument_parser
from vitdense.argument_parser import suggestion
from vitdense.cli import main

DEMO = Path(__file__).parents[1] / "recipes" / "demo_shapes_mask_rcnn.yaml"


def _error_lines(args: list[str], capsys, monkeypatch) -> list[str]:
    monkeypatch.setattr(sys, "argv", ["vitdense", *args])  # as the console script runs it
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "usage:" not in captured.err and captured.out == ""
    return captured.err.strip().splitlines()


def _misspelt_recipe(tmp_path: Path, right: str, wrong: str) -> str:
    text = DEMO.read_text()
    assert text.count(f"{right}:") == 1
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace(f"{right}:", f"{wrong}:"))
    yaml.safe_load(recipe.read_text())
    return str(recipe)


def test_a_misspelt_command_line_option_gets_the_closest_option(capsys, monkeypatch):
    lines = _error_lines(["fit", "--config", str(DEMO), "--trainer.max_epohcs", "1"], capsys, monkeypatch)
    assert lines[0] == "error: unrecognized arguments: --trainer.max_epohcs 1"
    assert lines[1] == "did you mean 'trainer.max_epochs'? ('trainer.max_epohcs' is not one)"
    assert lines[2] == "tip: `vitdense fit --help` lists the accepted options"


@pytest.mark.parametrize(
    ("right", "wrong", "hint"),
    [
        ("max_epochs", "max_epohcs", "did you mean 'trainer.max_epochs'? ('trainer.max_epohcs' is not one)"),
        (
            "num_workers",
            "num_wrokers",
            "did you mean 'num_workers' of vitdense.datamodules.ShapesDataModule?",
        ),
        ("head_dim", "head_dm", "did you mean 'head_dim' of vitdense.heads.MaskRCNN?"),
        (
            "out_channels",
            "out_chanels",
            "did you mean 'out_channels' of vitdense.backbones.SimpleFeaturePyramid?",
        ),
        ("weight_decay", "weight_dacay", "did you mean 'weight_decay' of torch.optim.AdamW?"),
    ],
)
def test_a_misspelt_recipe_key_gets_the_closest_name_of_its_class(
    right, wrong, hint, tmp_path, capsys, monkeypatch
):
    lines = _error_lines(["fit", "--config", _misspelt_recipe(tmp_path, right, wrong)], capsys, monkeypatch)
    assert lines[0].startswith("error: ")
    assert any(wrong in line for line in lines[:-2])  # jsonargparse's message, whole
    assert lines[-2].startswith(hint) and lines[-2].endswith(" is not one)")
    assert lines[-1] == "tip: `vitdense fit --help` lists the accepted options"


def _edited_recipe(tmp_path: Path, after: str, added: str) -> str:
    """The demo recipe with the line ``added`` after the line ``after``, indented as that one."""
    lines = DEMO.read_text().splitlines(keepends=True)
    (i,) = [i for i, line in enumerate(lines) if line.strip() == after]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines.insert(i + 1, f"{indent}{added}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("".join(lines))
    return str(recipe)


@pytest.mark.parametrize(
    ("after", "added", "hint"),
    [
        (
            "warmup_steps: 100",
            "weight_decay: 0.05",
            "'weight_decay' is an argument of torch.optim.AdamW, not of vitdense.tasks.WarmupCosineLR",
        ),
        (
            "head_dim: 64",
            "layer_decay: 0.7",
            "'layer_decay' is an argument of vitdense.tasks.DetectionTask, not of vitdense.heads.MaskRCNN",
        ),
    ],
)
def test_an_argument_of_another_class_is_said_to_be_its(after, added, hint, tmp_path, capsys, monkeypatch):
    lines = _error_lines(["fit", "--config", _edited_recipe(tmp_path, after, added)], capsys, monkeypatch)
    assert lines[-2:] == [hint, "tip: `vitdense fit --help` lists the accepted options"]


class _Backbone:
    def __init__(self, out_channels: int, drop_path_rate: float) -> None:
        pass


class _Head:
    def __init__(self, backbone: _Backbone, dropout: float) -> None:
        pass


_HEAD, _BACKBONE = f"{__name__}._Head", f"{__name__}._Backbone"
_GIVEN_VALUE = (
    f"Given value: {{'class_path': '{_HEAD}', 'init_args': {{'backbone': {{'class_path': '{_BACKBONE}'"
)


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        (  # drop_path_rate is closer, but dropout is the head's
            f"Problem with given class_path '{_HEAD}':\n"
            f"    Option 'drop_rate' is not accepted\n  {_GIVEN_VALUE}",
            f"did you mean 'dropout' of {_HEAD}? ('drop_rate' is not one)",
        ),
        (
            f"expects a callable class: Option 'drop_path_rate' is not accepted. Got value: "
            f"Namespace(class_path='{_HEAD}', init_args=Namespace(drop_path_rate=0.1))\n  {_GIVEN_VALUE}",
            f"'drop_path_rate' is an argument of {_BACKBONE}, not of {_HEAD}",
        ),
        (  # the class it was given to is not named
            f"Option 'drop_path_rate' is not accepted\n  {_GIVEN_VALUE}",
            f"'drop_path_rate' is an argument of {_BACKBONE}",
        ),
    ],
)
def test_a_constructor_argument_is_matched_first_in_the_class_it_was_given_to(message, hint):
    assert suggestion(message, argument_parser.VitDenseArgumentParser()) == hint


def test_the_hint_imports_nothing_and_never_hides_the_error(tmp_path, capsys, monkeypatch):
    # A class jsonargparse has not validated yet (only named in the "Given value") that fails to import.
    (tmp_path / "badmod.py").write_text("raise RuntimeError('badmod is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = _edited_recipe(tmp_path, "head_dim: 64", "layer_decay: 0.7")
    Path(recipe).write_text(Path(recipe).read_text().replace("vitdense.tasks.WarmupCosineLR", "badmod.MyLR"))
    lines = _error_lines(["fit", "--config", recipe], capsys, monkeypatch)
    assert any("Option 'layer_decay' is not accepted" in line for line in lines)
    assert lines[-2].startswith("'layer_decay' is an argument of vitdense.tasks.DetectionTask")
    assert "badmod" not in sys.modules

    def broken(class_path: str) -> list[str]:
        raise RuntimeError("a bug in the hint")

    monkeypatch.setattr(argument_parser, "_init_parameters", broken)
    lines = _error_lines(["fit", "--config", recipe], capsys, monkeypatch)
    assert any("Option 'layer_decay' is not accepted" in line for line in lines)
    assert lines[-1] == "tip: `vitdense fit --help` lists the accepted options"
    assert not any(line.startswith(("did you mean", "'layer_decay' is an")) for line in lines)


@pytest.mark.parametrize("debug", ["", "false", "False"])
def test_jsonargparse_debug_off_keeps_the_short_error(debug, capsys, monkeypatch):
    monkeypatch.setenv("JSONARGPARSE_DEBUG", debug)
    lines = _error_lines(["fit", "--config", str(DEMO), "--trainer.max_epohcs", "1"], capsys, monkeypatch)
    assert lines[0] == "error: unrecognized arguments: --trainer.max_epohcs 1"


def test_a_missing_argument_of_a_subcommand_names_it_in_the_tip(capsys, monkeypatch):
    assert _error_lines(["fit"], capsys, monkeypatch) == [
        "error: the following arguments are required: fit.data, fit.model",
        "give the recipe with --config (e.g. recipes/coco_mask_rcnn.yaml), or a run's own copy of it, "
        "lightning_logs/version_N/config.yaml in its default_root_dir; `vitdense predict --ckpt_path` needs "
        "no recipe",
        "tip: `vitdense fit --help` lists the accepted options",
    ]


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (
            ["export", "--ckpt_path", "x.ckpt", "--outptu", "x.pt2"],
            "did you mean 'output'? ('outptu' is not one)",
        ),
        (
            ["predict", "--ckpt_path", "x.ckpt", "--images", "x.png", "--score_treshold", "0.3"],
            "did you mean 'score_threshold'? ('score_treshold' is not one)",
        ),
    ],
)
def test_a_misspelt_option_of_the_argparse_commands_gets_the_closest_option(args, hint, capsys, monkeypatch):
    lines = _error_lines(args, capsys, monkeypatch)
    assert lines[0].startswith("error: unrecognized arguments: ")
    assert lines[1:] == [hint, f"tip: `vitdense {args[0]} --help` lists the accepted options"]


def test_no_suggestion_without_a_close_name(tmp_path, capsys, monkeypatch):
    lines = _error_lines(["fit", "--config", str(DEMO), "--data.init_args.zzz", "2"], capsys, monkeypatch)
    assert any("Option 'zzz' is not accepted" in line for line in lines)
    assert not any(line.startswith("did you mean") for line in lines)
    lines = _error_lines(["fti"], capsys, monkeypatch)
    assert lines == [
        "error: argument subcommand: invalid choice: 'fti' "
        "(choose from 'fit', 'validate', 'test', 'predict')",
        "tip: `vitdense --help` lists the accepted options",
    ]


def test_check_data_names_itself_in_the_tip(capsys, monkeypatch):
    args = ["check-data", "--config", str(DEMO), "--data.init_args.batch_sise", "2"]
    lines = _error_lines(args, capsys, monkeypatch)
    assert lines[-2:] == [
        "did you mean 'batch_size' of vitdense.datamodules.ShapesDataModule? ('batch_sise' is not one)",
        "tip: `vitdense check-data --help` lists the accepted options",
    ]


def test_the_commands_help_lists_the_commands_beside_lightnings(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vitdense", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for command in ["fit", "validate", "test", "predict", "vitdense check-data", "vitdense export"]:
        assert command in help_text
