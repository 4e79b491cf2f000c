"""How far can any pixel-wise method get with a feature bank? A supervised ceiling.

For each feature set, a gradient-boosted classifier (scikit-learn
``HistGradientBoostingClassifier``) is trained on the human masks of half the
images and predicts the other half (two folds: even and odd images in name
order). Each image goes through the Python API's per-image path, as in
``bigseg run``: ``estimator.read_grey`` (ingest: grey, data bar cropped, pixel
size), ``estimator.image_features`` (preprocessing and feature kernel), and
``segment.labels_at`` (the native-grid upsampling). It sees the true classes, so its scores bound
from above what an unsupervised method working pixel by pixel on the same
features can reach: if the classifier cannot tell two phases apart, NMF cannot
either. Two rows per set: plain (maximises accuracy) and class-balanced
(maximises mean IoU on rare phases).

Scores are the same as ``bigseg evaluate`` (per-class IoU with a Hungarian
match, mean IoU, ARI, majority-mapped accuracy) on the held-out images. Memory
holds one image's features plus the training sample.

Example, MetalDAM (about 3 minutes on 2 cores)::

    python scripts/feature_ceiling.py configs/metaldam.yaml --input ../shared/data/MetalDAM/images \
        --labels ../shared/data/MetalDAM/labels --sets method extended method+closing+opening
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bigseg import config, estimator, evaluate, features, io
from bigseg.segment import labels_at


def _feature_settings(settings, spec):
    """A preset name, or kinds joined by '+', where a preset expands to its kinds."""
    kinds = []
    for part in spec.split("+"):
        kinds += config.FEATURE_PRESETS.get(part, [part])
    return config.validate(dict(settings, features=list(dict.fromkeys(kinds))))


def _features(path, settings, table=None):
    """One image file's cropped shape and its ``(y, x, f)`` features, as ``bigseg run`` computes them.

    Parameters
    ----------
    path : Path
        An image file.
    settings : dict
        Validated settings (:func:`_feature_settings`).
    table : dict, optional
        ``{file stem: micrometres per pixel}`` (``io.read_pixel_sizes``).

    Returns
    -------
    shape : tuple of int
        The image's shape after cropping: the grid predictions are scored on.
    feats : ndarray, float32, shape (y, x, n_features)
        The features on the processing grid, unrounded.
    """
    grey, pixel_size, _ = estimator.read_grey(path, settings, table)
    # the NMF features only: the ceiling is of what the phases see
    return grey.shape, estimator.image_features(grey, dict(settings, void_class="off"), pixel_size, str(path))[1]


def _predict_native(clf, f, k, shape):
    proba = clf.predict_proba(f.reshape(-1, f.shape[-1]))
    full = np.zeros((proba.shape[0], k), np.float32)
    full[:, clf.classes_] = proba
    return labels_at(full.reshape(f.shape[:2] + (k,)).transpose(2, 0, 1), shape)


def ceiling(pairs, settings, n_classes, per_image, seed):
    """Scores of the plain and class-balanced classifiers over both folds."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    table = io.read_pixel_sizes(settings["pixel_size_csv"]) if settings["pixel_size_csv"] else None
    folds = [pairs[0::2], pairs[1::2]]
    samples = []
    for fold in folds:
        X, y = [], []
        for image, label in fold:
            _, f = _features(image, settings, table)
            truth = evaluate.resize_nearest(io.read_label_mask(label), f.shape[:2]).ravel()
            pick = rng.choice(truth.size, min(per_image, truth.size), replace=False)
            X.append(f.reshape(-1, f.shape[-1])[pick])
            y.append(truth[pick])
        samples.append((np.concatenate(X), np.concatenate(y)))
    weightings = ("plain", "balanced")
    models = {w: [HistGradientBoostingClassifier(max_iter=100, class_weight=None if w == "plain" else w,
                                                 random_state=seed).fit(X, y) for X, y in samples]
              for w in weightings}
    cm = {w: np.zeros((n_classes, n_classes), np.int64) for w in weightings}
    for f_index, fold in enumerate(folds):
        for image, label in fold:
            shape, f = _features(image, settings, table)
            truth = io.read_label_mask(label)
            for w in weightings:
                model = models[w][1 - f_index]              # each fold is predicted by the other's model
                pred = _predict_native(model, f, n_classes, shape)
                cm[w] += evaluate.confusion(truth, evaluate.resize_nearest(pred, truth.shape), n_classes, n_classes)
    return {w: evaluate.scores(cm[w]) for w in weightings}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", help="YAML settings (the data's facts: crop, resize)")
    p.add_argument("--input", required=True, type=Path, help="folder of images")
    p.add_argument("--labels", required=True, type=Path, help="folder of masks named like the images")
    p.add_argument("--sets", nargs="+", default=["method", "extended"],
                   help="feature sets: a preset or kinds joined by '+', e.g. method+closing+opening")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--per-image", type=int, default=8000, help="training pixels drawn per image")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    settings = config.load(a.config) if a.config else config.defaults()
    pairs = [(f, a.labels / f"{f.stem}.png") for f in io.find_images([a.input])]
    pairs = [(f, m) for f, m in pairs if m.exists()]
    print(f"{len(pairs)} labelled images; supervised ceiling, trained on half, scored on the other half")
    print("| features | weighting | n features | " + " | ".join(f"IoU {c}" for c in range(a.classes))
          + " | mean IoU | ARI | accuracy | s |")
    print("|---" * (a.classes + 7) + "|")
    for spec in a.sets:
        s = _feature_settings(settings, spec)
        t = time.perf_counter()
        res = ceiling(pairs, s, a.classes, a.per_image, a.seed)
        for weighting, r in res.items():
            ious = " | ".join(f"{v:.3f}" for v in r["per_class_iou"].values())
            print(f"| {spec} | {weighting} | {len(features.feature_names(s))} | {ious} | {r['mean_iou']:.3f} "
                  f"| {r['adjusted_rand']:.3f} | {r['majority_accuracy']:.3f} | {time.perf_counter() - t:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
