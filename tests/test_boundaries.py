"""Regions, not rims: a component living on phase boundaries is found, refitted away and never labels a pixel."""

import json

import dask
import dask.array as da
import numpy as np
import pytest
from click.testing import CliRunner

from bigseg import config, export, features, fractions, model, preprocess, regions, segment, synth
from bigseg.cli import main
from bigseg.phases import csv_names


def _features(images, s):
    params = features.feature_params(s)
    return [features.feature_block(preprocess.preprocess_image(img, s, img.shape), params) for img in images]


def _fit(feats, s):
    arrays = [da.from_array(f, chunks=f.shape) for f in feats]
    return model.fit(arrays, features.feature_names(s), s, lambda objs: list(dask.compute(*objs, scheduler="sync")),
                     find_transitions=lambda H, lo, hi: regions.find_transitions(feats, H, lo, hi, s))


@pytest.fixture(scope="module")
def islands():
    """Islands ringed by bright rims in a matrix: the held-out superalloy's shape."""
    pairs = synth.family("islands", 2, seed=0, shape=(192, 256))
    s = config.validate({"resize": "native", "n_components": 3, "sample_size": 20000})
    feats = _features([img for img, _ in pairs], s)
    return s, feats, [lab for _, lab in pairs]


def test_rim_component_is_refitted_away_and_labels_only_phases(islands, tmp_path):
    s, feats, truths = islands
    fitted = _fit(feats, s)
    assert len(fitted.transitions) == 1 and fitted.n_components == 4 and fitted.n_phases == 3
    assert max(fitted.report["between_shares"]) > s["transition_share"]
    assert fitted.report["refit"]["n_components"] == 4
    l1, l2 = model.regularisation(s, fitted.H.shape[1])
    acts = segment.spatial_block(feats[0], fitted.H, fitted.scale_lo, fitted.scale_hi, l1, l2,
                                 s["spatial_weight"], s["spatial_sweeps"]).transpose(2, 0, 1)
    result = export.export_image(acts, acts.shape[1:], tmp_path, "i0", phases=fitted.phases)
    assert set(result["fractions"]) == {"phase_0", "phase_1", "phase_2"}
    assert abs(sum(result["fractions"].values()) - 1) < 1e-9
    assert 0.01 < result["transition_share"] < 0.5        # the rims' pixels went to the regions around them
    # without the boundary step one of the three phases is spent on the rims
    plain = _fit(feats, dict(s, transition_share=1.0))
    assert plain.transitions == [] and plain.n_components == 3
    # the model keeps its boundary rows through a save and a load
    fitted.save(tmp_path / "m")
    back = model.Model.load(tmp_path / "m")
    assert back.transitions == fitted.transitions and back.phases == fitted.phases
    np.testing.assert_array_equal(back.H, fitted.H)


def test_no_boundary_component_where_there_are_no_rims():
    pairs = synth.family("pores", 2, seed=0, shape=(192, 256))
    s = config.validate({"resize": "native", "n_components": 3, "sample_size": 20000})
    fitted = _fit(_features([img for img, _ in pairs], s), s)
    assert fitted.transitions == [] and fitted.n_components == 3 and "refit" not in fitted.report


def test_a_run_reports_the_boundary_pixels_and_writes_k_phases(tmp_path):
    images, _ = synth.write_family(tmp_path / "data", "islands", 2, seed=0, shape=(192, 256))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--input", str(images), "--out", str(out), "-k", "3", "--quiet",
                                    "--set", "resize=native"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["boundaries"]["components"] == 1 and summary["boundaries"]["pixel_share"] > 0.01
    assert len(summary["components"]) == 3
    header = (out / "phase_fractions.csv").read_text().splitlines()[0].split(",")
    saved = json.loads((out / "model" / "model.json").read_text())
    # boundaries get no column (of fraction or of area)
    assert header == fractions.image_header(csv_names(saved["phase_names"])) and len(header) == 8
    assert len(saved["transitions"]) == 1 and saved["n_components"] == 4
    assert saved["transitions"] == [3]          # boundary rows come after the phases


def test_a_damaged_boundary_list_is_refused(tmp_path, islands):
    s, feats, _ = islands
    fitted = _fit(feats, s)
    fitted.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    for bad in ([9], [0, 0], [0, 1, 2, 3], "0", [True]):
        meta["transitions"] = bad
        (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
        with pytest.raises(model.ModelError, match="'transitions'"):
            model.Model.load(tmp_path / "m")


@pytest.mark.parametrize("fewer", [0, 1])
def test_without_room_for_a_refit_the_boundary_still_labels_nothing_and_the_run_says_so(islands, tmp_path, fewer):
    from bigseg import diagnose

    s, feats, _ = islands
    # a refit needs fewer components than features: k plus the boundary must stay below their count
    s = dict(s, n_components=len(feats[0][0, 0]) - fewer)
    arrays = [da.from_array(f, chunks=f.shape) for f in feats]
    fitted = model.fit(arrays, features.feature_names(s), s,
                       lambda objs: list(dask.compute(*objs, scheduler="sync")),
                       find_transitions=lambda H, lo, hi: ([0], [1.0] + [0.0] * (len(H) - 1)))
    # the boundary row moves behind the phases (phases.order)
    assert fitted.transitions == [s["n_components"] - 1] and fitted.n_phases == s["n_components"] - 1
    assert "refit" not in fitted.report
    fitted.save(tmp_path / "m")
    assert model.Model.load(tmp_path / "m").phases == fitted.phases
    kinds = [w["kind"] for w in diagnose.failure_modes(np.full(fitted.n_phases, 0.2), {}, fitted.report)]
    assert "boundaries" in kinds


def test_n_components_auto_picks_a_stable_k_and_a_rerun_reuses_the_fit(tmp_path):
    images, _ = synth.write_family(tmp_path / "data", "pores", 2, seed=0, shape=(160, 192))
    out = tmp_path / "out"
    args = ["run", "--input", str(images), "--out", str(out), "--quiet", "--set", "resize=native",
            "--set", "n_components=auto", "--set", "sample_size=6000"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "model" / "model.json").read_text())
    chosen = saved["report"]["n_components_auto"]["chosen"]
    assert 2 <= chosen <= 5 and saved["settings"]["n_components"] == chosen
    assert [r["k"] for r in saved["report"]["n_components_auto"]["scan"]] == [2, 3, 4, 5]
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert "0 segmented by this run" in again.output
    assert config.validate({"n_components": "auto"})["n_components"] == "auto"
