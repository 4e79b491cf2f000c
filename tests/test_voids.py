"""The void phase: a dark intensity mode before CLAHE becomes label 0, only where the collection has one."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import bigseg.cli
from bigseg import clahe, config, features, preprocess, regions, synth, voids
from bigseg.estimator import PhaseSegmenter, grey_array, segment_image
from bigseg.model import ModelError

QUICK = {"resize": "native", "sample_size": 6000, "max_iter": 200}


def _family(name, n=3):
    return synth.family(name, n, shape=(192, 256))


def _void_iou(seg, pairs) -> float:
    """IoU of label 0 against the pores' defect class (2), pooled over the images."""
    inter = union = 0
    for img, truth in pairs:
        pred = seg.predict(img)
        inter += int(((pred == 0) & (truth == 2)).sum())
        union += int(((pred == 0) | (truth == 2)).sum())
    return inter / union


@pytest.fixture(scope="module")
def pores():
    pairs = _family("pores")
    return PhaseSegmenter(n_components=3, **QUICK).fit([img for img, _ in pairs]), pairs


# --- the test on the level's sample ----------------------------------------------------------------------

def test_a_void_mode_is_found_and_a_plain_body_or_stray_pixels_are_not():
    rng = np.random.default_rng(1)
    body = rng.normal(0.5, 0.08, 200_000)
    # voids: 1 % of pixels in a mode of their own near black
    with_voids = np.concatenate([body, rng.normal(0.08, 0.02, 2_000)])
    threshold = voids.dark_mode_threshold(with_voids)
    assert threshold is not None and 0.1 < threshold < 0.5 - 1.5 * 0.08
    assert np.mean(with_voids < threshold) < 0.012
    assert voids.dark_mode_threshold(body) is None
    # two stray dark pixels are below the fence, but no mode beyond the counts' noise
    assert voids.dark_mode_threshold(np.concatenate([body, [0.05, 0.06]])) is None
    # a second phase darker than the body but inside the fence is a phase for NMF, not a void
    assert voids.dark_mode_threshold(np.concatenate([body, rng.normal(0.35, 0.03, 60_000)])) is None
    assert voids.dark_mode_threshold(np.full(1000, 0.4)) is None
    assert voids.dark_mode_threshold(np.array([])) is None


def test_the_level_is_the_normalised_image_before_clahe_smoothed_at_the_smaller_blur_sigma():
    s = config.validate({"blur_sigmas": [3.0, 8.0]})
    img = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    from scipy import ndimage as ndi

    expected = ndi.gaussian_filter(img, 3.0, mode="reflect", truncate=s["truncate"])
    np.testing.assert_array_equal(voids.level_block(img, s)[..., 0], expected)
    np.testing.assert_array_equal(voids.level_block(img, s)[..., 1],
                                  ndi.gaussian_filter(img, 0.5, mode="reflect", truncate=s["truncate"]))
    assert features.stack_names(s) == features.feature_names(s) + ["void_level", "void_pixel"]
    assert features.stack_names(dict(s, void_class="off")) == features.feature_names(s)


# --- where the phase appears ---------------------------------------------------------------------------------

def test_a_void_phase_appears_on_pores_and_takes_label_0(pores):
    seg, pairs = pores
    m = seg.model_
    assert m.void_below is not None and 0 < m.void_below < 0.5
    assert m.n_phases == 3 and m.phase_names[0] == voids.VOID_NAME and 0 not in m.transitions
    assert m.settings["n_components"] == 3 and m.report["void"]["sample_share"] > 0
    # the pores and cracks, not the matrix: without the void phase their IoU is near 0 (docs/quality.md)
    assert _void_iou(seg, pairs) > 0.35


def test_no_void_phase_without_voids_and_then_the_maps_are_those_of_off():
    images = [img for img, _ in _family("islands", 2)]
    auto = PhaseSegmenter(n_components=3, **QUICK).fit(images)
    off = PhaseSegmenter(n_components=3, void_class="off", **QUICK).fit(images)
    assert auto.model_.void_below is None
    np.testing.assert_array_equal(auto.model_.H, off.model_.H)
    assert np.array_equal(auto.predict(images[1]), off.predict(images[1]))


def test_a_blank_frame_makes_no_void_phase_of_a_collection_without_voids():
    # one frame of one grey level normalises to zeros: 1/7 of the sample far below the fence, a "mode"
    # that took a phase from every other image before the test skipped frames without contrast
    images = [img for img, _ in synth.family("lamellar", 6, shape=(192, 256))]
    blank = np.full((192, 256), 0.3, np.float32)
    seg = PhaseSegmenter(n_components=3, **dict(QUICK, sample_size=20000)).fit(images + [blank])
    assert seg.model_.void_below is None and seg.model_.n_phases == 3
    pores = [img for img, _ in _family("pores")]
    assert PhaseSegmenter(n_components=3, **dict(QUICK, sample_size=20000)).fit(pores + [blank]).model_.void_below \
        is not None


def test_void_class_off_gives_no_void_phase_on_pores():
    pairs = _family("pores", 2)
    seg = PhaseSegmenter(n_components=3, void_class="off", **QUICK).fit([img for img, _ in pairs])
    assert seg.model_.void_below is None and voids.VOID_NAME not in seg.model_.phase_names


# --- one per-image path -----------------------------------------------------------------------------------------

