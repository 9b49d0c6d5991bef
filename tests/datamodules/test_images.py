"""Tests for vitdense.datamodules.images: TIFFs Pillow cannot read, non-finite samples, one reader for all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from vitdense.datamodules import (
    BadDataError,
    EvalTransform,
    PredictImages,
    SegmentationEvalTransform,
    SegmentationFolder,
    SegmentationTrainTransform,
    as_rgb_array,
    check_datasets,
)
from vitdense.datamodules.images import image_conversions, image_sizes, read_image, scale_to_uint8

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _rgb16() -> np.ndarray:
    return RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)


def test_3_band_16_bit_tiffs_are_read_as_1_band_ones_are_scaled() -> None:
    """Pillow refused band-by-band ones or garbled them (a 16-bit planar RGB came out as other colours)."""
    samples = _rgb16()
    expected = np.round(samples / 257).astype(np.uint8)
    for name, layout in [("contiguous", {}), ("planar", {"planarconfig": "separate"})]:
        path = Path(f"{name}.tif")
        stored = np.moveaxis(samples, 2, 0) if layout else samples
        tifffile.imwrite(path, stored, photometric="rgb", **layout)
        np.testing.assert_array_equal(read_image(path), expected, err_msg=name)
        assert image_conversions(path) == [
            ("mode_high_bit_depth", "is a 3-band 16-bit TIFF (read with tifffile): rescaled to 8 bit")
        ]


def test_float_and_gdal_style_tiffs_are_read() -> None:
    unit = RNG.random((20, 30, 3), dtype=np.float32)
    tifffile.imwrite("unit.tif", unit, photometric="rgb")
    np.testing.assert_array_equal(read_image("unit.tif"), np.round(unit.astype(np.float64) * 255))
    wide = unit * 1000 - 200  # not in [0, 1]: by its min/max, all bands alike
    tifffile.imwrite("wide.tif", wide, photometric="rgb")
    lo, hi = wide.min(), wide.max()
    np.testing.assert_array_equal(read_image("wide.tif"), np.round((wide - lo) / (hi - lo) * 255))
    # GDAL writes 3-band images as "min-is-black" samples, which Pillow cannot identify.
    rgb8 = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite("gdal.tif", rgb8, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image("gdal.tif"), rgb8)
    assert image_conversions("gdal.tif")[0][0] == "mode_other"


def test_a_16_bit_rgba_tiff_is_composited_over_black() -> None:
    rgba = _rgb16()
    alpha = np.zeros((20, 30, 1), np.uint16)
    alpha[:, :15] = 65535
    stored = np.concatenate([rgba, alpha], 2)
    tifffile.imwrite("rgba.tif", stored, photometric="rgb", extrasamples=["unassalpha"])
    rgb = read_image("rgba.tif")
    np.testing.assert_array_equal(rgb[:, :15], np.round(rgba[:, :15] / 257))
    assert not rgb[:, 15:].any()
    assert [kind for kind, _ in image_conversions("rgba.tif")] == ["mode_high_bit_depth", "mode_alpha"]


@pytest.mark.parametrize("writer", ["pillow", "tifffile"])
def test_a_nan_or_inf_sample_is_black_and_the_rest_is_rescaled_over_finite_values(writer: str) -> None:
    """One NaN made the min/max NaN, and the whole image black."""
    values = np.linspace(10, 20, 20 * 30, dtype=np.float32).reshape(20, 30)
    values[0, 0], values[0, 1] = np.nan, np.inf
    if writer == "pillow":
        Image.fromarray(values).save("f.tif")  # mode F
    else:
        tifffile.imwrite("f.tif", values.astype(np.float64))  # 64-bit: Pillow cannot open it
    gray = read_image("f.tif")[..., 0]
    assert gray[0, 0] == gray[0, 1] == 0
    assert gray[0, 2] == 0 and gray[-1, -1] == 255 and 120 < gray[10, 15] < 135
    notes = dict(image_conversions("f.tif"))
    assert notes["non_finite_pixels"].startswith("has 2 NaN or infinite samples: set to 0 (black)")


def test_scaling_rules() -> None:
    assert scale_to_uint8(np.array([[0, 65535]], np.uint16)).tolist() == [[0, 255]]
    assert scale_to_uint8(np.array([[0, 32896]], np.int32)).tolist() == [[0, 128]]  # fits 16 bit: /257
    assert scale_to_uint8(np.array([[-100, 100]], np.int16)).tolist() == [[0, 255]]  # by its min/max
    assert scale_to_uint8(np.array([[0, 1 << 20]], np.int32)).tolist() == [[0, 255]]
    assert scale_to_uint8(np.array([[np.nan, np.nan]], np.float32)).tolist() == [[0, 0]]


def _pyramid(path: str) -> None:
    with tifffile.TiffWriter(path) as tif:
        full, half = (RNG.integers(0, 256, (side, side, 3), dtype=np.uint8) for side in (64, 32))
        tif.write(full, subifds=1, tile=(16, 16), photometric="rgb")
        tif.write(half, subfiletype=1, tile=(16, 16), photometric="rgb")  # reduced resolution


def _bands(path: str, samples: np.ndarray) -> None:
    tifffile.imwrite(path, samples, photometric="minisblack", planarconfig="contig")


def _stack(path: str) -> None:
    with tifffile.TiffWriter(path) as tif:
        for _ in range(3):
            tif.write(RNG.integers(0, 256, (20, 30), dtype=np.uint8))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (_stack, r"is a TIFF of 3 images \(the pages of a stack"),  # Pillow read the first page, silently
        (_pyramid, r"is a TIFF of 2 images \(.* the levels of a pyramid\)"),
        (
            lambda p: _bands(p, _rgb16()[..., [0, 1, 2, 0]]),  # e.g. B, G, R, NIR
            r"has 4 bands that are neither grayscale nor RGB .* gdal_translate",
        ),
        (
            lambda p: _bands(p, RNG.integers(0, 256, (20, 30, 5), dtype=np.uint8)),
            "has 5 bands that are neither grayscale nor RGB",
        ),
    ],
)
def test_tiffs_of_several_images_or_of_bands_that_are_no_colours_are_refused(write, message: str) -> None:
    write("odd.tif")
    for read in (read_image, image_sizes, image_conversions):
        with pytest.raises(ValueError, match=message):
            read("odd.tif")
    with pytest.raises(BadDataError, match=f"odd.tif cannot be decoded \\(ValueError: {message}"):
        as_rgb_array("odd.tif")


def test_a_compression_tifffile_cannot_decode_falls_back_to_pillow_where_pillow_reads_right() -> None:
    gray = (np.arange(600).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(gray).save("lzw.tif", compression="tiff_lzw")  # LZW needs imagecodecs in tifffile
    np.testing.assert_array_equal(read_image("lzw.tif")[..., 0], np.round(gray / 257))
    planar = {"photometric": "rgb", "planarconfig": "separate"}
    tifffile.imwrite("planar.tif", np.stack([gray] * 3), compression="zlib", **planar)
    with tifffile.TiffFile("planar.tif", mode="r+b") as tif:
        tif.pages.first.tags["Compression"].overwrite(5)  # LZW, where Pillow garbles band-by-band samples
    with pytest.raises(ValueError, match="compressed with LZW, which tifffile .* imagecodecs package"):
        read_image("planar.tif")


def test_a_tiff_larger_than_pillow_decodes_is_refused_as_pillow_refuses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tifffile.imwrite("big.tif", _rgb16(), photometric="rgb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels > 2 x 100
    with pytest.raises(Image.DecompressionBombError, match="600 pixels"):
        read_image("big.tif")


def test_every_reader_reads_a_16_bit_rgb_tiff_alike(tmp_path: Path) -> None:
    """Training, evaluation, the data check and predict (with its overlays, via as_rgb_array)."""
    images, labels = tmp_path / "img", tmp_path / "lbl"
    images.mkdir()
    labels.mkdir()
    samples = _rgb16()
    planar = {"photometric": "rgb", "planarconfig": "separate"}
    tifffile.imwrite(images / "deep.tif", np.moveaxis(samples, 2, 0), **planar)
    Image.fromarray(RNG.integers(0, 3, (20, 30), dtype=np.uint8)).save(labels / "deep.png")
    expected = np.round(samples / 257).astype(np.uint8)
    np.testing.assert_array_equal(as_rgb_array(images / "deep.tif"), expected)
    evaluation = SegmentationFolder(images, labels, SegmentationEvalTransform((30, 20)), num_classes=3)
    np.testing.assert_array_equal(evaluation[0][0].permute(1, 2, 0).numpy(), expected)
    train = SegmentationTrainTransform(28, (30, 20), (1.0, 1.0), 1.0, 255)
    assert SegmentationFolder(images, labels, train, num_classes=3)[0][0].shape == (3, 28, 28)
    report = check_datasets({"val": evaluation})
    assert report.errors == 0 and report.splits[0].counts("note") == {"mode_high_bit_depth": 1}
    predicted = PredictImages(images, EvalTransform(56))
    assert predicted.files == [images / "deep.tif"] and predicted[0][1]["orig_size"] == (20, 30)
