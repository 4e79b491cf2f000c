"""bigseg against the unsupervised baselines a user would otherwise reach for, on the same images.

Baselines, each on the same ingested, cropped and preprocessed images:

* ``plain NMF``: the method's plain recipe: the six features min-max scaled,
  scikit-learn ``NMF(solver="cd")`` fitted on a pixel sample, ``transform``
  per image, argmax of the raw W;
* ``k-means``: scikit-learn k-means on the same scaled features;
* ``multi-Otsu``: ``skimage.filters.threshold_multiotsu`` with k classes on each
  image's intensity.

Baselines work image by image in memory (as a hand-written script would):
features are computed once for the sample and once more for prediction, so
memory holds one image's features at a time. Each image's preprocessing and
features come from the per-image path of the Python API
(:func:`bigseg.estimator.image_features`), so the baselines see the numbers
``bigseg`` computes, not a copy of its recipe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import estimator, io, store
from .evaluate import evaluate_dirs
from .segment import labels_at

BASELINES = ("plain NMF", "k-means", "multi-Otsu")


def _image_features(root, image_id, plain):
    """One stored image's native shape, preprocessed image and six features, in memory.

    Parameters
    ----------
    root : zarr.Group
        The run's ``store.zarr``, open for reading.
    image_id : str
        The stored image.
    plain : dict
        The run's settings with the method's six features (:func:`_plain_settings`).

    Returns
    -------
    shape : tuple of int
        The stored (cropped, native) image's shape: where labels are written.
    pre : ndarray, float32, shape (y, x)
        The preprocessed image on the processing grid (multi-Otsu's input).
    feats : ndarray, float32, shape (y, x, 6)
        The features, unrounded (``estimator.image_features``).
    """
    grey = store.lazy_image(root, image_id).compute()
    # the stored pixel size decides the grid when resize is 'physical', as it did for bigseg's own run
    pixel_size = store.image_info(root, image_id).get("pixel_size")
    pre, feats = estimator.image_features(grey, plain, pixel_size, image_id)
    return grey.shape, pre, feats


def _plain_settings(settings):
    """The six features of the method, at this run's filter sizes (no void level: the baselines cluster features)."""
    return dict(settings, features="method", void_class="off")


def _write_labels(out_dir, image_id, labels):
    io.write_png(Path(out_dir) / "labels" / f"{image_id}.png", labels.astype(np.uint8))


def run_baselines(store_path, out_dir, ids, settings) -> dict:
    """Write ``<out_dir>/<baseline>/labels/*.png`` for each baseline on the images
    stored in ``store_path``; return each baseline's wall time."""
    from skimage.filters import threshold_multiotsu
    from sklearn.cluster import KMeans
    from sklearn.decomposition import NMF

    out_dir = Path(out_dir)
    root = store.open_root(store_path, mode="r")
    k = settings["n_components"]
    plain = _plain_settings(settings)
    rng = np.random.default_rng(settings["random_state"])
    per_image = max(1, settings["sample_size"] // max(len(ids), 1))
    times = {name: 0.0 for name in BASELINES}

    t0 = time.perf_counter()
    sample = []
    for image_id in ids:
        _, _, f = _image_features(root, image_id, plain)
        pix = f.reshape(-1, f.shape[-1])
        sample.append(pix[rng.choice(pix.shape[0], min(per_image, pix.shape[0]), replace=False)])
    sample = np.concatenate(sample)
    lo, hi = sample.min(axis=0), sample.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (sample - lo) / span
    shared = time.perf_counter() - t0

    t = time.perf_counter()
    nmf = NMF(n_components=k, solver="cd", init="nndsvd", max_iter=settings["max_iter"],
              random_state=settings["random_state"]).fit(scaled)
    times["plain NMF"] += time.perf_counter() - t
    t = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=3, random_state=settings["random_state"]).fit(scaled)
    times["k-means"] += time.perf_counter() - t

    for image_id in ids:
        t = time.perf_counter()
        shape, pre, f = _image_features(root, image_id, plain)
        X = np.clip((f.reshape(-1, f.shape[-1]) - lo) / span, 0, None)
        common = time.perf_counter() - t
        for name, predict in (("plain NMF", lambda: nmf.transform(X).argmax(axis=1)),
                              ("k-means", lambda: km.predict(X))):
            t = time.perf_counter()
            lab = predict().reshape(f.shape[:2])
            onehot = np.eye(k, dtype=np.float32)[lab].transpose(2, 0, 1)
            _write_labels(out_dir / name.replace(" ", "_"), image_id, labels_at(onehot, shape))
            times[name] += time.perf_counter() - t + common
        t = time.perf_counter()
        try:
            thresholds = threshold_multiotsu(pre, classes=k)
            lab = np.digitize(pre, thresholds)
        except ValueError:            # too few grey levels for k classes
            lab = np.zeros(pre.shape, np.intp)
        onehot = np.eye(k, dtype=np.float32)[lab].transpose(2, 0, 1)
        _write_labels(out_dir / "multi-Otsu", image_id, labels_at(onehot, shape))
        times["multi-Otsu"] += time.perf_counter() - t
    for name in ("plain NMF", "k-means"):
        times[name] += shared
    return times


def compare(inputs, label_dir, out_dir, settings, runner, n_classes=None) -> dict:
    """Run bigseg and every baseline on the same images; score all against ``label_dir``."""
    from .pipeline import run as run_pipeline

    out_dir = Path(out_dir)
    t = time.perf_counter()
    summary = run_pipeline(inputs, out_dir / "bigseg", settings, runner)
    times = {"bigseg": time.perf_counter() - t}
    ids = [i for i in store.image_ids(store.open_root(out_dir / "bigseg" / "store.zarr", mode="r"))
           if store.is_done(out_dir / "bigseg", "segment", i)]
    # the baselines get as many clusters as bigseg fitted (the k it chose, where n_components is auto)
    fitted = dict(settings, n_components=summary["model"].get("n_components_auto", {}).get("chosen",
                                                                                         settings["n_components"]))
    times.update(run_baselines(out_dir / "bigseg" / "store.zarr", out_dir / "baselines", ids, fitted))
    dirs = {"bigseg": out_dir / "bigseg" / "labels"}
    dirs.update({name: out_dir / "baselines" / name.replace(" ", "_") / "labels" for name in BASELINES})
    results = {}
    for name, d in dirs.items():
        res = evaluate_dirs(d, label_dir, n_classes)
        res["wall_seconds"] = round(times[name], 2)
        results[name] = res
    table = format_table(results)
    io.atomic_write_text(out_dir / "comparison.json", json.dumps(results, indent=2))
    io.atomic_write_text(out_dir / "comparison.md", table + "\n")
    return {"results": results, "table": table, "skipped": summary["skipped"]}


def format_table(results: dict) -> str:
    """A Markdown table: one row per method, per-class IoU, mean IoU, ARI, accuracy, wall time."""
    classes = list(next(iter(results.values()))["per_class_iou"])
    head = ["method"] + [f"IoU {c}" for c in classes] + ["mean IoU", "ARI", "accuracy", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        row = [name] + [f"{r['per_class_iou'][c]:.3f}" for c in classes]
        row += [f"{r['mean_iou']:.3f}", f"{r['adjusted_rand']:.3f}", f"{r['majority_accuracy']:.3f}",
                f"{r['wall_seconds']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
