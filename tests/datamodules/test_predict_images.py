"""Tests for vitdense.datamodules.predict_images: what a folder or a glob holds besides its images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, features

from vitdense.datamodules import EvalTransform, PredictImages, find_images
from vitdense.datamodules.predict_images import passed_over_report


def _folder(tmp_path: Path) -> Path:
    """An image, and what a careless user's photo folder holds besides it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (20, 20)).save(folder / "a.png")
    (folder / "b.png").symlink_to("a.png")  # an image of its own name: predicted as such
    (folder / "notes.txt").write_text("not an image")
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")  # no HEIC plugin in Pillow
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / ".DS_Store").write_bytes(b"\x00")  # hidden: no one means it
    (folder / "sub").mkdir()  # sub-folders are not searched (named when they hold images)
    return folder


def test_a_folder_names_every_file_it_does_not_predict(tmp_path: Path) -> None:
    """Before, all of them were left out without a word."""
    folder = _folder(tmp_path)
    dataset = PredictImages(folder, EvalTransform(56))
    assert dataset.files == [folder / "a.png", folder / "b.png"]
    why = dict(dataset.passed_over)
    assert sorted(why) == [str(folder / name) for name in ("gone.png", "loop.png", "notes.txt", "phone.heic")]
    assert why[str(folder / "gone.png")] == "a link that cannot be followed (No such file or directory)"
    assert why[str(folder / "loop.png")].startswith("a link that cannot be followed (Too many levels")
    assert why[str(folder / "notes.txt")].startswith("not an image file vitdense reads (its suffix is none")
    assert why[str(folder / "phone.heic")] == (
        "a HEIC image, which this Pillow has no decoder for; convert it to PNG or JPEG"
    )
    report = passed_over_report(dataset.passed_over)
    assert report.startswith("4 file(s) found with the images were not predicted:\n  ")
    assert f"\n  {folder / 'notes.txt'}: not an image file" in report


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_an_avif_image_is_predicted_where_pillow_decodes_it(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20), (200, 0, 0)).save(tmp_path / "a.avif")
    dataset = PredictImages(tmp_path, EvalTransform(56))
    assert dataset.files == [tmp_path / "a.avif"] and not dataset.passed_over
    assert dataset[0][1]["orig_size"] == (20, 20)


def test_a_glob_names_what_it_matched_and_reads_each_file_once(tmp_path: Path) -> None:
    """A link looping back into the folder made '**' find each image under some 40 paths."""
    folder = _folder(tmp_path)
    (folder / "again").symlink_to(".")
    files, passed_over = find_images(str(folder / "**" / "*"))
    assert files == [folder / "a.png", folder / "b.png"]
    assert {Path(name).name for name, _ in passed_over} == {"gone.png", "loop.png", "notes.txt", "phone.heic"}
    pngs, links = find_images(str(folder / "*.png"))
    assert pngs == [folder / "a.png", folder / "b.png"]
    assert {Path(name).name for name, _ in links} == {"gone.png", "loop.png"}


def test_no_image_at_all_says_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "phone.heic").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"holds no image file .*phone.heic passed over: a HEIC image"):
        PredictImages(tmp_path, EvalTransform(56))
    with pytest.raises(ValueError, match=r"no image file matches .*phone.heic passed over: a HEIC image"):
        PredictImages(str(tmp_path / "*"), EvalTransform(56))


def test_the_report_of_many_passed_over_files_is_cut_short() -> None:
    report = passed_over_report([(f"f{i}.txt", "not an image") for i in range(12)])
    assert report.count("not an image") == 10 and report.endswith("\n  ... and 2 more")
    assert passed_over_report([]) == ""
