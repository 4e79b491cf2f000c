"""Images larger than memory: tiled preprocessing equals the whole frame, chunked inputs, tiled exports."""

import json

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from PIL import Image

from bigseg import clahe, config, io, pipeline, preprocess, synth
from bigseg.cli import main
from bigseg.demo import add_data_bar, synth_micrograph


@pytest.mark.parametrize("shape,chunk,kernel,percentiles,dtype", [
    ((703, 1024), (100, 130), None, (0.0, 100.0), np.uint8),
    ((500, 377), (64, 90), 37, (0.5, 99.5), np.uint8),
    ((301, 299), (301, 299), None, (0.0, 100.0), np.uint8),
    ((600, 500), (128, 77), 64, (1.0, 99.0), np.uint16),
])
def test_tiled_preprocessing_equals_the_whole_frame(shape, chunk, kernel, percentiles, dtype):
    rng = np.random.default_rng(1)
    img = rng.random(shape) * 60 + np.linspace(0, 150, shape[1])[None, :]
    img = (img * (200 if dtype == np.uint16 else 1)).astype(dtype)
    s = config.validate({"resize": "native", "clahe_kernel_size": kernel, "normalize_percentiles": list(percentiles)})
    whole = preprocess.preprocess_image(img, s)
    tiled = clahe.preprocess_graph(img, s, chunk).compute()
    np.testing.assert_array_equal(tiled, whole)           # bit for bit, seams and tile grid included


def test_tiled_preprocessing_of_constant_image_and_without_clahe():
    flat = np.full((200, 210), 7, np.uint8)
    s = config.validate({"resize": "native"})
    np.testing.assert_array_equal(clahe.preprocess_graph(flat, s, 64).compute(), preprocess.preprocess_image(flat, s))
    img = np.random.default_rng(0).integers(0, 256, (150, 170), dtype=np.uint8)
    s = config.validate({"resize": "native", "clahe": False, "normalize_percentiles": [2.0, 98.0]})
    np.testing.assert_array_equal(clahe.preprocess_graph(img, s, 50).compute(), preprocess.preprocess_image(img, s))


def test_rows_of_the_image_come_out_as_in_the_whole_image():
    img = np.random.default_rng(2).integers(0, 256, (400, 333), dtype=np.uint8)
    s = config.validate({"resize": "native", "clahe_kernel_size": 50})
    stats = clahe.stats_graph(img, s, 64).compute()
    part = clahe.preprocess_graph(img, s, 64, stats=stats, rows=(37, 301), row_chunks=(27, 64, 64, 64, 45)).compute()
    np.testing.assert_array_equal(part, preprocess.preprocess_image(img, s)[37:301])


def test_percentiles_from_value_counts_match_numpy():
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.uint16):
        img = rng.integers(0, np.iinfo(dtype).max, (97, 61), dtype=dtype, endpoint=True)
        values, counts = clahe.value_counts(img, band_rows=10)
        q = [0.0, 0.5, 1.0, 37.3, 50.0, 99.5, 100.0]
        np.testing.assert_array_equal(clahe.percentile_from_counts(values, counts, q),
                                      np.percentile(img.astype(np.float32), q))


def test_tiled_graph_computes_nothing_while_built():
    from conftest import raise_if_dask_computes

    img = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    with raise_if_dask_computes():
        clahe.preprocess_graph(img, config.validate({"resize": "native"}), 100)


