"""End to end through the CLI on the synthetic set, with the Zarr store on disk."""

import csv
import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from bigseg import fractions, regions, store
from bigseg.cli import EXIT_SKIPPED, main
from bigseg.demo import CLASS_NAMES
from bigseg.evaluate import evaluate_dirs
from bigseg.io import crop_rows, read_image
from bigseg.model import Model
from bigseg.viz import colorize

FAST = ["--set", "resize=native", "--set", "chunk_size=96", "--set", "sample_size=20000", "-k", "4", "--quiet"]


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res


@pytest.fixture(scope="module")
def finished_run(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    res = _run(["run", "--input", str(synth_dir / "images"), "--out", str(out), "--set", "store_features=true"]
               + FAST)
    assert res.exit_code == 0, res.output
    return out


def test_run_writes_the_documented_layout(finished_run, synth_dir):
    out = finished_run
    stems = sorted(p.stem for p in (synth_dir / "images").iterdir())
    for sub in ["labels", "color", "activations", "overlay"]:
        assert sorted(p.stem for p in (out / sub).glob("*.png")) == stems, sub
    for stem in stems:
        src = next((synth_dir / "images").glob(stem + ".*"))
        cropped, _ = crop_rows(read_image(src).data, "auto")
        lab = np.asarray(Image.open(out / "labels" / f"{stem}.png"))
        assert lab.shape == cropped.shape and lab.dtype == np.uint8 and lab.max() < 4
        colour = np.asarray(Image.open(out / "color" / f"{stem}.png").convert("RGB"))
        np.testing.assert_array_equal(colour, colorize(lab))
    rows = list(csv.DictReader(open(out / "phase_fractions.csv")))
    summary = json.loads((out / "summary.json").read_text())
    columns = [c["column"] for c in summary["components"]]      # the phases' names, in label order
    assert list(rows[0]) == fractions.image_header(columns) and len(set(columns)) == 4
    assert [r["image"] for r in rows] == stems
    assert all(abs(sum(float(r[c]) for c in columns) - 1) < 1e-4 for r in rows)
    assert summary["n_images"] == len(stems) and summary["skipped"] == []
    assert 0 < summary["model"]["relative_error"] < 1 and "versions" in summary
    assert set(summary["timings_seconds"]) == {"ingest", "features", "fit", "segment"}
    assert (out / "model" / "model.json").exists() and (out / "model" / "model.npz").exists()
    assert (out / "fingerprints.png").exists()
    assert [c["index"] for c in summary["components"]] == [0, 1, 2, 3]
    assert all(c["name"] and set(c["fingerprint"]) for c in summary["components"])
    assert abs(sum(c["share"] for c in summary["components"]) - 1) < 1e-4
    assert isinstance(summary["warnings"], list)


def test_store_is_ome_zarr_v3_with_named_dims(finished_run):
    import xarray as xr

    root = zarr.open_group(str(finished_run / "store.zarr"), mode="r")
    img = root["images/synth00"]
    assert img.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    assert img.attrs["bigseg"]["crop_bottom"] == 28 and img.attrs["bigseg"]["source"].endswith("synth00.png")
    assert root["images/synth00/0"].metadata.zarr_format == 3
    labels = root["images/synth00/labels/phases/0"]
    assert labels.shape == root["images/synth00/0"].shape
    # the OME label image stores phase i as i + 1 (0 = unassigned); the PNG keeps 0..k-1
    assert np.array_equal(labels[:], np.asarray(Image.open(finished_run / "labels" / "synth00.png")) + 1)
    ds = xr.open_zarr(str(finished_run / "store.zarr"), group="features/synth00", consolidated=False)
    assert ds["features"].dims == ("y", "x", "feature") and str(ds["image"].values) == "synth00"
    assert "blur_s8" in list(ds["feature"].values)
    assert root["activations/synth00/0"].metadata.dimension_names == ("component", "y", "x")
    soft = root["memberships/synth00/0"][:].astype(np.float32)
    fitted = Model.load(finished_run / "model")
    assert soft.shape == (fitted.n_phases,) + root["activations/synth00/0"].shape[1:] and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=5e-3)
    act = root["activations/synth00/0"][:]
    # float16 memberships only reorder near-ties of the phases' scores (boundary pixels settled)
    scores, _, before, after = regions.settled_maps(fitted, act, fitted.settings, memberships=False)
    assert np.mean(soft.argmax(0) == scores.argmax(0)) > 0.999
    # how many pixels the boundary-pixel step moved: per image, and over the run
    moved = store.read_record(finished_run, "segment", "synth00")["boundary_pixels"]
    assert 0 < moved == round(float((before != after).mean()), 6)
    assert json.loads((finished_run / "summary.json").read_text())["boundaries"]["band_pixel_share"] > 0


