"""The scripts that measure (not only time) something are checked on the synthetic demo data."""

import sys
from pathlib import Path

import pytest

from bigseg import config, demo, io

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return demo.make_dataset(tmp_path_factory.mktemp("demo"), n_images=4, seed=3)


def test_feature_ceiling_learns_the_synthetic_phases(demo_data):
    import feature_ceiling

    images, labels = demo_data
    pairs = [(f, labels / f"{f.stem}.png") for f in io.find_images([images])]
    s = feature_ceiling._feature_settings(config.validate({"resize": [128, 128]}), "method+closing")
    assert s["features"] == ["intensity", "gradient", "laplacian", "variance", "blur", "closing"]
    res = feature_ceiling.ceiling(pairs, s, n_classes=4, per_image=1500, seed=0)
    assert set(res) == {"plain", "balanced"}
    # the demo's phases differ in grey level and texture, so a supervised model on
    # these features separates them far better than chance (0.25 accuracy for 4 even classes)
    assert res["plain"]["majority_accuracy"] > 0.7
    assert res["plain"]["mean_iou"] > 0.4


@pytest.mark.parametrize("assignment, family", [("components", "demo"), ("centres", "demo"),
                                                ("components", "pores")])
def test_minimal_script_labels_equal_predict(demo_data, tmp_path, assignment, family):
    """scripts/minimal_segment.py, the reference bench.py times predict against, gives predict's labels
    bit for bit: from files (PNG, 16-bit TIFF, RGB JPEG; data bar found) and from arrays, resampled up
    by non-integer factors, with the coupled sweeps, phases as H rows or as centres, with a void phase."""
    pytest.importorskip("numba")
    import numpy as np
    from PIL import Image

    import bench
    import minimal_segment

    from bigseg import PhaseSegmenter, synth

    images, _ = demo_data
    if family == "pores":
        images = tmp_path / "pores"
        images.mkdir()
        for i, (img, _) in enumerate(synth.family("pores", 3, shape=(192, 256))):
            Image.fromarray((img * 255).round().astype(np.uint8)).save(images / f"pores{i}.png")
    paths = io.find_images([images])
    # the void mode holds 1-3 % of the pixels: a sample of 6000 is too few to tell it from noise
    size = {"resize": 150, "sample_size": 6000} if family == "demo" else {"resize": 200, "sample_size": 20000}
    seg = PhaseSegmenter(n_components=3, max_iter=200, assignment=assignment, **size).fit(paths)
    assert (seg.model_.centres is not None) == (assignment == "centres")
    assert (seg.model_.void_below is not None) == (family == "pores")
    seg.save(tmp_path / "model")
    assert minimal_segment.main([str(tmp_path / "model")] + [str(p) for p in paths]
                                + ["--out", str(tmp_path / "labels")]) == 0
    ref = minimal_segment.load_model(tmp_path / "model")
    for p in paths:
        ours = seg.predict(p)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "labels" / f"{p.stem}.png")), ours)
        decoded = io.read_image(p).data
        np.testing.assert_array_equal(minimal_segment.segment(decoded, ref), seg.predict(decoded))
    _, _, differ, total = bench.in_memory(paths[:2], tmp_path / "model")
    assert differ == 0 and total > 0


def test_minimal_script_refuses_what_it_does_not_compute(tmp_path):
    import json

    import minimal_segment

    from bigseg import PhaseSegmenter, synth

    images = [img for img, _ in synth.family("islands", 1, shape=(96, 128))]
    PhaseSegmenter(n_components=2, resize="native", sample_size=3000, features="extended",
                   max_iter=50).fit(images).save(tmp_path / "m")
    with pytest.raises(SystemExit, match="computes only"):
        minimal_segment.load_model(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["settings"]["features"] == "extended"


def test_rare_class_study_pieces_on_crafted_maps():
    import numpy as np
    import rare_class_study as study

    # a 2-px rim (label 2) between a left region (0) and a right region (1) goes to the two regions;
    # a 2-px film of label 2 between two grains of one label (0) stays: it is between one label only
    rim = np.zeros((40, 60), np.int64)
    rim[:, 30:] = 1
    rim[:, 28:30] = 2
    out, moved = study.thin_between(rim, 3, 2)
    assert (out != 2).all() and moved.sum() == 2 * 40
    assert (out[:, :29] == 0).all() and (out[:, 29:] == 1).all()
    film = np.zeros((40, 60), np.int64)
    film[:, 28:30] = 2
    out, moved = study.thin_between(film, 3, 2)
    assert not moved.any() and (out == film).all()

    # the top-hat detector finds a small bright disc in a noisy flat field, and not a long bright line
    rng = np.random.default_rng(0)
    img = 0.5 + 0.02 * rng.standard_normal((64, 64))
    img[study.disc(2).nonzero()[0] + 20, study.disc(2).nonzero()[1] + 20] += 0.4
    img[50:53, 5:60] += 0.4
    found = study.tophat_mad(img, 4, 4)
    assert found[22, 22] and not found[51, 30]
    assert found.sum() < 40


def test_rare_class_study_region_rule_moves_thin_regions_only():
    import numpy as np
    import rare_class_study as study

    # the region rule: a thin region between two labels goes; a thick one between them stays
    labels = np.zeros((40, 60), np.int64)
    labels[:, 30:] = 1
    labels[:, 28:30] = 2
    out, moved = study.thin_regions_between(labels, 3, 2)
    assert (out != 2).all() and moved.sum() == 80
    labels[:, 20:30] = 2
    out, moved = study.thin_regions_between(labels, 3, 2)
    assert not moved.any()
