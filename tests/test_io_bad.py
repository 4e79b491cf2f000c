"""Bad or unusual input files: each gives a correct image or one clear error line naming the file."""

import contextlib
import itertools
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from bigseg import io


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _gradient_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 127 // (h + w)], -1).astype(np.uint8)


def _read_error(func, *args, **kwargs) -> str:
    """The message of the ImageReadError ``func`` raises; it must be one line."""
    with pytest.raises(io.ImageReadError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _sparse_tiled_tiff(path, side: int, tile: int = 1024) -> None:
    """A tiled zlib TIFF declaring ``side`` x ``side`` pixels whose tiles are all empty but the first."""
    n_tiles = (-(-side // tile)) ** 2
    tiles = itertools.chain([np.zeros((tile, tile), np.uint8)], itertools.repeat(None, n_tiles - 1))
    tifffile.imwrite(path, tiles, shape=(side, side), dtype=np.uint8, tile=(tile, tile), compression="zlib")


# --- colour modes and orientation of PIL-read files ------------------------------------

def test_cmyk_jpeg_reads_as_its_grey(tmp_path):
    rgb = _gradient_rgb()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
    grey = io.read_image(tmp_path / "cmyk.jpg").data.astype(np.float32)
    expected = _luma(rgb)
    assert grey.shape == expected.shape
    assert np.corrcoef(grey.ravel(), expected.ravel())[0, 1] > 0.99
    assert np.abs(grey - expected).mean() < 3


@pytest.mark.parametrize("mode", ["1", "LA", "RGBA", "P", "I;16"])
def test_pil_modes_read_as_their_grey(tmp_path, mode):
    rgb = _gradient_rgb()
    im = Image.fromarray(rgb).convert(mode)
    im.save(tmp_path / "m.png")
    expected = np.asarray(im.convert("L"), np.float32)
    if mode == "1":
        expected = np.asarray(im, np.float32) * 255
    got = io.read_image(tmp_path / "m.png").data.astype(np.float32)
    assert np.abs(got - expected).max() <= 1, mode


def test_exif_orientation_is_applied(tmp_path):
    g = (np.arange(30 * 50) % 251).astype(np.uint8).reshape(30, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated 90 degrees clockwise
    Image.fromarray(g).save(tmp_path / "o.png", exif=exif)
    Image.fromarray(g).save(tmp_path / "o.jpg", exif=exif, quality=95)
    png = io.read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(png.data, np.rot90(g, -1))
    assert png.original_shape == (50, 30)
    jpg = io.read_image(tmp_path / "o.jpg").data
    assert jpg.shape == (50, 30)
    assert np.abs(jpg.astype(np.float32) - np.rot90(g, -1)).mean() < 4


# --- non-finite float pixels -------------------------------------------------------------

def test_nan_or_infinite_pixels_are_refused_by_count(tmp_path):
    data = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    data.flat[[3, 70, 500]] = [np.nan, np.inf, -np.inf]
    data.flat[1000:1009] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", data)
    message = _read_error(io.read_image, tmp_path / "f.tif")
    assert message.startswith(f"{tmp_path / 'f.tif'}: 12 of 4096 pixels are NaN or infinite")
    tifffile.imwrite(tmp_path / "all.tif", np.full((16, 16), np.nan, np.float32))
    assert "256 of 256 pixels" in _read_error(io.read_image, tmp_path / "all.tif")
    tifffile.imwrite(tmp_path / "const.tif", np.full((16, 16), 0.25, np.float32))
    assert np.all(io.read_image(tmp_path / "const.tif").data == 0.25)


def test_chunked_nan_band_is_refused(tmp_path):
    data = np.ones((96, 64), np.float32)
    data[70, 5] = np.nan
    tifffile.imwrite(tmp_path / "t.tif", data, tile=(32, 32))
    with io.ChunkedImage(tmp_path / "t.tif") as img:
        assert img.rows(0, 64).shape == (64, 64)
        message = _read_error(img.rows, 64, 96)
    assert message.startswith(f"{tmp_path / 't.tif'}: 1 of 2048 pixels in rows 64-95 are NaN or infinite")


# --- pages, planes and photometric interpretation of TIFFs ----------------------------------

def _planes():
    return (np.arange(3 * 32 * 40) % 253).astype(np.uint8).reshape(3, 32, 40) + np.arange(3, dtype=np.uint8)[:, None, None]


@pytest.mark.parametrize("kind", ["pages", "tiled pages", "appended", "imagej", "ome"])
def test_several_grey_pages_give_the_first_and_a_warning(tmp_path, caplog, kind):
    planes = _planes()
    path = tmp_path / "s.tif"
    if kind == "appended":
        with tifffile.TiffWriter(path) as tif:
            for plane in planes:
                tif.write(plane)
    else:
        options = {"pages": {}, "tiled pages": {"tile": (16, 16)}, "imagej": {"imagej": True},
                   "ome": {"ome": True}}[kind]
        tifffile.imwrite(path, planes, photometric="minisblack", **options)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3
    with caplog.at_level(logging.WARNING, logger="bigseg"):
        img = io.read_image(path)
    np.testing.assert_array_equal(img.data, planes[0])
    assert f"{path}: 3 pages; using the first (one image per file)" in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bigseg"), io.ChunkedImage(path) as chunked:
        assert chunked.shape == (32, 40)
        np.testing.assert_array_equal(chunked.rows(0, 32), planes[0])
    assert f"{path}: 3 pages; using the first (one image per file)" in caplog.messages


@pytest.mark.parametrize("planar", [False, True])
def test_rgb_tiff_is_one_image(tmp_path, caplog, planar):
    rgb = _gradient_rgb()
    data = np.moveaxis(rgb, -1, 0).copy() if planar else rgb
    tifffile.imwrite(tmp_path / "c.tif", data, photometric="rgb", planarconfig="separate" if planar else None,
                     tile=(16, 16))
    with caplog.at_level(logging.WARNING, logger="bigseg"):
        img = io.read_image(tmp_path / "c.tif")
        with io.ChunkedImage(tmp_path / "c.tif") as chunked:
            band = chunked.rows(0, 48)
    expected = np.rint(_luma(rgb)).astype(np.uint8)
    assert np.abs(img.data.astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(band, img.data)
    assert img.original_shape == (48, 64, 3)
    assert not caplog.messages


def test_tiff_photometric_interpretations(tmp_path):
    rgb = _gradient_rgb()
    grey = np.rint(_luma(rgb)).astype(np.uint8)
    cmyk = np.concatenate([255 - rgb, np.zeros(rgb.shape[:2] + (1,), np.uint8)], -1)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    tifffile.imwrite(tmp_path / "white.tif", 255 - grey, photometric="miniswhite")
    ramp = (np.arange(256) * 257).astype(np.uint16)
    colormap = np.stack([ramp, ramp[::-1], np.full(256, 128 * 257, np.uint16)])
    index = (np.arange(48 * 64) % 256).astype(np.uint8).reshape(48, 64)
    tifffile.imwrite(tmp_path / "pal.tif", index, photometric="palette", colormap=colormap)
    for name in ("cmyk.tif", "white.tif"):
        data = io.read_image(tmp_path / name).data
        assert data.dtype == np.uint8 and np.abs(data.astype(int) - grey).max() <= 1, name
    pal = io.read_image(tmp_path / "pal.tif").data
    expected = np.rint(_luma(np.moveaxis(colormap[:, index] // 257, 0, -1))).astype(np.uint8)
    assert pal.dtype == np.uint8 and np.abs(pal.astype(int) - expected).max() <= 1


# --- decompression bombs ------------------------------------------------------------------

@contextlib.contextmanager
def _peak_memory():
    """The most bytes Python and numpy held at once inside the block (tracemalloc): a refusal "before any
    pixel is read" checked by what it allocated, not by how long it took on this machine."""
    import tracemalloc

    tracemalloc.start()
    peak = []
    try:
        yield lambda: peak[0]
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()

def test_huge_declared_tiff_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.tif"
    _sparse_tiled_tiff(path, 60000)
    assert path.stat().st_size < 100_000
    with _peak_memory() as peak:
        for reader in (io.read_image, io.ChunkedImage):
            message = _read_error(reader, path)
            assert message.startswith(f"{path}: declares 60000 x 60000 pixels")
            assert "set max_image_pixels" in message
        assert isinstance(io.is_chunked_input(path), bool)
    assert peak() < 20e6        # refused from the header: no pixel decoded (3.6 GB if it were)


def test_size_beyond_any_compression_ratio_is_refused(tmp_path):
    path = tmp_path / "ratio.tif"
    _sparse_tiled_tiff(path, 30000)  # 0.9 Gpx: under the pixel limit, but in a few KB
    with _peak_memory() as peak:
        for reader in (io.read_image, io.ChunkedImage):
            message = _read_error(reader, path)
            assert message.startswith(f"{path}: declares 30000 x 30000 pixels") and "5000 times" in message
    assert peak() < 20e6


def test_max_pixels_is_a_setting(tmp_path):
    g = np.zeros((40, 50), np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", g, tile=(16, 16))
    Image.fromarray(g).save(tmp_path / "s.png")
    for reader in (io.read_image, io.ChunkedImage):
        assert "declares 50 x 40 pixels" in _read_error(reader, tmp_path / "s.tif", max_pixels=1999)
    assert "declares 50 x 40 pixels" in _read_error(io.read_image, tmp_path / "s.png", max_pixels=1999)
    assert io.read_image(tmp_path / "s.png", max_pixels=2000).data.shape == (40, 50)
    with io.ChunkedImage(tmp_path / "s.tif", max_pixels=2000) as img:
        assert img.shape == (40, 50)


def test_huge_declared_png_is_refused(tmp_path):
    buf = tmp_path / "small.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buf)
    data = bytearray(buf.read_bytes())
    # IHDR is the first chunk: length, type, then width and height, then its CRC over type and data
    data[16:24] = struct.pack(">II", 60000, 60000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    message = _read_error(io.read_image, tmp_path / "bomb.png")
    assert message.startswith(f"{tmp_path / 'bomb.png'}: declares more than") and "set max_image_pixels" in message


def test_constant_compressed_tiffs_are_not_bombs(tmp_path):
    const = np.full((4096, 4096), 17, np.uint8)  # zlib packs this about 1000:1, the most it can
    tifffile.imwrite(tmp_path / "z.tif", const, compression="zlib", tile=(512, 512))
    with io.ChunkedImage(tmp_path / "z.tif") as img:
        assert img.shape == (4096, 4096) and np.all(img.rows(0, 512) == 17)
    tifffile.imwrite(tmp_path / "l.tif", const[:1024], compression="lzw")
    assert np.all(io.read_image(tmp_path / "l.tif").data == 17)


def test_zarr_limits_pixels_but_not_ratio(tmp_path):
    import zarr

    zarr.create_array(str(tmp_path / "huge.zarr"), shape=(60000, 60000), chunks=(4096, 4096), dtype="uint8")
    message = _read_error(io.ChunkedImage, tmp_path / "huge.zarr")
    assert message.startswith(f"{tmp_path / 'huge.zarr'}: declares 60000 x 60000 pixels")
    # a Zarr array of constant chunks is legitimate, however small its folder
    flat = zarr.create_array(str(tmp_path / "flat.zarr"), shape=(12288, 12288), chunks=(4096, 4096), dtype="uint8",
                             config={"write_empty_chunks": True})
    flat[...] = 0
    with io.ChunkedImage(tmp_path / "flat.zarr") as img:
        assert img.shape == (12288, 12288) and not np.any(img.rows(0, 2))
    # unwritten chunks would read as blank squares nobody can tell from the specimen: refused by name
    zarr.create_array(str(tmp_path / "sparse.zarr"), shape=(20000, 20000), chunks=(4096, 4096), dtype="uint8")
    assert "25 of 25 chunks of the image are missing" in _read_error(io.ChunkedImage, tmp_path / "sparse.zarr")


# --- compressed TIFFs as SEM software writes them ------------------------------------------

@pytest.mark.parametrize("compression", ["lzw", "jpeg"])
@pytest.mark.parametrize("tiled", [False, True])
def test_lzw_and_jpeg_tiffs_read(tmp_path, compression, tiled):
    g = (np.add.outer(np.arange(64), np.arange(80)) * 2 % 256).astype(np.uint8)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, g, compression=compression, tile=(16, 16) if tiled else None)
    assert io.is_chunked_input(path) == tiled
    whole = io.read_image(path).data
    with io.ChunkedImage(path) as img:
        banded = np.concatenate([img.rows(r, r + 16) for r in range(0, 64, 16)])
    np.testing.assert_array_equal(banded, whole)
    tolerance = 0 if compression == "lzw" else 12
    assert whole.dtype == np.uint8 and np.abs(whole.astype(int) - g).mean() <= tolerance


# --- folders with broken entries -------------------------------------------------------------

def test_broken_symlink_is_listed_and_reported(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    os.symlink(tmp_path / "gone.tif", folder / "b.tif")
    os.symlink(tmp_path / "gone.png", folder / "c.png")
    os.symlink(tmp_path / "gone.txt", folder / "d.txt")
    found = io.find_images([folder])
    assert [p.name for p in found] == ["a.png", "b.tif", "c.png"]
    assert [p.name for p in io.find_images([str(folder / "*.tif")])] == ["b.tif"]
    assert [p.name for p in io.find_images([folder / "b.tif"])] == ["b.tif"]
    for name, target in (("b.tif", "gone.tif"), ("c.png", "gone.png")):
        assert io.is_chunked_input(folder / name) is False
        for reader in (io.read_image, io.ChunkedImage):
            message = _read_error(reader, folder / name)
            assert message == f"{folder / name}: broken symbolic link to {tmp_path / target}"
