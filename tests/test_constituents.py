"""Microconstituents: scales from the data, exact halos, the level found where mixed regions exist and
nowhere else, phase labels untouched, and the outputs of a run (PNGs, CSV, summary, model, OME label)."""

import json

import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from bigseg import PhaseSegmenter, constituents, synth
from bigseg.cli import main
from bigseg.evaluate import confusion, scores
from bigseg.model import Model, ModelError

SHAPE = (192, 256)
FAST = {"n_components": 3, "resize": "native", "crop_bottom": 0, "sample_size": 20000, "max_iter": 200}


def test_mean_intercepts_are_the_mean_run_lengths_of_each_phase():
    lab = np.zeros((8, 12), np.uint8)
    lab[:, 4:8] = 1                        # a band 4 wide: rows cut it into runs of 4, columns into runs of 8
    per_phase, pooled = constituents.mean_intercepts([lab], 2)
    # phase 1: rows 8 runs of 4 (32 px), columns 4 runs of 8 (32 px): 64 / 12
    assert per_phase[1] == pytest.approx(64 / 12)
    # phase 0: rows 16 runs of 4 (64 px), columns 8 runs of 8 (64 px)
    assert per_phase[0] == pytest.approx(128 / 24)
    assert pooled == pytest.approx(192 / 36)
    _, measured = constituents.window_scales([lab], 2)
    assert measured["mean_intercept"] == pytest.approx(pooled, abs=1e-3)


def test_scales_follow_the_collection_not_a_constant():
    """The windows run from the pixel to twice the mean intercept, at most an octave apart: the same
    microstructure drawn twice as large gets a top window twice as large (and one window more)."""
    rng = np.random.default_rng(0)
    fine = np.kron((rng.random((64, 64)) > 0.5).astype(np.uint8), np.ones((4, 4), np.uint8))
    coarse = np.kron(fine, np.ones((2, 2), np.uint8))
    s_fine, measured = constituents.window_scales([fine], 2)
    s_coarse, _ = constituents.window_scales([coarse], 2)
    assert s_fine[0] == s_coarse[0] == constituents.MIN_SIGMA
    assert s_fine[-1] == pytest.approx(constituents.TOP_STEPS * measured["mean_intercept"], abs=1e-3)
    assert s_coarse[-1] == pytest.approx(2 * s_fine[-1], rel=0.05)
    for sigmas in (s_fine, s_coarse):
        assert all(1 < b / a <= 2.0 + 1e-6 for a, b in zip(sigmas, sigmas[1:]))
    assert len(s_coarse) == len(s_fine) + 1


def _level(n_phases=3, m=3, sigmas=(2.5, 5.0), seed=0):
    rng = np.random.default_rng(seed)
    f = 2 * n_phases * len(sigmas)
    return {"H": rng.random((m, f)) + 0.01, "centres": rng.random((m, m)), "lo": np.zeros(f, np.float32),
            "hi": np.ones(f, np.float32) * 0.7, "sigmas": list(sigmas)}


def test_chunked_constituents_equal_the_whole_image():
    rng = np.random.default_rng(1)
    raw = rng.random((3, 101, 77)).astype(np.float32)
    memb = raw / raw.sum(axis=0, keepdims=True)
    level = _level()
    whole = constituents.activations(memb, level, 4.0)
    assert whole.shape == (3, 101, 77) and whole.dtype == np.float32
    assert constituents.halo(level["sigmas"], 4.0) == 20
    for chunks in ((3, 33, 29), (3, 17, 50), (3, 101, 77)):
        lazy = constituents.lazy_activations(da.from_array(memb, chunks=chunks), level, 4.0)
        np.testing.assert_array_equal(lazy.compute(scheduler="sync"), whole)


def _collection(particles=True, n=3):
    return [img for img, _ in (synth.constituents(SHAPE, seed=10 + i, particles=particles) for i in range(n))]


