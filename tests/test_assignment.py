"""Phases as H rows or as centres in activation space: chosen by coherence and separation, kept in the model, one label path."""

import json

import dask
import dask.array as da
import numpy as np
import pytest

from bigseg import config, evaluate, features, model, preprocess, regions, segment, synth


def _features(images, s):
    params = features.feature_params(s)
    return [features.feature_block(preprocess.preprocess_image(img, s, img.shape), params) for img in images]


def _fit(family, s, n=2):
    pairs = synth.family(family, n, seed=0, shape=(192, 256))
    feats = _features([img for img, _ in pairs], s)
    arrays = [da.from_array(f, chunks=f.shape) for f in feats]
    fitted = model.fit(arrays, features.feature_names(s), s, lambda objs: list(dask.compute(*objs, scheduler="sync")),
                       **regions.fit_hooks(lambda: feats, s))
    return fitted, feats, [lab for _, lab in pairs]


def _settings(**kw):
    return config.validate(dict({"resize": "native", "n_components": 3, "sample_size": 20000}, **kw))


def _labels(fitted, feats, s):
    l1, l2 = model.regularisation(s, fitted.H.shape[1])
    out = []
    for f in feats:
        acts = np.moveaxis(segment.spatial_block(f, fitted.H, fitted.scale_lo, fitted.scale_hi, l1, l2,
                                                 s["spatial_weight"], s["spatial_sweeps"]), 2, 0)
        out.append((acts, segment.labels_at(fitted.phase_scores(acts), f.shape[:2])))
    return out


def _mean_iou(preds, truths, k):
    cm = sum(evaluate.confusion(t, p, k, k) for p, t in zip(preds, truths))
    return evaluate.scores(cm, [str(i) for i in range(k)])["mean_iou"]


@pytest.fixture(scope="module")
def textured():
    s = _settings()
    fitted, feats, truths = _fit("textured", s)
    return s, fitted, feats, truths


def test_islands_told_apart_by_texture_get_centres_and_beat_the_rows(textured):
    s, fitted, feats, truths = textured
    info = fitted.report["assignment"]
    assert info["chosen"] == "centres" and fitted.centres.shape == (3, fitted.n_components)
    assert info["coherence"]["centres"] > info["coherence"]["components"]
    ours = _mean_iou([lab for _, lab in _labels(fitted, feats, s)], truths, 3)
    rows = model.Model(H=fitted.H, scale_lo=fitted.scale_lo, scale_hi=fitted.scale_hi,
                       feature_names=fitted.feature_names, settings=fitted.settings, transitions=fitted.transitions)
    by_rows = _mean_iou([lab for _, lab in _labels(rows, feats, s)], truths, 3)
    assert ours > by_rows + 0.05


def test_a_thin_phase_keeps_the_component_assignment():
    # lamellar: a thin bright network film between ferrite grains, which k-means over W would merge away
    s = _settings()
    fitted, _, _ = _fit("lamellar", s)
    assert fitted.report["assignment"]["chosen"] == "components" and fitted.centres is None


def test_assignment_setting_forces_either_way():
    s = _settings(assignment="components")
    fitted, _, _ = _fit("textured", s)
    assert fitted.centres is None and fitted.report["assignment"]["chosen"] == "components"
    s = _settings(assignment="centres")
    fitted, _, _ = _fit("lamellar", s)
    assert fitted.centres is not None and fitted.n_phases == 3


def test_scores_pick_the_nearest_centre_and_memberships_agree(textured):
    s, fitted, feats, _ = textured
    acts, _ = _labels(fitted, feats, s)[0]
    scores = fitted.phase_scores(acts)
    assert np.array_equal(scores.argmax(axis=0), model.nearest_centre(acts, fitted.centres))
    memb = fitted.phase_memberships(acts)
    assert memb.dtype == np.float32 and np.allclose(memb.sum(axis=0), 1, atol=1e-5)
    assert (memb.argmax(axis=0) == scores.argmax(axis=0)).mean() > 0.9999
    lazy = fitted.phase_memberships(da.from_array(acts, chunks=(acts.shape[0], 64, 64)))
    assert np.allclose(lazy.compute(), memb, atol=1e-6)
    assert np.allclose(fitted.phase_scores(da.from_array(acts, chunks=(acts.shape[0], 50, 70))).compute(), scores,
                       atol=1e-5)
    # the native-grid labels come from resampled scores, which is resampling W and then choosing
    shape = (301, 397)
    direct = np.asarray(model.nearest_centre(segment.resample_linear(acts, shape), fitted.centres))
    assert (segment.labels_at(scores, shape) == direct).mean() > 0.9999


def test_centres_are_saved_loaded_and_named(textured, tmp_path):
    _, fitted, _, _ = textured
    fitted.save(tmp_path / "m")
    back = model.Model.load(tmp_path / "m")
    assert np.array_equal(back.centres, fitted.centres) and back.spread == fitted.spread
    assert back.n_phases == 3 and len(back.phase_names) == 3 and back.phase_H.shape == (3, len(back.feature_names))
    # darkest first: the profile each phase's pixels have
    levels = [p["pixel_means"][back.feature_names[0]] for p in back.report["phases"]]
    assert levels == sorted(levels)


