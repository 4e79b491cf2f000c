"""One quality table: bigseg and simple baselines on every labelled real set found, then the synthetic families.

Everything runs in memory through bigseg's own per-image functions, in the order
``bigseg run`` applies them: preprocessing on the processing grid
(:func:`bigseg.preprocess.preprocess_image`), the feature kernel
(:func:`bigseg.features.feature_block`), the fit (:func:`bigseg.model.fit`: pixel
sample, scaling, NMF and the boundary components found by
:func:`bigseg.regions.find_transitions`), the coupled solve
(:func:`bigseg.segment.spatial_block`), the boundary pixels settled
(:func:`bigseg.regions.settled_maps`) and the native-grid labels over the phase
components (:func:`bigseg.segment.labels_at`). The baselines are those of
:mod:`bigseg.compare` (k-means and plain NMF on the same features, min-max scaled
on a sample). Scores are :mod:`bigseg.evaluate`'s: one pooled confusion matrix per
set, classes matched to clusters once (Hungarian), per-class and mean IoU, ARI and
majority accuracy. Real sets are read from ``../shared/data/<set>/{images,labels}`` beside
this checkout when they are there; the synthetic families come from :mod:`bigseg.synth`.

The ``supervised ceiling`` row is no baseline: a gradient-boosted classifier
trained on the human masks of half the images, on the very features bigseg
computes, and scored on the other half (two folds, so every image is predicted by
a model that never saw it). It says how much of a set those features can tell
apart at all; where bigseg comes near it, the features, not the clustering, are
the limit.

Examples::

    python scripts/quality.py                                   # every set found, shipped defaults
    python scripts/quality.py --sets islands pores --quick
    python scripts/quality.py --methods bigseg "bigseg, no boundary step" k-means --set resize=[512,512]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from bigseg import config, evaluate, features, io, model, preprocess, regions, segment, synth

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BASELINES = ("k-means", "multi-Otsu per image", "global multi-Otsu", "plain NMF")
#: trained on the labels: a bound on what the features allow, never a competitor in the lead line
CEILING = "supervised ceiling"
METHODS = ("bigseg", "bigseg, no boundary step", *BASELINES, CEILING)


# --- sets ---------------------------------------------------------------------------

def _natural(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]


def real_sets() -> dict[str, Path]:
    """Every labelled real set under ``../shared/data``: a folder with ``images/`` and ``labels/``
    holding one PNG mask per image stem."""
    if not DATA.is_dir():
        return {}
    return {d.name.lower(): d for d in sorted(DATA.iterdir())
            if (d / "images").is_dir() and (d / "labels").is_dir()}


def class_names(folder: Path, k: int) -> tuple[str, ...]:
    """Class names from the set's ``SOURCE.md`` table (``| value | class | ...``), else ``class 0`` ..."""
    names = {}
    source = folder / "SOURCE.md"
    if source.is_file():
        for line in source.read_text(errors="replace").splitlines():
            m = re.match(r"\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", line)
            if m and int(m.group(1)) < k:
                names.setdefault(int(m.group(1)), m.group(2).split("(")[0].strip())
    return tuple(names.get(c, f"class {c}") for c in range(k))