@pytest.fixture(scope="module")
def fitted():
    pairs = [synth.constituents(SHAPE, seed=10 + i) for i in range(3)]
    seg = PhaseSegmenter(n_constituents=3, **FAST).fit([img for img, _ in pairs])
    return seg, pairs


def test_the_api_finds_the_particle_regions_as_a_constituent(fitted):
    seg, pairs = fitted
    assert len(seg.constituent_names_) == 3
    assert any(name.startswith("fine particles of") for name in seg.constituent_names_)
    cm_c, cm_p = np.zeros((4, 3), np.int64), np.zeros((4, seg.n_phases_), np.int64)
    for img, truth in pairs:
        con = seg.predict_constituents(img)
        assert con.shape == img.shape and con.dtype == np.uint8 and con.max() < 3
        cm_c += confusion(truth, con, 4, 3)
        cm_p += confusion(truth, seg.predict(img), 4, seg.n_phases_)
    by_constituents = scores(cm_c)["per_class_iou"]["2"]
    by_phases = scores(cm_p)["per_class_iou"]["2"]
    # the particle grains are one constituent; a pixel phase splits them into particles and matrix
    assert by_constituents > 0.6 and by_constituents > by_phases + 0.1


def test_phase_labels_do_not_depend_on_the_level(fitted):
    seg, pairs = fitted
    plain = PhaseSegmenter(n_constituents=0, **FAST).fit([img for img, _ in pairs])
    np.testing.assert_array_equal(plain.model_.H, seg.model_.H)
    for img, _ in pairs[:2]:
        np.testing.assert_array_equal(plain.predict(img), seg.predict(img))
    with pytest.raises(ValueError, match="no constituents"):
        plain.predict_constituents(pairs[0][0])


def test_a_collection_without_mixed_regions_says_the_level_adds_nothing():
    seg = PhaseSegmenter(n_constituents=2, **dict(FAST, n_components=2)).fit(_collection(particles=False))
    level = seg.model_.constituents
    assert level["report"]["adds_nothing"]
    assert all(name.startswith("smooth ") for name in seg.constituent_names_)
    img = _collection(particles=False, n=1)[0]
    con, phases = seg.predict_constituents(img), seg.predict(img)
    # the constituents are the phases, up to their order and the windows' blur of the borders
    agree = max(np.mean(con == phases), np.mean(con == 1 - phases))
    assert agree > 0.9


