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
