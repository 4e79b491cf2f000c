"""One quality table: bigseg, k-means and the plain NMF recipe on MetalDAM and every synthetic family.

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
majority accuracy. MetalDAM is read from ``../shared/data/MetalDAM`` beside this
checkout when it is there; the synthetic families come from :mod:`bigseg.synth`.

Examples::

    python scripts/quality.py                                   # every set found, shipped defaults
    python scripts/quality.py --sets islands pores --quick
    python scripts/quality.py --methods bigseg "bigseg, no boundary step" k-means --set resize=[512,512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bigseg import config, evaluate, features, io, model, preprocess, regions, segment, synth

METALDAM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "MetalDAM"
METALDAM_CLASSES = ("matrix", "austenite", "martensite/austenite", "precipitate", "defect")
METHODS = ("bigseg", "bigseg, no boundary step", "k-means", "plain NMF")


# --- sets ---------------------------------------------------------------------------

def load_set(name: str, quick: bool):
    """``(k, class names, [(id, grey image, truth)])`` of one set."""
    if name == "metaldam":
        images = sorted((METALDAM / "images").glob("*.jpg"), key=lambda p: int("".join(filter(str.isdigit, p.stem))))
        if quick:
            images = images[::4]
        items = []
        for p in images:
            grey, _ = io.crop_rows(io.read_image(p).data, 65, str(p))   # configs/metaldam.yaml: crop_bottom 65
            items.append((p.stem, grey, io.read_label_mask(METALDAM / "labels" / f"{p.stem}.png")))
        return 5, METALDAM_CLASSES, items
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
    out = ["metaldam"] if (METALDAM / "images").is_dir() else []
    return out + list(synth.FAMILIES)


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
    cm = np.zeros((k, int(max(p.max() for p in preds)) + 1 if preds else k), np.int64)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", default=None, help=f"sets to score (default: all found): {available_sets()}")
    p.add_argument("--methods", nargs="+", default=["bigseg", "k-means", "plain NMF"], help=f"any of {METHODS}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (YAML value), e.g. --set spatial_weight=0")
    p.add_argument("--quick", action="store_true", help="a quarter of MetalDAM, half of each synthetic family")
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
    for name in sets:
        names, results, notes = run_set(name, settings, a.methods, a.quick)
        print("\n".join(format_rows(name, names, results)), flush=True)
        print(f"<!-- {name}: {notes} -->", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
