"""The scripts that measure (not only time) something are checked on the synthetic demo data."""

import sys
from pathlib import Path

import pytest

from bigseg import demo, io

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return demo.make_dataset(tmp_path_factory.mktemp("demo"), n_images=4, seed=3)


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
