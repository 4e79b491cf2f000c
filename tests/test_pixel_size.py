"""Pixel size from TIFF metadata: vendor SEM tags, OME, ImageJ, resolution tags; never a dpi default."""

import logging
import struct

import numpy as np
import pytest
import tifffile
from PIL import Image

from bigseg import io

IMG = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)


def _px(path):
    with tifffile.TiffFile(path) as tif:
        return io.pixel_size_from_tiff(tif)


def _fei_tag(pixel_width, code=34682):
    text = f"[User]\r\nUser=demo\r\n[Beam]\r\nHV=5000\r\n[Scan]\r\nPixelWidth={pixel_width}\r\nPixelHeight=2.5e-09\r\n"
    return [(code, "s", 0, text, True)]


def _zeiss_tag(line, key="AP_IMAGE_PIXEL_SIZE"):
    # the CZ_SEM layout tifffile parses: unnamed numbers, then an UPPER-CASE key line and a "Name = value unit" line
    text = "\r\n".join(["0", "0", "DP_DETECTOR_TYPE", "Detector = SE2", key, line, "AP_MAG", "Mag = 50.00 K X"])
    return [(34118, "s", 0, text.encode("latin-1"), True)]   # SmartSEM writes the micro sign as byte 0xB5


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_dpi_resolution_tags_are_no_pixel_size(tmp_path, dpi):
    p = tmp_path / "dpi.tif"
    tifffile.imwrite(p, IMG, resolution=(dpi, dpi), resolutionunit="INCH")
    assert _px(p) == (None, None)
    img = io.read_image(p)
    assert (img.pixel_size, img.pixel_size_source) == (None, None)


def test_dpi_in_centimetres_and_unit_none_are_no_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", IMG, resolution=(28.3465, 28.3465), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "none.tif", IMG, resolution=(1e5, 1e5), resolutionunit="NONE")
    assert _px(tmp_path / "cm.tif") == (None, None)
    assert _px(tmp_path / "none.tif") == (None, None)


def test_fine_resolution_tags_are_a_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", IMG, resolution=(1e5, 1e5), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "in.tif", IMG, resolution=(254000, 254000), resolutionunit="INCH")
    um, source = _px(tmp_path / "cm.tif")
    assert um == pytest.approx(0.1) and source == "tiff-resolution"
    um, source = _px(tmp_path / "in.tif")
    assert um == pytest.approx(0.1) and source == "tiff-resolution"


@pytest.mark.parametrize("unit, expected", [("um", 0.05), ("micron", 0.05), ("\\u00B5m", 0.05), ("nm", 5e-5)])
def test_imagej_calibration(tmp_path, unit, expected):
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, IMG, imagej=True, resolution=(1 / 0.05, 1 / 0.05), metadata={"unit": unit})
    um, source = _px(p)
    assert um == pytest.approx(expected) and source == "imagej"


def test_imagej_inch_calibration_of_a_72_dpi_image_is_no_pixel_size(tmp_path):
    # what ImageJ records when it opens and saves a 72-dpi picture
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, IMG, imagej=True, resolution=(72, 72), metadata={"unit": "inch"})
    assert _px(p) == (None, None)