def test_model_round_trip_and_damage(fitted, tmp_path):
    seg, pairs = fitted
    seg.save(tmp_path / "m")
    back = PhaseSegmenter.load(tmp_path / "m")
    assert back.constituent_names_ == seg.constituent_names_
    np.testing.assert_array_equal(back.predict_constituents(pairs[0][0]), seg.predict_constituents(pairs[0][0]))
    arrays = dict(np.load(tmp_path / "m" / "model.npz"))
    arrays["constituent_H"] = arrays["constituent_H"][:, :-1]
    np.savez(tmp_path / "m" / "model.npz", **arrays)
    with pytest.raises(ModelError, match="constituent_H"):
        Model.load(tmp_path / "m")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("constituents")
    images = tmp / "images"
    images.mkdir()
    for i, img in enumerate(_collection()):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(images / f"c{i}.png")
    args = ["--set", "resize=native", "--set", "crop_bottom=0", "--set", "sample_size=20000", "--set",
            "max_iter=200", "-k", "3", "--quiet"]
    outs = {}
    for m in (0, 3):
        out = tmp / f"out{m}"
        res = CliRunner().invoke(main, ["run", "--input", str(images), "--out", str(out),
                                        "--set", f"n_constituents={m}"] + args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outs[m] = out
    return tmp, outs, args


def test_a_run_writes_the_constituents_beside_unchanged_labels(runs):
    _, outs, _ = runs
    for stem in ("c0", "c1", "c2"):
        assert (outs[0] / "labels" / f"{stem}.png").read_bytes() == (outs[3] / "labels" / f"{stem}.png").read_bytes()
        con = np.asarray(Image.open(outs[3] / "constituents" / f"{stem}.png"))
        assert con.shape == SHAPE and con.dtype == np.uint8 and con.max() < 3
        assert (outs[3] / "constituents_color" / f"{stem}.png").exists()
        assert (outs[3] / "constituents_overlay" / f"{stem}.png").exists()
    assert Image.open(outs[3] / "constituent_fingerprints.png").size[0] > 0
    assert not (outs[0] / "constituents").exists() and not (outs[0] / "constituent_fractions.csv").exists()
    rows = (outs[3] / "constituent_fractions.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].split(",")[0] == "image" and len(rows[0].split(",")) == 1 + 3 + 1 + 3
    # the phases' statistics, for the constituents: mean and 95 % interval across images
    stats = (outs[3] / "constituent_fractions_summary.csv").read_text().splitlines()
    assert len(stats) == 4 and stats[0].startswith("phase,column,images,mean,std,ci95_low,ci95_high")
    summary = json.loads((outs[3] / "summary.json").read_text())
    level = summary["constituents"]
    assert [item["name"] for item in level["items"]] == Model.load(outs[3] / "model").constituents["names"]
    assert sum(item["share"] for item in level["items"]) == pytest.approx(1.0, abs=1e-4)
    assert level["scales_px"] == level["fit"]["sigmas"]
    assert len(level["fractions"]["phases"]) == 3 and level["fractions"]["images"] == 3
    assert any(key.endswith("variation @%gpx" % level["scales_px"][0]) for key in level["items"][0]["fingerprint"])


def test_the_store_holds_the_constituents_as_a_second_label_image(runs):
    _, outs, _ = runs
    root = zarr.open_group(str(outs[3] / "store.zarr"), mode="r")
    labels = root["images/c0/labels"]
    assert labels.attrs["ome"]["labels"] == ["phases", "constituents"]
    stored = root["images/c0/labels/constituents/0"][:]
    png = np.asarray(Image.open(outs[3] / "constituents" / "c0.png"))
    np.testing.assert_array_equal(stored, png + 1)
    props = labels["constituents"].attrs["ome"]["image-label"]["properties"]
    assert [p["name"] for p in props[1:]] == Model.load(outs[3] / "model").constituents["names"]


def test_segment_with_a_model_that_has_constituents(runs):
    tmp, outs, _ = runs
    res = CliRunner().invoke(main, ["segment", str(outs[3] / "model"), "--input", str(tmp / "images"),
                                    "--out", str(tmp / "seg"), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for stem in ("c0", "c1"):
        assert (tmp / "seg" / "constituents" / f"{stem}.png").read_bytes() == \
            (outs[3] / "constituents" / f"{stem}.png").read_bytes()


def test_the_report_lists_the_constituents(runs):
    _, outs, _ = runs
    page = (outs[3] / "report.html").read_text()
    assert "Microconstituents" in page and "constituent_fractions.csv" in page
    for name in Model.load(outs[3] / "model").constituents["names"]:
        assert name in page
    assert "Microconstituents" not in (outs[0] / "report.html").read_text()


def test_rename_names_the_constituents_everywhere(runs):
    tmp, outs, _ = runs
    out = outs[3]
    labels_before = (out / "constituents" / "c0.png").read_bytes()
    res = CliRunner().invoke(main, ["rename", str(out), "--constituents", "0=spheroidite"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    names = Model.load(out / "model").constituents["names"]
    assert names[0] == "spheroidite"
    assert (out / "constituent_fractions.csv").read_text().splitlines()[0].split(",")[1] == "spheroidite"
    assert (out / "constituent_fractions_summary.csv").read_text().splitlines()[1].split(",")[0] == "spheroidite"
    assert json.loads((out / "summary.json").read_text())["constituents"]["items"][0]["name"] == "spheroidite"
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    props = root["images/c0/labels/constituents"].attrs["ome"]["image-label"]["properties"]
    assert props[1]["name"] == "spheroidite"
    assert "spheroidite" in (out / "report.html").read_text()
    assert (out / "constituents" / "c0.png").read_bytes() == labels_before
    res = CliRunner().invoke(main, ["rename", str(outs[0]), "--constituents", "0=x"])
    assert res.exit_code != 0 and "no constituents" in res.output


def test_renaming_a_phase_renames_the_constituents_named_after_it(runs, tmp_path):
    """A constituent the fit named after its phases follows a phase's new name; one named by hand stays."""
    import csv
    import io
    import shutil

    from bigseg.phases import csv_names

    _, outs, _ = runs
    out = tmp_path / "run"
    shutil.copytree(outs[3], out)
    res = CliRunner().invoke(main, ["rename", str(out), "--constituents", "0=spheroidite"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    model = Model.load(out / "model")
    before, phases = model.constituents["names"], model.phase_names
    # the phase most constituents are named after (every constituent is named after one phase at least)
    j = max(range(len(phases)), key=lambda i: sum(f" {phases[i]}" in f" {n}" for n in before[1:]))
    chart = (out / "constituent_fingerprints.png").read_bytes()
    res = CliRunner().invoke(main, ["rename", str(out), f"{j}=ferrite"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    names = Model.load(out / "model").constituents["names"]
    assert names[0] == "spheroidite"
    assert names[1:] == [n.replace(phases[j], "ferrite") for n in before[1:]] != before[1:]
    assert [item["name"] for item in json.loads((out / "summary.json").read_text())["constituents"]["items"]] == names
    header = next(csv.reader(io.StringIO((out / "constituent_fractions.csv").read_text())))
    assert header[1:1 + len(names)] == csv_names(names)
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    props = root["images/c0/labels/constituents"].attrs["ome"]["image-label"]["properties"]
    assert [p["name"] for p in props[1:]] == names
    # the chart's rows are the phases, by name
    assert (out / "constituent_fingerprints.png").read_bytes() != chart


def test_a_run_in_uneven_chunks_writes_the_same_constituents(runs):
    """The chunked path (activations tile by tile with their halos) gives the constituents of the whole image."""
    tmp, outs, args = runs
    out = tmp / "chunked"
    res = CliRunner().invoke(main, ["run", "--input", str(tmp / "images"), "--out", str(out), "--set",
                                    "n_constituents=3", "--set", "chunk_size=72"] + args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for stem in ("c0", "c1", "c2"):
        assert (out / "constituents" / f"{stem}.png").read_bytes() == \
            (outs[3] / "constituents" / f"{stem}.png").read_bytes()


def test_a_montage_segmented_band_by_band_has_the_constituents_of_the_whole(runs, monkeypatch):
    """Every image read band by band, preprocessed tile by tile (the montage path): the same constituents,
    as tiled TIFFs, and the same fractions."""
    import tifffile

    from bigseg import io, pipeline

    tmp, outs, args = runs
    monkeypatch.setattr(io, "LARGE_IMAGE_PIXELS", 0)
    monkeypatch.setattr(pipeline, "BAND_PIXELS", 64 * 256)      # three bands of 64 rows, each with margins
    out = tmp / "bands"
    res = CliRunner().invoke(main, ["run", "--input", str(tmp / "images"), "--out", str(out), "--set",
                                    "n_constituents=3", "--set", "chunk_size=64"] + args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for stem in ("c0", "c1", "c2"):
        whole = np.asarray(Image.open(outs[3] / "constituents" / f"{stem}.png"))
        np.testing.assert_array_equal(tifffile.imread(out / "constituents" / f"{stem}.tif"), whole)
        assert tifffile.imread(out / "constituents_color" / f"{stem}.tif").shape == SHAPE + (3,)
        assert (out / "constituents_overlay" / f"{stem}.png").exists()
    fractions = (out / "constituent_fractions.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1:4] for r in fractions] == \
        [r.split(",")[1:4] for r in (outs[3] / "constituent_fractions.csv").read_text().splitlines()[1:]]
