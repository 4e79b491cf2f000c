"""store.zarr as OME-Zarr a viewer can use: one collection at the root, pyramids, named labels 1..k,
activations and memberships placed on the image; validated with ome-zarr-models, read with napari-ome-zarr's
reader (no GUI)."""

import json
import shutil

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from PIL import Image as PILImage
from scipy import ndimage

from bigseg import io, pipeline, regions, store
from bigseg.cli import main
from bigseg.demo import add_data_bar, synth_micrograph
from bigseg.model import Model
from conftest import need

FAST = ["--set", "chunk_size=64", "--set", "sample_size=6000", "--set", "max_iter=100", "-k", "3", "--quiet"]
PIXEL_SIZE = 0.05      # micrometres per pixel of synth00, from the sidecar table; the others have none


def _invoke(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def run_dir(synth_dir, tmp_path_factory):
    """The synthetic set on a 200-px processing grid (so activations are not on the image's grid)."""
    tmp = tmp_path_factory.mktemp("ome")
    (tmp / "px.csv").write_text(f"image,pixel_size_um\nsynth00.png,{PIXEL_SIZE}\n")
    out = tmp / "out"
    _invoke(["run", "--input", str(synth_dir / "images"), "--out", str(out), "--set", "resize=200",
             "--set", f"pixel_size_csv={tmp / 'px.csv'}"] + FAST)
    return out


def _ids(run_dir):
    return sorted(p.stem for p in (run_dir / "labels").glob("*.png"))


def _ome(group) -> dict:
    return group.attrs["ome"]


def _ngff(module: str, name: str):
    """An OME-NGFF 0.5 model class of ome-zarr-models (the [test-full] extra): its ``from_zarr`` or
    ``model_validate`` validates a group; a test using it skips without the package."""
    return getattr(need(f"ome_zarr_models.v05.{module}", "validating store.zarr as OME-NGFF 0.5"), name)


def _napari_reader():
    """napari-ome-zarr's reader (the [test-full] extra), without napari's GUI."""
    return need("napari_ome_zarr._reader", "opening store.zarr with napari-ome-zarr").napari_get_reader


def test_every_image_label_and_map_validates_as_ngff_05(run_dir):
    root = zarr.open_group(str(run_dir / "store.zarr"), mode="r")
    ids = _ids(run_dir)
    assert len(ids) == 6
    for image_id in ids:
        image = _ngff("image", "Image").from_zarr(root[f"images/{image_id}"])       # checks its labels' levels too
        assert image.labels is not None and image.labels.label_paths == ["phases"]
        _ngff("labels", "Labels").from_zarr(root[f"images/{image_id}/labels"])
        label = _ngff("image_label", "ImageLabel").from_zarr(root[f"images/{image_id}/labels/phases"])
        assert label.ome_attributes.image_label.source.image == "../../"
        for group in ("activations", "memberships"):
            _ngff("image", "Image").from_zarr(root[f"{group}/{image_id}"])
    attrs = _ngff("bioformats2raw", "BioFormats2RawAttrs").model_validate(_ome(root))
    assert attrs.bioformats2raw_layout == 3 and attrs.version == "0.5"
    assert _ome(root["OME"])["series"] == [f"images/{i}" for i in ids]


def test_the_root_opens_whole_in_napari_ome_zarr(run_dir):
    napari_get_reader = _napari_reader()
    root = zarr.open_group(str(run_dir / "store.zarr"), mode="r")
    ids = _ids(run_dir)
    reader = napari_get_reader(str(run_dir / "store.zarr"))
    assert reader is not None
    layers = reader()
    images = [(d, m) for d, m, kind in layers if kind == "image"]
    labels = [(d, m) for d, m, kind in layers if kind == "labels"]
    assert [m["name"] for _, m in images] == [f"{i}: micrograph" for i in ids]
    assert [m["name"] for _, m in labels] == [f"labels/images/{i}/labels/phases" for i in ids]
    summary = json.loads((run_dir / "summary.json").read_text())
    names = [c["name"] for c in summary["components"]]
    for image_id, (data, meta), (ldata, lmeta) in zip(ids, images, labels):
        np.testing.assert_array_equal(np.asarray(data[0]), root[f"images/{image_id}/0"][:])
        png = np.asarray(PILImage.open(run_dir / "labels" / f"{image_id}.png"))
        np.testing.assert_array_equal(np.asarray(ldata[0]), png + 1)
        assert lmeta["properties"]["name"] == ["unassigned"] + names
        assert lmeta["properties"]["index"] == list(range(len(names) + 1))
        assert set(lmeta["colormap"]) == set(range(len(names) + 1)) and lmeta["colormap"][0][3] == 0
        assert meta["scale"] == lmeta["scale"]
    by_name = {m["name"].split(":")[0]: m for _, m in images}
    assert by_name["synth00"]["units"] == ("micrometer", "micrometer")
    assert by_name["synth00"]["scale"] == pytest.approx([PIXEL_SIZE, PIXEL_SIZE])
    assert "units" not in by_name["synth01"] and by_name["synth01"]["scale"] == [1.0, 1.0]


def test_a_run_opens_in_napari_as_each_image_with_its_phases_over_it(run_dir, capsys):
    from bigseg import viewer

    _napari_reader()
    ids = _ids(run_dir)
    found = viewer.layers(run_dir)
    assert [(m["name"], kind) for _, m, kind in found] == [
        (f"{i}: {what}", kind) for i in ids for what, kind in (("micrograph", "image"), ("phases", "labels"))]
    for (image, imeta, _), (labels, lmeta, _) in zip(found[::2], found[1::2]):
        assert lmeta["visible"] and lmeta["scale"] == imeta["scale"]          # over its image, shown
        assert np.asarray(labels[0]).shape == np.asarray(image[0]).shape
        assert lmeta["properties"]["name"][0] == "unassigned"
    one = viewer.layers(run_dir / "store.zarr", images=[ids[1]])
    assert [m["name"] for _, m, _ in one] == [f"{ids[1]}: micrograph", f"{ids[1]}: phases"]
    with pytest.raises(ValueError, match="no image 'nope'"):
        viewer.layers(run_dir, images=["nope"])
    with pytest.raises(ValueError, match="no store.zarr"):
        viewer.layers(run_dir / "labels")


def test_labels_are_one_to_k_with_named_coloured_properties(run_dir):
    root = zarr.open_group(str(run_dir / "store.zarr"), mode="r")
    model = Model.load(run_dir / "model")
    k = model.n_phases
    for image_id in _ids(run_dir):
        group = root[f"images/{image_id}/labels/phases"]
        values = np.unique(group["0"][:])
        assert values.min() >= 1 and values.max() <= k            # every pixel assigned, none is 0
        label = _ome(group)["image-label"]
        assert [p["label-value"] for p in label["properties"]] == list(range(k + 1))
        assert [p["name"] for p in label["properties"]] == ["unassigned"] + list(model.phase_names)
        assert [p.get("phase") for p in label["properties"][1:]] == list(range(k))
        assert [c["label-value"] for c in label["colors"]] == list(range(k + 1))
        assert all(len(c["rgba"]) == 4 for c in label["colors"])
        memb = _ome(root[f"memberships/{image_id}"])
        assert [c["label"] for c in memb["omero"]["channels"]] == list(model.phase_names)


def test_units_only_where_the_pixel_size_is_known(run_dir):
    root = zarr.open_group(str(run_dir / "store.zarr"), mode="r")
    for image_id in _ids(run_dir):
        known = image_id == "synth00"
        for path in (f"images/{image_id}", f"images/{image_id}/labels/phases", f"activations/{image_id}",
                     f"memberships/{image_id}"):
            axes = _ome(root[path])["multiscales"][0]["axes"]
            space = [a for a in axes if a["type"] == "space"]
            assert all(a.get("unit") == ("micrometer" if known else None) for a in space), path
    xml = (run_dir / "store.zarr" / "OME" / "METADATA.ome.xml").read_text()
    assert xml.count("<Image ") == 6 and xml.count('PhysicalSizeX="0.05"') == 1


def _transform(group, level: int = 0):
    ds = _ome(group)["multiscales"][0]["datasets"][level]["coordinateTransformations"]
    scale = np.array(ds[0]["scale"], float)
    shift = np.array(ds[1]["translation"], float) if len(ds) > 1 else np.zeros_like(scale)
    return scale, shift


def test_activations_are_placed_on_the_image(run_dir):
    """Mapping each image pixel through the OME transforms into the activations and interpolating there
    (bilinear) gives the stored labels: the maps overlay the image."""
    root = zarr.open_group(str(run_dir / "store.zarr"), mode="r")
    fitted = Model.load(run_dir / "model")
    for image_id in _ids(run_dir):
        native = root[f"images/{image_id}/0"].shape
        acts = root[f"activations/{image_id}"]
        grid = acts["0"].shape[1:]
        # a coarser processing grid: the collection's one scale (resize 200 on its median frame)
        assert all(g < n for g, n in zip(grid, native)) and 150 <= max(grid) <= 250
        img_scale, img_shift = _transform(root[f"images/{image_id}"])
        scale, shift = _transform(acts)
        # the same extent as the image, in the same units
        np.testing.assert_allclose(scale[1:] * grid, img_scale * native)
        np.testing.assert_array_equal(_transform(root[f"memberships/{image_id}"])[0], scale)
        # image pixel (i, j) sits at img_shift + img_scale * (i, j); in activation pixels that is:
        yy, xx = np.meshgrid(np.arange(native[0]), np.arange(native[1]), indexing="ij")
        coords = [(img_shift[a] + img_scale[a] * g - shift[a + 1]) / scale[a + 1] for a, g in enumerate((yy, xx))]
        w = regions.settled_maps(fitted, acts["0"][:], fitted.settings, memberships=False)[0]
        resampled = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in w])
        labels = root[f"images/{image_id}/labels/phases/0"][:]
        assert np.mean(resampled.argmax(axis=0) + 1 == labels) > 0.999, image_id


