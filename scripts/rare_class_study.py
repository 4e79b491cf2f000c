"""Why the small, rare class stays unlabelled: four measurements over the quality harness's sets.

The islands families (the held-out alloy's shape), the two-scale set and the demo
each have a third or fourth class of fine particles (precipitates, carbides:
discs of 1-3.5 px radius, 0.5-3 % of pixels). No method in ``scripts/quality.py``
gives them a phase (IoU 0.00-0.12). This script measures the four ways of
getting them one that we tried, on every set, so the numbers in the README can
be re-made:

``pixel-phases``
    bigseg with the set's k and with one phase fewer (the budget a separate
    particle class would leave to the pixel phases).
``oracle-row``
    one phase fewer, plus an H row equal to the mean scaled features of the
    *true* particle pixels of the fit images: the best a rare-phase row added to
    the fit could do in the per-pixel solve.
``detectors``
    three particle detectors on the preprocessed image, scored as masks against
    the particle class: a white top-hat of the image smoothed at the derivative
    sigma, thresholded with hysteresis at multiples of its robust spread
    (components no wider than the structuring element); a scale-selected
    centre/surround contrast (disc of radius r against the ring out to 2r + 1, a
    two-sample t); and the same top-hat thresholded at multiples of the image's
    noise (Immerkaer's estimate).
``boundary-pixels``
    the boundary rule applied to pixels or regions rather than components: bigseg
    without and with its boundary-pixel step (``boundary_radius`` 0 to 3,
    :func:`bigseg.regions.settle_boundaries`), and the two designs measured
    before it, on the labels without it: a pixel whose window holds two labels
    other than its own, on a part of its label thinner than the window, or a
    connected region no deeper than a few pixels that touches two other labels,
    takes the nearest other region's label.

``dark-mode``
    the voids' way out, now bigseg's ``void_class`` (:mod:`bigseg.voids`): pores
    and cracks give no signal, so before CLAHE they are the darkest pixels of the
    collection, in a mode of their own below the histogram's body (CLAHE
    stretches them back into the matrix's range). bigseg with ``void_class: off``
    and with its default ``auto``, side by side.

``void-decision``
    once the test has found the void threshold, which level each pixel is
    decided on: the void plane (``bigseg.preprocess.planes``) smoothed at 0
    (the pixel itself), 0.5, 1 or 2 pixels (the test's own smoothing), on the
    sets with a void mode, and the share of void pixels in the images whose
    truth has none.

``dark-mode-trigger``
    where the dark-mode test fires, over many more synthetic collections (each
    family at several seeds and scales, 8 images each) and MetalDAM.

Everything runs in memory through ``scripts/quality.py``'s per-image path and
scores (classes matched once per set). About 4 minutes for all parts and sets on
2 cores.

Examples::

    python scripts/rare_class_study.py
    python scripts/rare_class_study.py --parts detectors --sets islands demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the harness beside this script)

from bigseg import config, evaluate, features, model, preprocess, regions, segment, voids  # noqa: E402

PARTS = ("pixel-phases", "oracle-row", "detectors", "boundary-pixels", "dark-mode", "dark-mode-trigger",
         "void-decision")
#: the smoothing of the level each pixel is decided on, compared by ``void-decision`` (0: the pixel itself)
DECISION_SIGMAS = (0.0, 0.5, 1.0, 2.0)
#: the particle class of each set (MetalDAM: its 'precipitate'); sets without one are left out of the
#: particle parts, but still show how often a detector fires where no particle class exists
PARTICLE_CLASS = {"metaldam": 3, "islands": 2, "textured": 2, "twoscale": 2, "demo": 3}


def disc(radius: float) -> np.ndarray:
    c = int(np.ceil(radius))
    yy, xx = np.mgrid[-c:c + 1, -c:c + 1]
    return xx * xx + yy * yy <= radius * radius + 1e-9


def _narrow_components(mask: np.ndarray, side: int, seeds: np.ndarray | None = None) -> np.ndarray:
    """The connected parts of ``mask`` whose bounding box fits in ``side`` (and that hold a seed)."""
    lab, n = ndi.label(mask)
    keep = np.zeros(n + 1, bool)
    if seeds is not None:
        keep[np.unique(lab[seeds & mask])] = True
    else:
        keep[:] = True
    for i, sl in enumerate(ndi.find_objects(lab)):
        keep[i + 1] &= (sl[0].stop - sl[0].start) <= side and (sl[1].stop - sl[1].start) <= side
    keep[0] = False
    return keep[lab]


def tophat_mad(img, radius: int, z: float, sigma: float = 1.0, low: float = 0.7) -> np.ndarray:
    """Top-hat of the smoothed image above ``z`` robust spreads (grown down to ``low * z``)."""
    sm = ndi.gaussian_filter(img.astype(np.float64), sigma)
    th = sm - ndi.grey_opening(sm, footprint=disc(radius))
    med = np.median(th)
    spread = 1.4826 * np.median(np.abs(th - med))
    return _narrow_components(th > med + low * z * spread, 2 * radius + 1, th > med + z * spread)


def immerkaer_noise(img) -> float:
    """Robust white-noise sigma (Immerkaer's Laplacian-difference mask, median form)."""
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], float)
    return float(1.4826 * np.median(np.abs(ndi.correlate(img.astype(np.float64), mask, mode="reflect"))) / 6.0)


