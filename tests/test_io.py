import numpy as np
import pytest
import tifffile
from PIL import Image

from bigseg import io
from bigseg.demo import BAR_ROWS, add_data_bar, synth_micrograph


def test_reads_common_formats_to_grey(tmp_path):
    g8 = (np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)
    Image.fromarray(g8).save(tmp_path / "a.png")
    Image.fromarray(g8).save(tmp_path / "b.bmp")
    Image.fromarray(np.stack([g8] * 3, -1)).save(tmp_path / "c.png")
    Image.fromarray(np.dstack([g8] * 3 + [np.full_like(g8, 255)])).save(tmp_path / "d.png")
    tifffile.imwrite(tmp_path / "e.tif", g8.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "f.tif", np.stack([g8] * 3, -1), photometric="rgb")
    for name in ["a.png", "b.bmp", "c.png", "d.png", "f.tif"]:
        img = io.read_image(tmp_path / name)
        assert img.data.shape == (48, 40) and img.data.dtype == np.uint8, name
        np.testing.assert_array_equal(img.data, g8)
    e = io.read_image(tmp_path / "e.tif")
    assert e.data.dtype == np.uint16 and np.array_equal(e.data, g8.astype(np.uint16) * 257)


def test_tiff_resolution_gives_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "r.tif", np.zeros((10, 10), np.uint8), resolution=(20000.0, 20000.0),
                     resolutionunit="CENTIMETER")
    assert io.read_image(tmp_path / "r.tif").pixel_size == pytest.approx(0.5)


def test_corrupt_file_error_names_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(io.ImageReadError, match="broken.png"):
        io.read_image(bad)


def test_detects_the_sem_data_bar():
    img, _ = synth_micrograph((120, 150), seed=1)
    framed = (add_data_bar(img, 28) * 255).astype(np.uint8)
    assert io.detect_data_bar(framed) == BAR_ROWS
    assert io.detect_data_bar((img * 255).astype(np.uint8)) == 0
    assert io.detect_data_bar(np.full((50, 50), 7, np.uint8)) == 0
    cropped, n = io.crop_rows(framed, "auto")
    assert n == BAR_ROWS and cropped.shape == img.shape


def test_find_images_folder_glob_and_duplicate_stems(tmp_path):
    (tmp_path / "x").mkdir()
    for name in ["x/a.png", "x/b.tif", "x/notes.txt", "c.png"]:
        (tmp_path / name).write_bytes(b"")
    found = io.find_images([tmp_path / "x", str(tmp_path / "*.png")])
    assert [p.name for p in found] == ["a.png", "b.tif", "c.png"]
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="'a'"):
        io.image_ids(io.find_images([tmp_path / "x", tmp_path / "a.png"]))
    with pytest.raises(FileNotFoundError):
        io.find_images([tmp_path / "nope"])


def test_atomic_write_leaves_no_temp(tmp_path):
    io.atomic_write_text(tmp_path / "s" / "f.txt", "hello")
    assert (tmp_path / "s" / "f.txt").read_text() == "hello"
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["f.txt"]


def test_outputs_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from bigseg.model import Model

    old = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "a.txt", "x")
        io.write_tiled_tiff(tmp_path / "b.tif", iter([np.zeros((16, 16), np.uint8)]), (10, 12), np.uint8, 16)
        Model(H=np.eye(2), scale_lo=np.zeros(2), scale_hi=np.ones(2), feature_names=["a", "b"], settings={},
              report={}).save(tmp_path / "model")
    finally:
        os.umask(old)
    for name, mode in (("a.txt", 0o644), ("b.tif", 0o644), ("model", 0o755)):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


@pytest.mark.skipif(not (__import__("conftest").METALDAM / "images").exists(), reason="MetalDAM not beside the project")
def test_metaldam_frames_crop_to_their_masks():
    from conftest import METALDAM

    for stem, bar in [("micrograph0", 50), ("micrograph4", 64)]:
        img = io.read_image(METALDAM / "images" / f"{stem}.jpg")
        assert io.detect_data_bar(img.data) == bar
        mask = io.read_label_mask(METALDAM / "labels" / f"{stem}.png")
        cropped, _ = io.crop_rows(img.data, 65)
        assert cropped.shape == mask.shape


def test_pixel_size_sidecar_errors_name_file_and_line(tmp_path):
    good = tmp_path / "px.csv"
    good.write_text("image,pixel_size_um\na.tif,0.5\nb,0.25\n")
    assert io.read_pixel_sizes(good) == {"a": 0.5, "b": 0.25}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,pixel_size_um\na,0.5\nb,-1\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3"):
        io.read_pixel_sizes(bad)
    (tmp_path / "cols.csv").write_text("name,size\na,1\n")
    with pytest.raises(ValueError, match="image,pixel_size_um"):
        io.read_pixel_sizes(tmp_path / "cols.csv")