@pytest.mark.parametrize("size, unit, expected", [(0.02, "µm", 0.02), (20, "nm", 0.02), (None, None, 0.02)])
def test_ome_physical_size(tmp_path, size, unit, expected):
    meta = {"PhysicalSizeX": 0.02, "PhysicalSizeY": 0.02}     # no unit: the OME schema's default, um
    if unit:
        meta = {"PhysicalSizeX": size, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    p = tmp_path / "o.ome.tif"
    tifffile.imwrite(p, IMG, ome=True, metadata=meta)
    um, source = _px(p)
    assert um == pytest.approx(expected) and source == "ome"


def test_ome_copy_of_a_dpi_default_is_no_pixel_size(tmp_path, caplog):
    # a converter that turned 72 dpi into PhysicalSizeX = 25400 / 72 um
    p = tmp_path / "o.ome.tif"
    tifffile.imwrite(p, IMG, ome=True, metadata={"PhysicalSizeX": 25400 / 72, "PhysicalSizeXUnit": "µm"})
    with caplog.at_level(logging.WARNING, logger="bigseg"):
        assert _px(p) == (None, None)
    assert "dpi default" in caplog.text


@pytest.mark.parametrize("code", [34682, 34680])   # FEI_HELIOS, FEI_SFEG
def test_fei_pixel_width_in_metres(tmp_path, code):
    p = tmp_path / "fei.tif"
    # the 72-dpi tags every FEI TIFF also carries must not win
    tifffile.imwrite(p, IMG, resolution=(72, 72), resolutionunit="INCH", extratags=_fei_tag("2.5e-09", code))
    um, source = _px(p)
    assert um == pytest.approx(2.5e-3) and source == "fei"


@pytest.mark.parametrize("line, expected", [("Image Pixel Size = 2.5 nm", 2.5e-3),
                                            ("Image Pixel Size = 1.25 µm", 1.25),
                                            ("Image Pixel Size = 500 pm", 5e-4)])
def test_zeiss_image_pixel_size(tmp_path, line, expected):
    p = tmp_path / "zeiss.tif"
    tifffile.imwrite(p, IMG, extratags=_zeiss_tag(line))
    with tifffile.TiffFile(p) as tif:
        assert tif.sem_metadata["ap_image_pixel_size"][0] == "Image Pixel Size"    # tifffile parsed it
    um, source = _px(p)
    assert um == pytest.approx(expected) and source == "zeiss"


def test_zeiss_pixel_size_key(tmp_path):
    p = tmp_path / "zeiss.tif"
    tifffile.imwrite(p, IMG, extratags=_zeiss_tag("Pixel Size = 3.0 nm", key="AP_PIXEL_SIZE"))
    um, source = _px(p)
    assert um == pytest.approx(3e-3) and source == "zeiss"


def test_vendor_tags_win_over_ome_and_imagej(tmp_path):
    p = tmp_path / "both.ome.tif"
    tifffile.imwrite(p, IMG, ome=True, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm"},
                     extratags=_fei_tag("2.5e-09"))
    assert _px(p)[1] == "fei"


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-2.5e-09", "1", "1e-15", "abc"])
def test_absurd_fei_value_is_ignored_and_the_next_source_used(tmp_path, value, caplog):
    p = tmp_path / "fei.tif"
    tifffile.imwrite(p, IMG, extratags=_fei_tag(value))
    with caplog.at_level(logging.WARNING, logger="bigseg"):
        assert _px(p) == (None, None)
    tifffile.imwrite(p, IMG, resolution=(1e5, 1e5), resolutionunit="CENTIMETER", extratags=_fei_tag(value))
    um, source = _px(p)
    assert um == pytest.approx(0.1) and source == "tiff-resolution"


@pytest.mark.parametrize("per_cm, den", [(4_000_000_000, 1), (1, 1), (5, 0)])
def test_absurd_resolution_tags_are_ignored(tmp_path, per_cm, den):
    p = tmp_path / "r.tif"
    tifffile.imwrite(p, IMG, resolution=((per_cm, 1), (per_cm, 1)), resolutionunit="CENTIMETER", byteorder="<")
    if den != 1:   # tifffile refuses to write a zero denominator: patch the rational in place
        with tifffile.TiffFile(p) as tif:
            offset = tif.pages.first.tags["XResolution"].valueoffset
        with open(p, "r+b") as f:
            f.seek(offset + 4)
            f.write(struct.pack("<I", den))
    assert _px(p) == (None, None)


def test_zero_imagej_and_ome_values_are_ignored(tmp_path):
    tifffile.imwrite(tmp_path / "o.ome.tif", IMG, ome=True, metadata={"PhysicalSizeX": 0, "PhysicalSizeXUnit": "µm"})
    tifffile.imwrite(tmp_path / "ij.tif", IMG, imagej=True, resolution=((0, 1), (0, 1)), metadata={"unit": "um"})
    assert _px(tmp_path / "o.ome.tif") == (None, None)
    assert _px(tmp_path / "ij.tif") == (None, None)


@pytest.mark.parametrize("kind", ["plain", "imagej", "ome", "fei"])
def test_read_image_and_chunked_image_agree(tmp_path, kind):
    p = tmp_path / f"{kind}.tif"
    args = dict(tile=(16, 16))
    expected = {"plain": (None, None), "imagej": (0.05, "imagej"), "ome": (0.02, "ome"), "fei": (2.5e-3, "fei")}[kind]
    if kind == "plain":
        args.update(resolution=(72, 72), resolutionunit="INCH")
    elif kind == "imagej":
        args.update(imagej=True, resolution=(20, 20), metadata={"unit": "micron"})
    elif kind == "ome":
        args.update(ome=True, metadata={"PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "µm"})
    else:
        args.update(extratags=_fei_tag("2.5e-09"))
    tifffile.imwrite(p, IMG, **args)
    assert io.is_chunked_input(p)
    img = io.read_image(p)
    with io.ChunkedImage(p) as ch:
        chunked = (ch.pixel_size, ch.pixel_size_source)
    whole = (img.pixel_size, img.pixel_size_source)
    assert whole[1] == chunked[1] == expected[1]
    if expected[0] is None:
        assert whole[0] is None and chunked[0] is None
    else:
        assert whole[0] == pytest.approx(expected[0]) and chunked[0] == whole[0]
        assert isinstance(whole[0], float)


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP")])
def test_pil_dpi_is_no_pixel_size(tmp_path, suffix, fmt):
    p = tmp_path / f"a{suffix}"
    Image.fromarray((IMG // 256).astype(np.uint8)).save(p, fmt, dpi=(2540000, 2540000))   # would be 0.01 um
    with Image.open(p) as im:
        assert "dpi" in im.info    # the dpi is there, and still no pixel size
    img = io.read_image(p)
    assert (img.pixel_size, img.pixel_size_source) == (None, None)


@pytest.mark.parametrize("scale, unit, expected", [(0.05, "micrometer", 0.05), (50, "nanometer", 0.05),
                                                   (0.0, "micrometer", None), (5e4, "millimeter", None)])
def test_ome_zarr_scale(tmp_path, scale, unit, expected):
    import zarr

    g = zarr.open_group(str(tmp_path / "i.zarr"), mode="w", zarr_format=3)
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": unit}, {"name": "x", "type": "space", "unit": unit}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [scale, scale]}]}]}]}
    g.create_array("0", data=(IMG // 256).astype(np.uint8), chunks=(32, 32))
    with io.ChunkedImage(tmp_path / "i.zarr") as ch:
        if expected is None:
            assert (ch.pixel_size, ch.pixel_size_source) == (None, None)
        else:
            assert ch.pixel_size == pytest.approx(expected) and ch.pixel_size_source == "ome-zarr"