def tophat_noise(img, radius: int, z: float, sigma: float = 1.0) -> np.ndarray:
    """Top-hat of the smoothed image above ``z`` times the noise that survives the smoothing."""
    sm = ndi.gaussian_filter(img.astype(np.float64), sigma)
    th = sm - ndi.grey_opening(sm, footprint=disc(radius))
    sd = immerkaer_noise(img) / (2 * np.sqrt(np.pi) * sigma)
    return _narrow_components(th > 0.5 * z * sd, 2 * radius + 1, th > z * sd)


def centre_surround(img, radii, t_min: float) -> np.ndarray:
    """Scale-selected disc-against-ring contrast: local maxima of the best two-sample t above ``t_min``,
    grown over their disc to the pixels brighter than half way between disc and ring."""
    img = img.astype(np.float64)
    best = np.full(img.shape, -np.inf)
    half = np.zeros(img.shape)
    rad = np.zeros(img.shape)
    for r in radii:
        inner = disc(r).astype(np.float64)
        outer = disc(2 * r + 1).astype(np.float64)
        pad = (outer.shape[0] - inner.shape[0]) // 2
        ring = outer - np.pad(inner, pad)
        n_in, n_ring = inner.sum(), ring.sum()
        m_in = ndi.correlate(img, inner / n_in, mode="reflect")
        m_ring = ndi.correlate(img, ring / n_ring, mode="reflect")
        v_ring = np.maximum(ndi.correlate(img * img, ring / n_ring, mode="reflect") - m_ring ** 2, 1e-12)
        t = (m_in - m_ring) / np.sqrt(v_ring * (1 / n_in + 1 / n_ring))
        better = t > best
        best[better], half[better], rad[better] = t[better], (0.5 * (m_in + m_ring))[better], r
    centres = (best > t_min) & (best == ndi.maximum_filter(best, size=3))
    sm = ndi.gaussian_filter(img, 0.7)
    out = np.zeros(img.shape, bool)
    for r in radii:
        c = centres & (rad == r)
        if c.any():
            reach = ndi.binary_dilation(c, structure=disc(r))
            level = ndi.maximum_filter(np.where(c, half, -np.inf), footprint=disc(r))
            out |= reach & (sm > level)
    return out