@pytest.mark.parametrize("damage, message", [
    (lambda a, m: a.update(centres=a["centres"][:, :-1]), "'centres' must be a float array"),
    (lambda a, m: a.update(centres=-a["centres"]), "finite and non-negative"),
    (lambda a, m: a.update(centres=np.full_like(a["centres"], np.nan)), "finite and non-negative"),
    (lambda a, m: a.update(centres=np.repeat(a["centres"][:1], 3, axis=0)), "must be distinct"),
    (lambda a, m: a.update(centres=a["centres"][:2]), "phase centres"),
    (lambda a, m: m.update(spread=-1.0), "field 'spread'"),
    (lambda a, m: m.pop("spread"), "field 'spread'"),
    (lambda a, m: a.pop("centres"), "field 'spread' belongs to phase centres"),
])
def test_damaged_centres_are_refused_in_one_line(textured, tmp_path, damage, message):
    _, fitted, _, _ = textured
    fitted.save(tmp_path / "m")
    arrays = dict(np.load(tmp_path / "m" / "model.npz"))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    damage(arrays, meta)
    np.savez(tmp_path / "m" / "model.npz", **arrays)
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(model.ModelError, match=message) as err:
        model.Model.load(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_coherence_prefers_regions_to_speckle():
    rng = np.random.default_rng(0)
    regions_map = np.zeros((64, 64), int)
    regions_map[:, 32:] = 1
    speckle = rng.integers(0, 2, (64, 64))
    assert regions.coherence([regions_map]) > 0.9 > 0.2 > regions.coherence([speckle])


def test_cli_with_centres_equals_predict_and_keeps_memberships(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from bigseg import PhaseSegmenter
    from bigseg.cli import main

    images, _ = synth.write_family(tmp_path / "data", "textured", 2, seed=1, shape=(160, 224))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--input", str(images), "--out", str(out), "-k", "3", "--quiet",
                                    "--set", "assignment=centres", "--set", "resize=native",
                                    "--set", "sample_size=20000"])
    assert res.exit_code == 0, res.output
    seg = PhaseSegmenter.load(out / "model")
    assert seg.model_.centres is not None
    summary = json.loads((out / "summary.json").read_text())
    for p in sorted(images.glob("*.png")):
        labels = np.asarray(Image.open(out / "labels" / p.name))
        assert np.array_equal(seg.predict(p), labels)
        import zarr
        soft = zarr.open_group(str(out / "store.zarr"), mode="r")[f"memberships/{p.stem}/0"][:].astype(np.float32)
        assert soft.shape[0] == 3 and np.mean(soft.argmax(0) == labels) > 0.999
    assert len(summary["components"]) == 3 and summary["assignment"]["chosen"] == "centres"


def test_too_few_pixels_keep_the_rows():
    s = _settings()
    maps = [np.random.default_rng(0).random((4, 3, 5)).astype(np.float32)]
    centres, spread, info = regions.choose_assignment(maps, [3], 3, dict(s, assignment="centres"))
    assert centres is None and spread is None and info["chosen"] == "components" and "too few" in info["note"]


def test_separation_is_the_calinski_harabasz_ratio():
    from sklearn.metrics import calinski_harabasz_score

    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (300, 4)), rng.normal(3, 1, (200, 4))])
    truth = np.repeat([0, 1], [300, 200])
    noise = rng.integers(0, 2, 500)
    assert regions.separation(X, truth) == pytest.approx(calinski_harabasz_score(X, truth), rel=1e-9)
    assert regions.separation(X, truth) > 10 * regions.separation(X, noise)
    assert regions.separation(X, np.zeros(500, int)) == 0.0


@pytest.mark.parametrize("ragged, seps, chosen, by", [
    ((0.30, 0.20), {"components": 5.0, "centres": 1.0}, "centres", "coherence"),       # clearly fewer ragged
    ((0.20, 0.30), {"components": 1.0, "centres": 5.0}, "components", "coherence"),
    ((0.163, 0.161), {"components": 67.0, "centres": 97.0}, "centres", "separation"),  # a tie: the features decide
    ((0.161, 0.163), {"components": 97.0, "centres": 67.0}, "components", "separation"),
    ((0.161, 0.163), None, "components", "default"),
])
def test_coherence_decides_when_clear_and_separation_within_its_band(ragged, seps, chosen, by):
    got, decided_by, margin = regions.decide_assignment(*ragged, seps)
    assert (got, decided_by) == (chosen, by)
    assert margin >= 0 and (margin > 0) == (by != "default")


def test_phases_that_share_a_part_get_centres_by_separation():
    # two regions of one part at two levels, and a speckle part that the arg max of the rows reads as a
    # phase: the rows' map is one big label with specks (coherent because it says little), the centres'
    # map splits the two levels; in the features the levels differ far more than the specks do
    rng = np.random.default_rng(0)
    level = np.where(np.arange(96)[None, :] < 48, 1.0, 1.6) * np.ones((96, 96))
    level += rng.normal(0, 0.14, level.shape)
    speck = np.where(rng.random(level.shape) < 0.02, 1.9, 0.0)
    maps = [np.stack([level, speck]).astype(np.float32)]
    feats = [np.stack([level, 0.2 * speck], axis=-1).astype(np.float32)]
    s = _settings(n_components=2)
    centres, _, info = regions.choose_assignment(maps, [], 2, s, feats)
    assert info["decided_by"] == "separation" and info["chosen"] == "centres" and centres is not None
    assert info["separation"]["centres"] > 10 * info["separation"]["components"]
    ragged = [1 - info["coherence"][m] for m in ("components", "centres")]
    assert max(ragged) * regions.CENTRES_RAGGED_SHARE < min(ragged)        # coherence alone: a coin flip