def test_demo_evaluation_is_well_above_chance(finished_run, synth_dir):
    res = evaluate_dirs(finished_run / "labels", synth_dir / "labels", len(CLASS_NAMES), CLASS_NAMES)
    # a uniformly random 4-way labelling of these masks scores about 0.12 mean IoU and 0 ARI
    assert res["mean_iou"] > 0.3 and res["adjusted_rand"] > 0.3, res
    out = _run(["evaluate", str(finished_run / "labels"), "--labels", str(synth_dir / "labels")])
    assert out.exit_code == 0 and "mean IoU" in out.output


def test_segment_with_saved_model_reproduces_labels(finished_run, synth_dir, tmp_path):
    out = tmp_path / "seg"
    res = _run(["segment", str(finished_run / "model"), "--input", str(synth_dir / "images" / "synth01.tif"),
                "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    a = np.asarray(Image.open(out / "labels" / "synth01.png"))
    b = np.asarray(Image.open(finished_run / "labels" / "synth01.png"))
    assert np.mean(a == b) > 0.999        # features recomputed on the fly equal the stored ones


def test_chunks_sized_by_memory_give_the_same_labels(finished_run, synth_dir, tmp_path):
    # the finished run used 96-px chunks; 1 MiB a task makes auto chunks 128 px (the floor)
    out = tmp_path / "seg"
    res = _run(["segment", str(finished_run / "model"), "--input", str(synth_dir / "images" / "synth01.tif"),
                "--out", str(out), "--quiet", "--set", "chunk_size=auto", "--set", "chunk_memory=1MiB"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["settings"]["chunk_memory"] == 2**20
    assert zarr.open_array(str(out / "store.zarr" / "activations" / "synth01" / "0"), mode="r").chunks[1:] == (128, 128)
    a = np.asarray(Image.open(out / "labels" / "synth01.png"))
    b = np.asarray(Image.open(finished_run / "labels" / "synth01.png"))
    assert np.mean(a == b) > 0.999


def test_one_task_per_image_equals_the_tiled_graph(finished_run, synth_dir, tmp_path):
    """An image of one chunk is segmented in one task (the API's per-image path); in 96-px tiles it is a
    graph with halos. Labels, activations and memberships agree bit for bit."""
    outs = {}
    for chunk in ("96", "4096"):
        outs[chunk] = tmp_path / f"seg{chunk}"
        res = _run(["segment", str(finished_run / "model"), "--input", str(synth_dir / "images"),
                    "--out", str(outs[chunk]), "--quiet", "--set", f"chunk_size={chunk}"])
        assert res.exit_code == 0, res.output
    stems = sorted(p.stem for p in (synth_dir / "images").iterdir())
    for stem in stems:
        tiled, whole = (np.asarray(Image.open(outs[c] / "labels" / f"{stem}.png")) for c in ("96", "4096"))
        np.testing.assert_array_equal(tiled, whole)
        for group in ("activations", "memberships"):
            a, b = (zarr.open_array(str(outs[c] / "store.zarr" / group / stem / "0"), mode="r") for c in ("96", "4096"))
            assert a.chunks[1:] == (96, 96) and b.chunks[1:] == b.shape[1:]
            np.testing.assert_array_equal(a[...], b[...])


def test_segment_refuses_other_feature_settings(finished_run, synth_dir, tmp_path):
    res = CliRunner().invoke(main, ["segment", str(finished_run / "model"), "--input", str(synth_dir / "images"),
                                    "--out", str(tmp_path / "x"), "--set", "gradient_sigma=2.5"])
    assert res.exit_code != 0 and "gradient_sigma" in res.output


def test_bad_config_key_fails_before_any_work(tmp_path, synth_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n_components: 3\nclahe_clip: 0.02\n")
    res = CliRunner().invoke(main, ["run", str(cfg), "--input", str(synth_dir / "images"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "clahe_clip" in res.output and "clahe_clip_limit" in res.output
    assert not (tmp_path / "o").exists()


def test_corrupt_and_tiny_images_are_skipped_and_reported(synth_dir, tmp_path):
    inp = tmp_path / "in"
    shutil.copytree(synth_dir / "images", inp)
    (inp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(inp / "tiny.png")
    out = tmp_path / "out"
    res = _run(["run", "--input", str(inp), "--out", str(out)] + FAST)
    assert res.exit_code == EXIT_SKIPPED
    summary = json.loads((out / "summary.json").read_text())
    skipped = {s["id"]: s for s in summary["skipped"]}
    assert set(skipped) == {"broken", "tiny"}
    assert "broken.jpg" in skipped["broken"]["error"] and "halo" in skipped["tiny"]["error"]
    assert len(list((out / "labels").glob("*.png"))) == 6
    # solver cd with store_features auto: the features were never written
    assert not (out / "store.zarr" / "features").exists()


def test_stage_graphs_build_without_computing(finished_run):
    from bigseg import pipeline, store
    from bigseg.model import Model
    from bigseg.segment import activations_graph
    from conftest import raise_if_dask_computes, small_settings

    s = small_settings(chunk_size=96)
    m = Model.load(finished_run / "model")
    root = store.open_root(finished_run / "store.zarr", mode="r")
    with raise_if_dask_computes():
        feats = pipeline.lazy_features(root, "synth02", s)
        acts = activations_graph(feats, m.H, m.scale_lo, m.scale_hi)
    stored = store.open_features(finished_run / "store.zarr", "synth02").values
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(store.round_significand(feats.compute(), "float16", 8), stored)
    assert acts.shape == stored.shape[:2] + (4,)


def test_compare_scores_bigseg_and_every_baseline(synth_dir, tmp_path):
    res = _run(["compare", "--input", str(synth_dir / "images"), "--labels", str(synth_dir / "labels"),
                "--out", str(tmp_path / "cmp")] + FAST)
    assert res.exit_code == 0, res.output
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    for name in ["bigseg", "plain NMF", "k-means", "multi-Otsu"]:
        assert f"| {name} |" in table and f"| {name} |" in res.output
    results = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert all(0 <= r["mean_iou"] <= 1 and r["wall_seconds"] > 0 for r in results.values())
    # every method scored the same pixels
    assert len({r["pixels"] for r in results.values()}) == 1


def test_select_k_command_writes_table_plot_and_recommendation(synth_dir, tmp_path):
    res = _run(["select-k", "--input", str(synth_dir / "images"), "--out", str(tmp_path / "k"), "--k-min", "2",
                "--k-max", "3", "--seeds", "2", "--set", "resize=native", "--set", "sample_size=3000", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "recommended k =" in res.output
    data = json.loads((tmp_path / "k" / "select_k.json").read_text())
    assert [r["k"] for r in data["results"]] == [2, 3] and data["recommended"] in (2, 3)
    assert (tmp_path / "k" / "select_k.png").exists()


def test_select_k_counts_the_void_phase_in_its_recommendation(tmp_path):
    from bigseg import synth

    images, _ = synth.write_family(tmp_path / "data", "pores", 3, seed=0, shape=(192, 256))
    res = _run(["select-k", "--input", str(images), "--out", str(tmp_path / "k"), "--k-min", "2", "--k-max", "3",
                "--seeds", "2", "--set", "resize=native", "--set", "sample_size=20000", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "k" / "select_k.json").read_text())
    # the scan's k are the phases besides the voids; -k takes the voids too, as n_components auto does
    assert data["void"]["sample_share"] > 0
    assert data["recommended"] == data["pixel_phases_recommended"] + 1
    assert "plus the void phase" in res.output and f"recommended k = {data['recommended']}" in res.output


def test_physical_resize_uses_pixel_sizes_from_sidecar_and_tiff(synth_dir, tmp_path):
    import tifffile

    inp = tmp_path / "in"
    inp.mkdir()
    img = np.asarray(Image.open(synth_dir / "images" / "synth00.png"))
    Image.fromarray(img).save(inp / "coarse.png")
    # 0.02 um/px in the TIFF tags: 500 px per cm
    tifffile.imwrite(inp / "fine.tif", img, resolution=(500000.0, 500000.0), resolutionunit="CENTIMETER")
    (tmp_path / "px.csv").write_text("image,pixel_size_um\ncoarse.png,0.04\n")
    out = tmp_path / "out"
    res = _run(["run", "--input", str(inp), "--out", str(out), "--set", "resize=physical",
                "--set", "target_pixel_size=0.04", "--set", f"pixel_size_csv={tmp_path / 'px.csv'}",
                "--set", "chunk_size=96", "--set", "sample_size=5000", "-k", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    assert root["images/coarse"].attrs["bigseg"]["pixel_size_source"] == "pixel_size_csv"
    assert root["images/fine"].attrs["bigseg"]["pixel_size"] == pytest.approx(0.02)
    h, w = root["images/coarse/0"].shape
    assert root["activations/coarse/0"].shape[1:] == (h, w)                    # 0.04 -> 0.04: native
    assert root["activations/fine/0"].shape[1:] == (round(h / 2), round(w / 2))  # 0.02 -> 0.04: half
    assert np.asarray(Image.open(out / "labels" / "fine.png")).shape == (h, w)


def test_physical_resize_without_pixel_size_skips_the_image_by_name(synth_dir, tmp_path):
    res = _run(["run", "--input", str(synth_dir / "images" / "synth00.png"), "--input",
                str(synth_dir / "images" / "synth03.png"), "--out", str(tmp_path / "o"), "--set", "resize=physical",
                "--set", "target_pixel_size=0.05", "--set", f"pixel_size_csv={_sidecar(tmp_path)}",
                "--set", "chunk_size=96", "--set", "sample_size=5000", "-k", "3", "--quiet"])
    assert res.exit_code == EXIT_SKIPPED
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [s["id"] for s in summary["skipped"]] == ["synth03"]
    assert "pixel size is unknown" in summary["skipped"][0]["error"]


def _sidecar(tmp_path):
    p = tmp_path / "px.csv"
    p.write_text("image,pixel_size_um\nsynth00,0.05\n")
    return p


def test_rerun_with_other_spatial_settings_redoes_labels_not_the_fit(synth_dir, tmp_path):
    out = tmp_path / "o"
    args = ["run", "--input", str(synth_dir / "images" / "synth00.png"), "--out", str(out)] + FAST
    assert _run(args).exit_code == 0
    first = np.asarray(Image.open(out / "labels" / "synth00.png"))
    fitted = (out / "model" / "model.npz").stat().st_mtime_ns
    assert _run(args).exit_code == 0
    assert json.loads((out / "summary.json").read_text())["segmented_this_run"] == 0
    assert _run(args + ["--set", "spatial_weight=0"]).exit_code == 0
    assert json.loads((out / "summary.json").read_text())["segmented_this_run"] == 1
    assert (out / "model" / "model.npz").stat().st_mtime_ns == fitted
    assert not np.array_equal(first, np.asarray(Image.open(out / "labels" / "synth00.png")))


def test_stages_in_small_batches_give_the_same_outputs(finished_run, synth_dir, tmp_path, monkeypatch):
    from bigseg.cluster import Runner

    labels_seen = []
    compute = Runner.compute

    def counting(self, objs, label=""):
        labels_seen.append((label.split(" ")[0], len(list(objs))))
        return compute(self, objs, label)

    monkeypatch.setattr(Runner, "batch_images", property(lambda self: 2))
    monkeypatch.setattr(Runner, "compute", counting)
    out = tmp_path / "batched"
    res = _run(["run", "--input", str(synth_dir / "images"), "--out", str(out), "--set", "store_features=true"]
               + FAST)
    assert res.exit_code == 0, res.output
    n = len(list((synth_dir / "images").iterdir()))
    for stage in ("ingest", "features", "segment"):
        sizes = [m for s, m in labels_seen if s == stage]
        assert len(sizes) == n // 2 and max(sizes) == 2, (stage, sizes)   # no graph holds more than 2 images
    for png in (finished_run / "labels").glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(out / "labels" / png.name)))