def test_void_labels_are_the_arg_max_of_scores_and_memberships(pores):
    seg, pairs = pores
    m, s = seg.model_, seg._settings()
    acts, labels = segment_image(grey_array(pairs[0][0], s), m, s)
    assert set(np.unique(acts[0])) == {0.0, 1.0}
    scores, proba, before, after = regions.settled_maps(m, acts, s)
    assert np.array_equal(labels, scores.argmax(axis=0)) and np.array_equal(labels, after)
    assert np.array_equal(before, m.phase_scores(acts).argmax(axis=0))
    # a void pixel never moves; a band between a void and another phase may go to the void
    assert np.array_equal(before == 0, acts[0] == 1) and (labels[acts[0] == 1] == 0).all()
    assert np.array_equal(labels == 0, (acts[0] == 1) | ((before != after) & (after == 0)))
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, rtol=1e-5)
    assert np.array_equal(m.phase_memberships(acts)[0], acts[0])
    assert np.array_equal(labels, seg.predict(pairs[0][0]))


def test_chunked_void_segmentation_equals_one_block(pores):
    seg, pairs = pores
    tiled = copy.deepcopy(seg).set_params(chunk_size=48)    # 4 x 6 chunks, each with its halo
    np.testing.assert_array_equal(tiled.transform(pairs[1][0]), seg.transform(pairs[1][0]))
    assert np.array_equal(tiled.predict(pairs[1][0]), seg.predict(pairs[1][0]))


@pytest.mark.parametrize("percentiles", [[0.0, 100.0], [1.0, 99.0]])
def test_the_tiled_preprocessing_gives_the_void_plane_too(percentiles):
    img = (np.random.default_rng(2).random((96, 128)) * 4000).astype(np.uint16)
    s = config.validate({"resize": "native", "clahe_kernel_size": 32, "normalize_percentiles": percentiles})
    pp = {k: s[k] for k in ("normalize_percentiles", "clahe", "clahe_clip_limit", "clahe_kernel_size", "void_class")}
    pre, plane = clahe.preprocess_planes(img, pp, 32)
    np.testing.assert_array_equal(plane.compute(), preprocess.planes(img, s, img.shape)[1])
    np.testing.assert_array_equal(pre.compute(), preprocess.preprocess_image(img, s, img.shape))
    assert clahe.preprocess_planes(img, dict(pp, void_class="off"), 32)[1] is None


def test_hot_pixels_do_not_press_an_image_into_the_voids():
    # two saturated pixels of a 16-bit frame: min-max normalisation puts its whole body below a tenth
    pairs = synth.family("pores", 6, shape=(192, 256))
    images = [(img * 4000 + 1000).astype(np.uint16) for img, _ in pairs]
    images[2][10, 10] = images[2][100, 50] = 65535
    seg = PhaseSegmenter(n_components=3, **dict(QUICK, sample_size=20000)).fit(images)
    assert seg.model_.void_below is not None
    shares = [float((seg.predict(img) == 0).mean()) for img in images]
    assert max(shares) < 0.05, shares
    truth = pairs[2][1] == 2
    found = seg.predict(images[2]) == 0
    assert (found & truth).sum() / (found | truth).sum() > 0.35


def test_the_cli_run_and_predict_agree_on_a_void_model(pores, tmp_path):
    _, pairs = pores
    src = tmp_path / "images"
    src.mkdir()
    for i, (img, _) in enumerate(pairs):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(src / f"pores{i:02d}.png")
    out = tmp_path / "out"
    args = ["run", "--input", str(src), "--out", str(out), "-k", "3", "--quiet"]
    for k, v in QUICK.items():
        args += ["--set", f"{k}={v}"]
    result = CliRunner().invoke(bigseg.cli.main, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["void_below"] > 0 and meta["phase_names"][0] == voids.VOID_NAME
    seg = PhaseSegmenter.load(out / "model")
    assert seg.model_.void_below == meta["void_below"]
    for path in sorted(src.iterdir()):
        expected = np.asarray(Image.open(out / "labels" / f"{path.stem}.png"))
        assert np.array_equal(seg.predict(path), expected)
        assert (expected == 0).any()


# --- the model file ----------------------------------------------------------------------------------------------

def test_a_void_model_round_trips_and_a_bad_threshold_is_refused(pores, tmp_path):
    seg, pairs = pores
    seg.save(tmp_path / "model")
    back = PhaseSegmenter.load(tmp_path / "model")
    assert back.model_.void_below == seg.model_.void_below
    assert np.array_equal(back.predict(pairs[0][0]), seg.predict(pairs[0][0]))
    meta_path = tmp_path / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    for bad, field in ((1.5, "void_below"), ("low", "void_below"), (True, "void_below")):
        meta_path.write_text(json.dumps(dict(meta, void_below=bad)))
        with pytest.raises(ModelError, match=f"model.json.*{field}"):
            PhaseSegmenter.load(tmp_path / "model")
    meta_path.write_text(json.dumps(dict(meta, settings=dict(meta["settings"], void_class="off"))))
    with pytest.raises(ModelError, match="void_class"):
        PhaseSegmenter.load(tmp_path / "model")


def test_the_streamed_minibatch_fit_leaves_the_void_pixels_out(pores):
    from bigseg import model

    seg, pairs = pores
    streamed = PhaseSegmenter(n_components=3, solver="minibatch", **dict(QUICK, max_iter=20)).fit(
        [img for img, _ in pairs])
    m = streamed.model_
    assert m.void_below is not None and m.phase_names[0] == voids.VOID_NAME
    # the blocks it streams keep only the features of the pixels that are no void
    n = len(m.feature_names)
    block = np.array([[0.1] * n + [0.0, m.void_below / 2], [0.2] * n + [0.5, 0.5]], np.float32)
    np.testing.assert_array_equal(model._phase_pixels(block, n, m.void_below), block[1:, :n])
    assert _void_iou(streamed, pairs) > 0.35