def load_real_set(folder: Path, quick: bool):
    """``(k, class names, [(id, grey image, truth)])`` of a real set. Where the frames hold more rows than
    their masks (the masks were drawn on frames without the SEM information band), the bottom rows the
    mask lacks are cropped, so image and mask stay pixel-aligned; k is the set's class count."""
    from bigseg.io import IMAGE_SUFFIXES

    images = sorted((p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural)
    if quick:
        images = images[::4]
    items, k = [], 0
    for p in images:
        mask = folder / "labels" / f"{p.stem}.png"
        if not mask.is_file():
            continue
        truth = io.read_label_mask(mask)
        grey = io.read_image(p).data
        extra = grey.shape[0] - truth.shape[0]
        if extra > 0:
            grey, _ = io.crop_rows(grey, extra, str(p))
        items.append((p.stem, grey, truth))
        k = max(k, int(truth.max()) + 1)
    return k, class_names(folder, k), items


def load_set(name: str, quick: bool):
    """``(k, class names, [(id, grey image, truth)])`` of one set."""
    reals = real_sets()
    if name in reals:
        return load_real_set(reals[name], quick)
    n = 2 if quick else 4
    if name == "demo":
        # as `bigseg demo` writes them: 8 images, 320x384 and 352x416
        n = 4 if quick else 8
        pairs = [synth.demo((320, 384) if i % 3 else (352, 416), i) for i in range(n)]
    else:
        pairs = synth.family(name, n, seed=0)
    names = synth.FAMILIES[name]
    return len(names), names, [(f"{name}{i:02d}", img.astype(np.float32), lab) for i, (img, lab) in enumerate(pairs)]


def available_sets() -> list[str]:
    """The real sets first, then the synthetic families."""
    return list(real_sets()) + list(synth.FAMILIES)


# --- the per-image path -----------------------------------------------------------------

def prepare(items, settings):
    """Features ``(y, x, f)`` of every image on its processing grid (the ``resize`` setting: the set's scale)."""
    params = features.feature_params(settings)
    out = []
    for image_id, grey, truth in items:
        norm, plane = preprocess.planes(grey, settings, preprocess.target_shape(grey.shape, settings["resize"]))
        out.append((image_id, grey.shape, features.stack_block(preprocess.equalise(norm, settings), plane, params),
                    truth))
    return out


def onehot_native(lab, k, shape):
    return segment.labels_at(np.eye(k, dtype=np.float32)[lab].transpose(2, 0, 1), shape)


def score(preds, prepared, k, names):
    """One pooled confusion matrix over the set (each prediction resampled to its mask), scored."""
    n_clu = max(k, int(max(p.max() for p in preds)) + 1)
    cm = np.zeros((k, n_clu), np.int64)
    for pred, (_, _, _, truth) in zip(preds, prepared):
        cm += evaluate.confusion(truth, evaluate.resize_nearest(pred, truth.shape), k, n_clu)
    return evaluate.scores(cm, names)


def bigseg_fit(prepared, s):
    """bigseg's fit (sample, scaling, NMF, boundary components, void phase, assignment) on in-memory
    features, and each image's coupled activations ``(k, y, x)`` on its processing grid."""
    import dask
    import dask.array as da

    arrays = [da.from_array(f, chunks=f.shape) for _, _, f, _ in prepared]
    fitted = model.fit(arrays, features.feature_names(s), s, lambda objs: list(dask.compute(*objs)),
                       **regions.fit_hooks(lambda: [f for _, _, f, _ in prepared][:regions.TRANSITION_IMAGES], s))
    l1, l2 = model.regularisation(s, fitted.H.shape[1])
    acts = [segment.spatial_block(f, fitted.H, fitted.scale_lo, fitted.scale_hi, l1, l2, s["spatial_weight"],
                                  s["spatial_sweeps"], fitted.void_below).transpose(2, 0, 1) for _, _, f, _ in prepared]
    return fitted, acts


def settled_labels(fitted, acts, prepared, s):
    """Native-grid labels of the activations, boundary pixels settled as ``s`` says, and the share moved."""
    preds, bands = [], []
    for a, (_, shape, _, _) in zip(acts, prepared):
        scores, _, before, after = regions.settled_maps(fitted, a, s, memberships=False)
        bands.append((before != after).mean())
        preds.append(segment.labels_at(scores, shape))
    return preds, float(np.mean(bands))


def bigseg_labels(prepared, s):
    """bigseg's labels: the fit, the coupled solve and the settled boundary pixels of ``bigseg run``, on
    in-memory features."""
    fitted, acts = bigseg_fit(prepared, s)
    moved = [np.isin(a.argmax(axis=0), fitted.transitions).mean() for a in acts]
    preds, bands = settled_labels(fitted, acts, prepared, s)
    notes = {"k": fitted.settings["n_components"], "boundary components": len(fitted.transitions),
             "between shares": fitted.report.get("between_shares"),
             "assignment": fitted.report.get("assignment"),
             "boundary pixels": f"{np.mean(moved):.2%}", "band pixels settled": f"{bands:.2%}",
             "void": fitted.report.get("void")}
    return preds, notes


def baseline_labels(prepared, s, k, method):
    """k-means or the plain NMF recipe as :func:`bigseg.compare.run_baselines` runs them: min-max scaling on
    a per-image sample, scikit-learn on the scaled features."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import NMF

    # the same features bigseg's phases see: the void level is no feature
    n = len(features.feature_names(s))
    prepared = [(i, shape, f[..., :n], t) for i, shape, f, t in prepared]
    per = max(1, s["sample_size"] // len(prepared))
    rng = np.random.default_rng(s["random_state"])
    samp = np.concatenate([f.reshape(-1, f.shape[-1])[rng.choice(f.shape[0] * f.shape[1],
                           min(per, f.shape[0] * f.shape[1]), replace=False)] for _, _, f, _ in prepared])
    mn, mx = samp.min(axis=0), samp.max(axis=0)
    span = np.where(mx > mn, mx - mn, 1.0)
    if method == "k-means":
        est = KMeans(n_clusters=k, n_init=3, random_state=s["random_state"]).fit((samp - mn) / span)
        predict = est.predict
    else:
        est = NMF(n_components=k, solver="cd", init="nndsvd", max_iter=s["max_iter"],
                  random_state=s["random_state"]).fit((samp - mn) / span)
        predict = lambda Z: est.transform(Z).argmax(axis=1)   # noqa: E731
    preds = []
    for _, shape, f, _ in prepared:
        Z = np.clip((f.reshape(-1, f.shape[-1]) - mn) / span, 0, None)
        preds.append(onehot_native(predict(Z).reshape(f.shape[:2]), k, shape))
    return preds


def ceiling_labels(prepared, k, seed=0, per_image=20_000):
    """Labels of a classifier trained on the masks (:data:`CEILING`): two folds over the images (even and odd
    positions), each predicted by a gradient-boosted model fitted on a pixel sample of the other fold's
    features and masks (masks resampled to the processing grid)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    folds = [list(range(0, len(prepared), 2)), list(range(1, len(prepared), 2))]
    preds = [None] * len(prepared)
    for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
        if not train or not test:
            continue
        X, y = [], []
        for i in train:
            _, _, f, truth = prepared[i]
            t = evaluate.resize_nearest(truth, f.shape[:2]).ravel()
            pick = rng.choice(t.size, min(per_image, t.size), replace=False)
            X.append(f.reshape(-1, f.shape[-1])[pick])
            y.append(t[pick])
        clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(np.concatenate(X),
                                                                                  np.concatenate(y))
        for i in test:
            _, shape, f, _ = prepared[i]
            preds[i] = onehot_native(clf.predict(f.reshape(-1, f.shape[-1])).reshape(f.shape[:2]), k, shape)
    # a set of one image has no second fold: it is predicted by a model trained on itself
    if preds[0] is None:
        return ceiling_labels(prepared + prepared, k, seed, per_image)[:1]
    return preds


def otsu_labels(items, k, method, seed=0):
    """Multi-Otsu on the grey level, each image min-max scaled to 256 levels (a 16-bit image's 65,536
    would make the search's table too large to hold): thresholds per image, or one set of thresholds
    from a pooled sample of every image. A pixel above a threshold is in the class above, as skimage
    reads its thresholds."""
    from skimage.filters import threshold_multiotsu

    def levels(grey):
        lo, hi = float(grey.min()), float(grey.max())
        return np.round((grey - lo) * (255.0 / (hi - lo))).astype(np.uint8) if hi > lo else np.zeros(grey.shape, np.uint8)

    images = [levels(grey) for _, grey, _ in items]
    if method == "multi-Otsu per image":
        return [np.digitize(img, threshold_multiotsu(img, classes=k), right=True) if img.max() > 0
                else np.zeros(img.shape, np.int64) for img in images]
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([rng.choice(img.ravel(), min(img.size, 200_000 // len(images) + 1), replace=False)
                             for img in images])
    thresholds = threshold_multiotsu(pooled, classes=k)
    return [np.digitize(img, thresholds, right=True) for img in images]


def run_set(name, settings, methods, quick):
    """Scores of each method on one set: ``(class names, {method: scores}, notes)``."""
    k, names, items = load_set(name, quick)
    # the set's class count, unless the command line asked for another k (or auto)
    s = {key: v for key, v in settings.items() if key != "n_components_asked"}
    s = config.validate(dict(s, n_components=settings.get("n_components_asked", k)))
    # the set's one scale, as a fit brings its images to it (no pixel sizes are read here)
    s = preprocess.scaled_settings(s, [grey.shape for _, grey, _ in items], [None] * len(items))
    t0 = time.perf_counter()
    prepared = prepare(items, s)
    results, notes = {}, {}
    for m in methods:
        t = time.perf_counter()
        if m == "bigseg":
            preds, more = bigseg_labels(prepared, s)
            notes.update(more)
        elif m == "bigseg, no boundary step":
            # neither boundary step: no boundary components in the fit, no band pixels settled
            preds, _ = bigseg_labels(prepared, dict(s, transition_share=1.0, boundary_radius=0))
        elif m in ("k-means", "plain NMF"):
            preds = baseline_labels(prepared, s, k, m)
        elif m in ("multi-Otsu per image", "global multi-Otsu"):
            preds = otsu_labels(items, k, m, s["random_state"])
        elif m == CEILING:
            preds = ceiling_labels(prepared, k, s["random_state"])
        else:
            raise SystemExit(f"unknown method {m!r}; one of {METHODS}")
        results[m] = dict(score(preds, prepared, k, names), seconds=time.perf_counter() - t)
    notes["seconds"] = round(time.perf_counter() - t0, 1)
    return names, results, notes


def format_rows(set_name, names, results) -> list[str]:
    lines = []
    for m, r in results.items():
        ious = " ".join(f"{n[:6]}={v:.3f}" for n, v in r["per_class_iou"].items())
        lines.append(f"| {set_name} | {m} | {r['mean_iou']:.3f} | {r['adjusted_rand']:.3f} | "
                     f"{r['majority_accuracy']:.3f} | {ious} |")
    return lines


def lead_line(set_name, results) -> str | None:
    """How far bigseg's mean IoU lies above (or below) the best baseline's on one set."""
    base = {m: r["mean_iou"] for m, r in results.items() if m in BASELINES}
    if "bigseg" not in results or not base:
        return None
    best = max(base, key=base.get)
    lead = results["bigseg"]["mean_iou"] - base[best]
    return f"{set_name}: bigseg {'leads' if lead >= 0 else 'trails'} the best baseline ({best}, " \
           f"{base[best]:.3f}) by {abs(lead):.3f} mean IoU"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", default=None, help=f"sets to score (default: all found): {available_sets()}")
    p.add_argument("--methods", nargs="+", default=["bigseg", *BASELINES, CEILING], help=f"any of {METHODS}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (YAML value), e.g. --set spatial_weight=0")
    p.add_argument("--quick", action="store_true", help="a quarter of each real set, half of each synthetic family")
    a = p.parse_args(argv)
    import yaml
    settings = config.defaults()
    for kv in a.overrides:
        key, value = kv.split("=", 1)
        settings[key] = yaml.safe_load(value)
    asked = {"n_components_asked": settings["n_components"]} if any(
        kv.startswith("n_components=") for kv in a.overrides) else {}
    settings = dict(config.validate(settings), **asked)
    sets = a.sets or available_sets()
    print(f"quick={a.quick} overrides={a.overrides}")
    print("| set | method | mean IoU | ARI | accuracy | per-class IoU |")
    print("|---|---|---|---|---|---|")
    leads = []
    for name in sets:
        names, results, notes = run_set(name, settings, a.methods, a.quick)
        print("\n".join(format_rows(name, names, results)), flush=True)
        print(f"<!-- {name}: {notes} -->", file=sys.stderr, flush=True)
        leads.append(lead_line(name, results))
    print("\n" + "\n".join(f"- {line}" for line in leads if line))


if __name__ == "__main__":
    main()