def _mean_levels(img, n):
    """Independent reference: each level the mean of 2x2 blocks, odd edges repeated."""
    out = [img]
    for _ in range(n - 1):
        a = out[-1].astype(np.float64)
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2)), mode="edge")
        m = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
        out.append(np.rint(m).astype(img.dtype))
    return out


def test_pyramids_on_a_montage_segmented_band_by_band(tmp_path, monkeypatch):
    """Thresholds lowered so a 360x420 frame counts as a montage: read band by band (tiled TIFF) or whole
    (PNG), segmented in bands whose seams fall off the coarse grids, every level written in the same graph."""
    validate = _ngff("image", "Image").from_zarr        # before the run: without the package the test skips at once
    img01, _ = synth_micrograph((360, 420), seed=5)
    grey = np.round(add_data_bar(img01) * 255).astype(np.uint8)
    inp = tmp_path / "in"
    inp.mkdir()
    PILImage.fromarray(grey).save(inp / "whole.png")
    tifffile.imwrite(inp / "banded.tif", grey, tile=(64, 64), compression="zlib")
    monkeypatch.setattr(store, "PYRAMID_MIN_SIDE", 256)
    monkeypatch.setattr(store, "PYRAMID_TOP_SIDE", 100)
    monkeypatch.setattr(io, "LARGE_IMAGE_PIXELS", 0)
    monkeypatch.setattr(pipeline, "BAND_PIXELS", 90 * 420)         # bands of 90 rows: not a multiple of 4 or 8
    out = tmp_path / "out"
    _invoke(["run", "--input", str(inp), "--out", str(out), "--set", "resize=native", "--set", "chunk_size=90",
             "--set", "sample_size=20000", "-k", "3", "--quiet"])
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    shapes = [(360, 420), (180, 210), (90, 105), (45, 53)]       # halved until the longer side <= 100
    for image_id in ("whole", "banded"):
        group = root[f"images/{image_id}"]
        validate(group)
        datasets = _ome(group)["multiscales"][0]["datasets"]
        assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
        levels = [group[str(n)][:] for n in range(4)]
        assert [lv.shape for lv in levels] == shapes
        for got, want in zip(levels, _mean_levels(levels[0], 4)):
            np.testing.assert_array_equal(got, want)
        for n in range(4):
            scale, shift = _transform(group, n)
            np.testing.assert_allclose(scale, [2.0 ** n] * 2)
            np.testing.assert_allclose(shift, [(2.0 ** n - 1) / 2] * 2)       # a mean's centre
        for path in (f"images/{image_id}/labels/phases", f"activations/{image_id}", f"memberships/{image_id}"):
            g = root[path]
            validate(g)
            full = g["0"][:]
            assert len(_ome(g)["multiscales"][0]["datasets"]) == 4, path
            for n in range(1, 4):
                f = 2 ** n
                np.testing.assert_array_equal(g[str(n)][:], full[..., ::f, ::f], err_msg=f"{path} level {n}")
                scale, shift = _transform(g, n)
                np.testing.assert_allclose(scale[-2:], [f, f])
                assert not shift.any()                                # a stride keeps pixel 0's centre
        lab = root[f"images/{image_id}/labels/phases/0"][:]
        np.testing.assert_array_equal(lab, io.read_label_mask(out / "labels" / f"{image_id}.tif") + 1)
    napari_get_reader = _napari_reader()
    layers = napari_get_reader(str(out / "store.zarr"))()
    assert sorted(kind for _, _, kind in layers) == ["image", "image", "labels", "labels"]
    assert all([d.shape for d in data] == shapes for data, _, _ in layers)