def thin_between(labels: np.ndarray, k: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels with two other labels within ``radius`` on a part of their label thinner than the window
    take the nearest other pixel's label; returns the new map and the moved pixels."""
    present = regions._presence(labels, k, radius)
    own = np.take_along_axis(present, labels[None].astype(np.intp), 0)[0]
    moved = (present.sum(axis=0) - own) >= 2
    square = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    wide = np.zeros_like(moved)
    for j in range(k):
        wide |= ndi.binary_opening(labels == j, structure=square)
    moved &= ~wide
    return _to_nearest_kept(labels, moved), moved


def thin_regions_between(labels: np.ndarray, k: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions no deeper than ``radius`` (largest inscribed radius) that touch two other labels
    take the nearest other pixel's label; returns the new map and the moved pixels."""
    moved = np.zeros(labels.shape, bool)
    for j in range(k):
        mine = labels == j
        regions_j, n = ndi.label(mine)
        if n == 0:
            continue
        ring = ndi.binary_dilation(mine) & ~mine
        touches = np.zeros((n + 1, k), bool)
        touches[ndi.maximum_filter(regions_j, size=3)[ring], labels[ring]] = True
        deepest = np.asarray(ndi.maximum(ndi.distance_transform_edt(mine), regions_j, index=np.arange(n + 1)))
        boundary = (touches.sum(axis=1) >= 2) & (deepest <= radius)
        boundary[0] = False
        moved |= boundary[regions_j]
    return _to_nearest_kept(labels, moved), moved


def _to_nearest_kept(labels, moved):
    out = labels.copy()
    if moved.any() and not moved.all():
        _, (iy, ix) = ndi.distance_transform_edt(moved, return_indices=True)
        out[moved] = labels[iy[moved], ix[moved]]
    return out


def dark_level(grey, shape, settings) -> np.ndarray:
    """The void level of ``bigseg.voids`` on the processing grid, in float64 as this study measured it."""
    level = preprocess.planes(grey, settings, shape)[1]
    return ndi.gaussian_filter(level.astype(np.float64), voids.level_sigma(settings))


# --- the parts ------------------------------------------------------------------------

def _line(set_name, what, r):
    ious = " ".join(f"{n[:6]}={v:.3f}" for n, v in r["per_class_iou"].items())
    return f"| {set_name} | {what} | {r['mean_iou']:.3f} | {r['adjusted_rand']:.3f} | {r['majority_accuracy']:.3f} | {ious} |"


def pixel_phases(name, k, names, prepared, s):
    for kk in (k, k - 1):
        preds, _ = quality.bigseg_labels(prepared, config.validate(dict(s, n_components=kk)))
        print(_line(name, f"bigseg, k = {kk}", quality.score(preds, prepared, k, names)), flush=True)


def oracle_row(name, k, names, prepared, s):
    import dask
    import dask.array as da

    cls = PARTICLE_CLASS[name]
    s1 = config.validate(dict(s, n_components=k - 1, assignment="components"))
    maps = [f for _, _, f, _ in prepared][:regions.TRANSITION_IMAGES]
    fitted = model.fit([da.from_array(f, chunks=f.shape) for _, _, f, _ in prepared], features.feature_names(s1), s1,
                       lambda objs: list(dask.compute(*objs)), **regions.fit_hooks(lambda: maps, s1))
    truth_pixels = np.concatenate([f[evaluate.resize_nearest(t, f.shape[:2]) == cls]
                                   for _, _, f, t in prepared[:regions.TRANSITION_IMAGES]])
    row = model.apply_scaling(truth_pixels, fitted.scale_lo, fitted.scale_hi).mean(axis=0)
    H = np.vstack([fitted.H[fitted.phases], row / np.linalg.norm(row), fitted.H[fitted.transitions]])
    n_phases = len(fitted.phases) + 1
    l1, l2 = model.regularisation(s, H.shape[1])
    preds = []
    for _, shape, f, _ in prepared:
        acts = segment.spatial_block(f, H, fitted.scale_lo, fitted.scale_hi, l1, l2, s["spatial_weight"],
                                     s["spatial_sweeps"]).transpose(2, 0, 1)
        preds.append(segment.labels_at(acts[:n_phases], shape))
    print(_line(name, "k - 1 phases + the true particles' row", quality.score(preds, prepared, k, names)), flush=True)


DETECTORS = {
    "top-hat, robust spread": [(f"r={r} z={z}", lambda im, r=r, z=z: tophat_mad(im, r, z))
                               for r in (3, 4, 6) for z in (3, 4, 6)],
    "centre/surround t": [(f"t>{t}", lambda im, t=t: centre_surround(im, (1, 1.5, 2, 3, 4), t)) for t in (5, 8, 12)],
    "top-hat, noise": [(f"r=4 z={z}", lambda im, z=z: tophat_noise(im, 4, z)) for z in (4, 6, 8)],
}


def detectors(name, k, names, items, s):
    cls = PARTICLE_CLASS.get(name)
    pres = [(preprocess.preprocess_image(g, s, preprocess.target_shape(g.shape, s["resize"])), t) for _, g, t in items]
    for family, variants in DETECTORS.items():
        cells = []
        for label, detect in variants:
            inter = union = fired = 0
            for img, truth in pres:
                m = evaluate.resize_nearest(detect(img).astype(np.uint8), truth.shape).astype(bool)
                t = truth == cls if cls is not None else np.zeros_like(m)
                inter += int((m & t).sum())
                union += int((m | t).sum())
                fired += int(m.sum())
            share = fired / sum(t.size for _, t in pres)
            cells.append(f"{label}: {inter / max(union, 1):.3f} ({share:.2%})" if cls is not None
                         else f"{label}: fires on {share:.2%}")
        print(f"| {name} | {family} | " + "; ".join(cells) + " |", flush=True)


def boundary_pixels(name, k, names, prepared, s):
    fitted, acts = quality.bigseg_fit(prepared, s)
    n_phases = fitted.n_phases
    for radius in (0, 1, 2, 3):
        preds, share = quality.settled_labels(fitted, acts, prepared, dict(s, boundary_radius=radius))
        what = "bigseg, no boundary pixels settled" if radius == 0 else \
            f"bigseg, boundary_radius {radius}{' (auto)' if radius == regions.boundary_radius(s) else ''}"
        print(_line(name, f"{what} ({share:.1%} moved)", quality.score(preds, prepared, k, names)), flush=True)
        if radius == 0:
            unsettled = preds
    # the two designs measured before it, on the labels without it
    rules = [(f"pixel rule, nearest kept, radius {r}", thin_between, r, True) for r in (1, 2)]
    rules += [(f"region rule, depth {r}", thin_regions_between, r, False) for r in (2, 3)]
    for what, rule, radius, whole_pixels in rules:
        out, moved = [], 0
        for pred, (_, shape, f, _) in zip(unsettled, prepared):
            # the window on the processing grid, carried to the native grid the labels live on
            r = radius * max(shape) / max(f.shape[:2])
            new, m = rule(pred, n_phases, max(1, int(round(r))) if whole_pixels else r)
            out.append(new)
            moved += int(m.sum())
        share = moved / sum(p.size for p in unsettled)
        print(_line(name, f"+ {what} ({share:.1%} moved)", quality.score(out, prepared, k, names)), flush=True)


def dark_class(name, k, names, prepared, s):
    """bigseg without and with its void phase (``void_class``), through the per-image path."""
    for setting in ("off", "auto"):
        preds, notes = quality.bigseg_labels(prepared, config.validate(dict(s, void_class=setting)))
        void = notes.get("void")
        what = (f"void_class {setting}" + (f": void level below {void['below']:.3f} ({void['sample_share']:.2%} of "
                                            f"the sample) + {k - 1} pixel phases" if void else ": no void phase"))
        print(_line(name, what, quality.score(preds, prepared, k, names)), flush=True)


def dark_mode_trigger(s, seeds=(0, 1, 2, 3, 5, 7, 9)):
    from bigseg import synth

    # each collection is made when its turn comes, so one is held at a time
    collections = {f"{fam} seed {seed}": (lambda fam=fam, seed=seed: synth.family(fam, 8, seed=seed))
                   for fam in synth.FAMILIES for seed in seeds}
    variants = {"islands brighter": (synth.islands, {"island_level": 0.62}),
                "islands darker": (synth.islands, {"island_level": 0.2}),
                "islands twice the scale": (synth.islands, {"scale": 2.0}),
                "lamellar twice the scale": (synth.lamellar, {"scale": 2.0}),
                "pores twice the scale": (synth.pores, {"scale": 2.0})}
    collections.update({name: (lambda make=make, kw=kw: [make(seed=i, **kw) for i in range(4)])
                        for name, (make, kw) in variants.items()})
    if "metaldam" in quality.available_sets():
        collections["MetalDAM"] = lambda: [(g, t) for _, g, t in quality.load_set("metaldam", False)[2]]
    rng = np.random.default_rng(s["random_state"])
    for name, make in collections.items():
        levels = np.concatenate([dark_level(g, preprocess.target_shape(g.shape, s["resize"]), s).ravel()
                                 for g, _ in make()])
        threshold = voids.dark_mode_threshold(rng.choice(levels, min(s["sample_size"], levels.size), replace=False))
        said = "none" if threshold is None else f"below {threshold:.3f}: {np.mean(levels < threshold):.2%} of pixels"
        print(f"| {name} | dark mode | {said} | | | |", flush=True)


def void_decision(name, k, names, items, s):
    """Which level a pixel is decided on, once the test (on the level smoothed at the smaller blur sigma)
    has found the threshold: the normalised image smoothed at each of ``DECISION_SIGMAS``, over the
    labels of k - 1 pixel phases; for ``pores`` also at two more seeds."""
    from bigseg import synth

    collections = {name: items}
    if name == "pores":
        for seed in (1, 2):
            collections[f"pores, seed {seed}"] = [(f"p{i}", (img * 255).round().astype(np.float32), lab) for i, (img, lab)
                                                  in enumerate(synth.family("pores", len(items), seed=seed))]
    for label, its in collections.items():
        prepared = quality.prepare(its, s)
        norms = [preprocess.planes(g, s, f.shape[:2])[1] for (_, g, _), (_, _, f, _) in zip(its, prepared)]
        pooled = np.concatenate([f[..., len(features.feature_names(s))].ravel() for _, _, f, _ in prepared])
        rng = np.random.default_rng(s["random_state"])
        threshold = voids.dark_mode_threshold(rng.choice(pooled, min(s["sample_size"], pooled.size), replace=False))
        if threshold is None:
            print(f"| {label} | void decision | no mode | | | |", flush=True)
            continue
        preds, _ = quality.bigseg_labels(prepared, config.validate(dict(s, n_components=k - 1, void_class="off")))
        for sigma in DECISION_SIGMAS:
            out, without = [], []
            for pred, norm, (_, _, _, truth) in zip(preds, norms, prepared):
                level = ndi.gaussian_filter(norm, sigma, mode="reflect", truncate=s["truncate"]) if sigma else norm
                if not (truth == k - 1).any():      # the void class is the last of both sets that have one
                    without.append(float(np.mean(level < threshold)))
                void = evaluate.resize_nearest((level < threshold).astype(np.uint8), pred.shape).astype(bool)
                out.append(np.where(void, k - 1, pred))
            extra = f"; {np.mean(without):.3%} void in {len(without)} images without" if without else ""
            print(_line(label, f"void below {threshold:.3f}, decided at sigma {sigma:g} + {k - 1} pixel phases"
                        + extra, quality.score(out, prepared, k, names)), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", default=None, help=f"default: all found, {quality.available_sets()}")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--quick", action="store_true", help="a quarter of MetalDAM, half of each synthetic family")
    a = p.parse_args(argv)
    sets = a.sets or quality.available_sets()
    print("| set | what | mean IoU | ARI | accuracy | per-class IoU |\n|---|---|---|---|---|---|")
    if "dark-mode-trigger" in a.parts:
        dark_mode_trigger(config.defaults())
    for name in sets if set(a.parts) - {"dark-mode-trigger"} else []:
        k, names, items = quality.load_set(name, a.quick)
        s = config.validate(dict(config.defaults(), n_components=k))
        prepared = quality.prepare(items, s) if set(a.parts) - {"detectors"} else None
        if "pixel-phases" in a.parts:
            pixel_phases(name, k, names, prepared, s)
        if "oracle-row" in a.parts and name in PARTICLE_CLASS:
            oracle_row(name, k, names, prepared, s)
        if "detectors" in a.parts:
            detectors(name, k, names, items, s)
        if "boundary-pixels" in a.parts:
            boundary_pixels(name, k, names, prepared, s)
        if "dark-mode" in a.parts:
            dark_class(name, k, names, prepared, s)
        if "void-decision" in a.parts:
            void_decision(name, k, names, items, s)


if __name__ == "__main__":
    main()
