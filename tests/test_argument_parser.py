"""An option error from the real CLI: jsonargparse's message and the closest valid name, without the usage."""

import sys
from pathlib import Path

import pytest
import yaml

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