def test_banded_ingest_writes_the_same_pyramid_as_a_whole_one(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "PYRAMID_MIN_SIDE", 64)
    monkeypatch.setattr(store, "PYRAMID_TOP_SIDE", 20)
    img = np.random.default_rng(0).integers(0, 65536, (157, 131), dtype=np.uint16)
    root = store.open_root(tmp_path / "s.zarr")
    prov = {"pixel_size": None, "shape": list(img.shape)}
    store.write_image(root, "whole", img, prov, chunk=48)
    store.write_image_bands(root, "banded", lambda r0, r1: img[r0:r1], img.shape, img.dtype, prov, chunk=20)
    n = len(_ome(root["images/whole"])["multiscales"][0]["datasets"])
    assert n == 4                                                  # 157 -> 79 -> 40 -> 20
    for level, want in enumerate(_mean_levels(img, n)):
        np.testing.assert_array_equal(root[f"images/whole/{level}"][:], want)
        np.testing.assert_array_equal(root[f"images/banded/{level}"][:], want)
    window = _ome(root["images/banded"])["omero"]["channels"][0]["window"]
    assert (window["start"], window["end"]) == (img.min(), img.max()) and window["max"] == 65535


def test_store_args_compute_each_block_once_and_fill_every_level(tmp_path, monkeypatch):
    """Pyramid levels come from the same graph as level 0 (no second pass), region by region."""
    monkeypatch.setattr(store, "PYRAMID_MIN_SIDE", 64)
    monkeypatch.setattr(store, "PYRAMID_TOP_SIDE", 16)
    root = store.open_root(tmp_path / "s.zarr")
    shape = (150, 131)
    store.write_image(root, "a", np.zeros(shape, np.uint8), {"pixel_size": 0.5, "shape": list(shape)})
    rng = np.random.default_rng(1)
    acts = rng.random((3,) + shape).astype(np.float32)
    labels = acts.argmax(axis=0).astype(np.uint8)
    act_arr = store.create_activations(root, "a", shape, 3, 32)
    lab_arr = store.create_labels(root, "a", shape, 3, [[255, 0, 0]], 32, names=["x", "y", "z"])
    calls = []

    def produce(block):
        if block.size:                         # not dask's call on an empty array for the meta
            calls.append(1)
        return block

    lazy = da.from_array(acts, chunks=(3, 37, 40)).map_blocks(produce, dtype=np.float32)
    touched = 0
    for r0, r1 in ((0, 61), (61, 113), (113, 150)):          # bands whose seams are off every coarse grid
        band = lazy[:, r0:r1]
        touched += band.npartitions
        args = store.store_args([band, band.argmax(axis=0).astype(np.uint8)], [act_arr, lab_arr],
                                [(slice(None), slice(r0, r1)), (slice(r0, r1),)])
        with dask.config.set(scheduler="threads"):
            da.store(**args, lock=False)
    assert len(calls) == touched                # each block once per band it is in: levels and labels add none
    levels = store.pyramid_levels(shape)
    assert levels == 5                          # 150 -> 75 -> 38 -> 19 -> 10
    for n in range(levels):
        f = 2 ** n
        np.testing.assert_array_equal(root[f"activations/a/{n}"][:], acts[:, ::f, ::f])
        np.testing.assert_array_equal(root[f"images/a/labels/phases/{n}"][:], labels[::f, ::f] + 1)
    np.testing.assert_array_equal(lab_arr[:], labels)          # read back as phase indices
    _ngff("image", "Image").from_zarr(root["images/a"])
    _ngff("image", "Image").from_zarr(root["activations/a"])
    # a whole-array write through the labels fills the pyramid too, and so does write_whole, without a graph
    lab_arr[...] = 2 - labels
    store.write_whole(act_arr, acts[::-1])
    for n in range(levels):
        f = 2 ** n
        np.testing.assert_array_equal(root[f"images/a/labels/phases/{n}"][:], (2 - labels)[::f, ::f] + 1)
        np.testing.assert_array_equal(root[f"activations/a/{n}"][:], acts[::-1, ::f, ::f])


def test_index_lists_ingested_images_and_rename_follows(run_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    root = store.open_root(out / "store.zarr")
    (out / "records" / "ingest" / "synth03.json").unlink()        # as if its ingest had not finished
    series = store.write_index(root)
    assert "images/synth03" not in series and len(series) == 5
    assert _ome(root["OME"])["series"] == series
    assert 'ID="Image:images/synth03"' not in (out / "store.zarr" / "OME" / "METADATA.ome.xml").read_text()
    k = Model.load(out / "model").n_phases
    new = [f"p{i}" for i in range(k)]
    assert store.rename_phases(root, new) == 2 * 6
    label = _ome(root["images/synth00/labels/phases"])["image-label"]
    assert [p["name"] for p in label["properties"]] == ["unassigned"] + new
    assert store.rename_phases(root, new) == 0
    _ngff("image_label", "ImageLabel").from_zarr(root["images/synth00/labels/phases"])