def _inputs(folder, family="demo"):
    """One synthetic micrograph (with data bar) as PNG, tiled RGB TIFF, OME-Zarr (c, y, x) and a plain Zarr array:
    the demo's, or one with pores and cracks (a void phase, from the level of each tile before CLAHE)."""
    img01, _ = synth_micrograph((360, 420), seed=5) if family == "demo" else synth.pores((360, 420), seed=5)
    grey = np.round(add_data_bar(img01) * 255).astype(np.uint8)
    folder.mkdir()
    Image.fromarray(grey).save(folder / "a_png.png")
    tifffile.imwrite(folder / "b_tiled.tif", np.repeat(grey[..., None], 3, axis=2), tile=(128, 128),
                     photometric="rgb", compression="zlib")
    g = zarr.open_group(str(folder / "c_ome.zarr"), mode="w", zarr_format=3)
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.05, 0.05]}]}]}]}
    g.create_array("0", data=grey[None], chunks=(1, 100, 100))
    zarr.create_array(str(folder / "d_plain.zarr"), data=grey, chunks=(100, 128))
    return grey


@pytest.mark.parametrize("assignment, family", [("components", "demo"), ("centres", "demo"), ("centres", "pores")])
def test_chunked_inputs_and_tiled_paths_end_to_end(tmp_path, monkeypatch, assignment, family):
    grey = _inputs(tmp_path / "in", family)
    common = ["--input", str(tmp_path / "in"), "--set", "resize=native", "--set", "chunk_size=96",
              "--set", "sample_size=20000", "-k", "3", "--quiet", "--set", f"assignment={assignment}"]
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "whole")] + common, catch_exceptions=False)
    assert res.exit_code == 0, res.output

    # every input read band by band, preprocessed tile by tile, exported tile by tile
    monkeypatch.setattr(io, "LARGE_IMAGE_PIXELS", 0)
    monkeypatch.setattr(pipeline, "BAND_PIXELS", 96 * 420)    # four bands of 96 rows, each with margins
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "tiled")] + common, catch_exceptions=False)
    assert res.exit_code == 0, res.output

    root = zarr.open_group(str(tmp_path / "tiled" / "store.zarr"), mode="r")
    cropped = grey[: 360]
    for stem in ("a_png", "b_tiled", "c_ome", "d_plain"):
        info = root[f"images/{stem}"].attrs["bigseg"]
        assert info["crop_bottom"] == grey.shape[0] - 360, stem       # the data bar found band by band
        np.testing.assert_array_equal(root[f"images/{stem}/0"][:], cropped)
    assert root["images/c_ome"].attrs["bigseg"]["pixel_size"] == pytest.approx(0.05)
    ref = io.read_label_mask(tmp_path / "whole" / "labels" / "a_png.png")
    for stem in ("a_png", "b_tiled", "c_ome", "d_plain"):
        tiled = io.read_label_mask(tmp_path / "tiled" / "labels" / f"{stem}.tif")
        np.testing.assert_array_equal(tiled, ref)
        assert tifffile.TiffFile(tmp_path / "tiled" / "labels" / f"{stem}.tif").pages[0].is_tiled
        assert tifffile.imread(tmp_path / "tiled" / "color" / f"{stem}.tif").shape == ref.shape + (3,)
    np.testing.assert_array_equal(root["images/a_png/labels/phases/0"][:], ref + 1)     # OME: 0 = unassigned
    speckle = {d: json.loads((tmp_path / d / "records" / "segment" / "a_png.json").read_text())["speckle"]
               for d in ("whole", "tiled")}
    assert speckle["tiled"] == pytest.approx(speckle["whole"], abs=1e-12)     # band seams counted once
    # the boundary-pixel step moved pixels on both paths, the same ones (the labels above are equal)
    moved = {d: json.loads((tmp_path / d / "records" / "segment" / "a_png.json").read_text())["boundary_pixels"]
             for d in ("whole", "tiled")}
    assert 0 < moved["tiled"] == pytest.approx(moved["whole"], abs=1e-6)
    void = json.loads((tmp_path / "whole" / "model" / "model.json").read_text()).get("void_below")
    assert (void is not None) == (family == "pores") and (void is None or (ref == 0).any())
    whole_csv = (tmp_path / "whole" / "phase_fractions.csv").read_text()
    assert (tmp_path / "tiled" / "phase_fractions.csv").read_text() == whole_csv
