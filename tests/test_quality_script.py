"""scripts/quality.py finds every labelled real set in the shared layout and scores the baselines on it."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture
def shared(tmp_path, monkeypatch):
    import quality

    rng = np.random.default_rng(0)
    for name, rows_extra in (("Alloy_A", 0), ("SteelB", 6)):
        d = tmp_path / name
        (d / "images").mkdir(parents=True)
        (d / "labels").mkdir()
        for i in (10, 2):                       # natural order: 2 before 10
            truth = np.zeros((40, 48), np.uint8)
            truth[:, 24:] = 1
            truth[5:9, 5:9] = 2
            grey = np.where(truth == 1, 180, 60).astype(np.uint8) + rng.integers(0, 10, truth.shape).astype(np.uint8)
            grey = np.concatenate([grey, np.full((rows_extra, 48), 255, np.uint8)])   # a data bar the mask lacks
            Image.fromarray(grey).save(d / "images" / f"m{i}.png")
            Image.fromarray(truth).save(d / "labels" / f"m{i}.png")
        (d / "SOURCE.md").write_text("| value | class | share |\n|---|---|---|\n| 0 | matrix (dark) | 50 % |\n"
                                     "| 1 | islands | 45 % |\n")
    (tmp_path / "no_labels" / "images").mkdir(parents=True)
    monkeypatch.setattr(quality, "DATA", tmp_path)
    return quality


def test_real_sets_are_found_cropped_to_their_masks_and_named(shared):
    assert list(shared.real_sets()) == ["alloy_a", "steelb"]
    assert shared.available_sets()[:2] == ["alloy_a", "steelb"]
    k, names, items = shared.load_set("steelb", quick=False)
    assert k == 3 and names == ("matrix", "islands", "class 2")
    assert [i for i, _, _ in items] == ["m2", "m10"]
    assert all(grey.shape == truth.shape == (40, 48) for _, grey, truth in items)


def test_otsu_baselines_and_the_lead_line(shared):
    k, names, items = shared.load_set("alloy_a", quick=False)
    for method in ("multi-Otsu per image", "global multi-Otsu"):
        preds = shared.otsu_labels(items, 2, method)
        assert [p.shape for p in preds] == [t.shape for _, _, t in items]
        # dark matrix and bright islands fall on either side of a threshold
        assert all(np.mean(p == (t == 1)) > 0.95 for p, (_, _, t) in zip(preds, items)), method
    results = {"bigseg": {"mean_iou": 0.5}, "k-means": {"mean_iou": 0.42}, "plain NMF": {"mean_iou": 0.3}}
    assert shared.lead_line("x", results) == "x: bigseg leads the best baseline (k-means, 0.420) by 0.080 mean IoU"
    assert "trails" in shared.lead_line("x", dict(results, bigseg={"mean_iou": 0.4}))
    assert shared.lead_line("x", {"k-means": {"mean_iou": 0.4}}) is None


def test_supervised_ceiling_is_held_out_and_never_the_best_baseline(shared):
    rng = np.random.default_rng(1)
    items, mixed = [], []
    for i in range(4):
        truth = np.zeros((24, 30), np.int64)
        truth[:, 15:] = 1
        f = np.zeros((24, 30, 2), np.float32)
        f[..., 0] = truth + rng.normal(0, 0.05, truth.shape)      # a feature that tells the classes apart
        f[..., 1] = rng.random(truth.shape)
        items.append((f"m{i}", truth.shape, f, truth))
        # the same masks, but only the first fold's images (even positions) carry them in their features: the
        # others hold the same values shuffled over the pixels
        shuffled = rng.permutation(f.reshape(-1, 2)).reshape(f.shape)
        mixed.append((f"m{i}", truth.shape, f if i % 2 == 0 else shuffled, truth))
    preds = shared.ceiling_labels(items, 2, per_image=200)
    assert shared.score(preds, items, 2, ("a", "b"))["mean_iou"] > 0.95
    # each image is predicted by a model fitted on the other fold: the informative images are predicted by
    # a model that learnt from noise, so they come out near chance, not as they would from their own masks
    preds = shared.ceiling_labels(mixed, 2, per_image=200)
    assert all(max(np.mean(p == t), np.mean(p != t)) < 0.8 for p, (_, _, _, t) in zip(preds[::2], mixed[::2]))
    results = {"bigseg": {"mean_iou": 0.5}, "k-means": {"mean_iou": 0.42}, shared.CEILING: {"mean_iou": 0.9}}
    assert "(k-means, 0.420)" in shared.lead_line("x", results)
