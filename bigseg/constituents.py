"""Microconstituents: regions made of several phases at a scale, found as a second NMF level.

Phases say what a pixel is made of; microconstituents (spheroidite, pearlite,
M/A islands, a carbide network, a particle-free zone) are regions made of
several phases in a characteristic arrangement. A spheroidite region is split
by any pixel method into its particles and its ferrite; described by the phase
memberships *around* each pixel it is one thing.

The level reads only the pixel phases' memberships (``Model.phase_memberships``,
soft and non-negative, summing to one: :meth:`PhaseSegmenter.predict_proba`).
Each pixel is described, at every window scale ``sigma``, by

* the Gaussian-weighted mean of each phase's membership around it (the local
  phase fractions), and
* their local variation: the weighted standard deviation of each membership
  (zero inside a smooth region of one phase, high where fine regions of
  several phases alternate),

both non-negative (:func:`window_features`). NMF (the phases' machinery:
``model.fit_cd`` on a bounded pixel sample of a few images spread over the
collection, robust per-feature scaling) factorises these into
``n_constituents`` parts; for a new image H is fixed and each pixel's W is the
exact non-negative least-squares solve (``nnls.solve``). A constituent is a
centre in W (k-means on the sample's W, as the phases' ``assignment: centres``):
a region of fine particles in a matrix is a *combination* of parts (some of
the matrix, some of the particles, much variation), so the nearest centre, not
the single largest part, names it. The label is the arg max of the centres'
scores ``2 c.w - |c|^2`` (affine in W), resampled to the image's own size as
the phase labels are. The variation features make a mixed region distinct:
its fractions alone would be a blend of the pure phases', its variation is not.

**The scale principle.** Every window scale comes from the collection's own
phase label maps, never from a constant tuned on one set: a window must span
several of the phase regions a constituent is made of to measure their
fractions, and no more, so as not to blur the constituents' own boundaries.
The measure is the mean intercept length of the phase regions (the stereological
mean chord: pixels along every row and column divided by the number of runs of
one label, :func:`mean_intercepts`) on the fit's label maps: the typical spacing
between phase boundaries, over which fine particles and their matrix alternate.
The widest window is twice that (:data:`TOP_STEPS`); the finest is the pixel
(a thin film or a particle is a phase region at the pixel's own scale); between
them a ladder evenly spaced in log, at most an octave apart
(:func:`window_scales`), so every size of arrangement from the particle to the
region is seen by some window. Pixel phases on a ``resize: physical`` grid make
the scales physical too.

Every window is a Gaussian cut at ``truncate * sigma`` (the features' own
truncation), so a tile grown by :func:`halo` pixels gives exactly the whole
image's values: :func:`lazy_activations` maps the level over chunks with
``features.map_haloed``.

All functions here are numpy/scipy on in-memory arrays except
:func:`lazy_activations`; the fit (:func:`fit`) imports scikit-learn's NMF
through ``model.fit_cd``.
"""

from __future__ import annotations

import textwrap

import numpy as np
from scipy import ndimage as ndi

from . import nnls
from .model import apply_scaling, block_counts, fit_scaling, nearest_centre, normalise_rows

#: images of a collection whose memberships the level is fitted on (spread evenly), each at most a window of
#: ``regions.TRANSITION_WINDOW`` pixels a side: a bounded sample whatever the collection's size
FIT_IMAGES = 16
#: pixels of the level's fit sample at most: a few dozen window features need far fewer pixels than the
#: phases' fit, and the constituents' NMF runs in seconds on this many
SAMPLE_PIXELS = 50_000
#: the largest window scale in units of the collection's mean intercept length: twice the spacing of phase
#: boundaries, so the widest window holds several of the regions a constituent is made of
TOP_STEPS = 2.0
#: a constituent is one phase ("smooth") when this share of its pixels is that phase; below, it mixes phases
PURE_SHARE = 0.8
#: smallest window sigma (processing pixels): the pixel, the finest structure the phase maps resolve
MIN_SIGMA = 1.0
#: largest window sigma as a share of the label maps' shorter side, so a halo never exceeds an image
MAX_SIGMA_SHARE = 1.0 / 16


# --- scales from the data ---------------------------------------------------------------------

def mean_intercepts(label_maps, n_phases: int) -> tuple[np.ndarray, float]:
    """Mean intercept (chord) length of each phase and pooled over all, along rows and columns.

    A run is a maximal stretch of one label along a row or a column; the mean
    intercept of a phase is its pixels along all lines divided by its runs (a
    run cut by the image border counts as one, so large regions are, if
    anything, underestimated). Pooled: all pixels over all runs, the typical
    distance between two phase boundaries along a line.

    Parameters
    ----------
    label_maps : iterable of ndarray of int, shape (y, x)
    n_phases : int

    Returns
    -------
    per_phase : ndarray of float, shape (n_phases,)
        0 for a phase with no pixel.
    pooled : float
    """
    pixels, runs = np.zeros(n_phases), np.zeros(n_phases)
    for lab in label_maps:
        lab = np.asarray(lab)
        for lines in (lab, lab.T):
            starts = np.ones(lines.shape, bool)
            starts[:, 1:] = lines[:, 1:] != lines[:, :-1]
            runs += np.bincount(lines[starts].ravel(), minlength=n_phases)[:n_phases]
            pixels += np.bincount(lines.ravel(), minlength=n_phases)[:n_phases]
    per_phase = np.where(runs > 0, pixels / np.maximum(runs, 1), 0.0)
    pooled = float(pixels.sum() / max(runs.sum(), 1))
    return per_phase, pooled


def window_scales(label_maps, n_phases: int) -> tuple[list[float], dict]:
    """The window sigmas (processing pixels) of the level, from the collection's phase label maps.

    A ladder from the pixel (:data:`MIN_SIGMA`) to :data:`TOP_STEPS` times the
    pooled mean intercept (:func:`mean_intercepts`), evenly spaced in log
    with at most an octave between neighbours; the top is at most
    :data:`MAX_SIGMA_SHARE` of the maps' shorter side. Returns the sigmas
    and what they were measured from.
    """
    maps = [np.asarray(m) for m in label_maps]
    per_phase, pooled = mean_intercepts(maps, n_phases)
    cap = max(MIN_SIGMA, MAX_SIGMA_SHARE * min(min(m.shape) for m in maps)) if maps else MIN_SIGMA
    top = float(np.clip(TOP_STEPS * pooled, MIN_SIGMA, cap))
    octaves = np.log2(top / MIN_SIGMA)
    n = int(np.ceil(octaves - 1e-9)) + 1
    sigmas = sorted({round(float(MIN_SIGMA * 2.0 ** (octaves * j / max(n - 1, 1))), 3) for j in range(n)})
    return sigmas, {"mean_intercept": round(pooled, 3),
                    "phase_mean_intercepts": [round(float(v), 3) for v in per_phase],
                    "top_steps": TOP_STEPS}


def halo(sigmas, truncate: float) -> int:
    """Pixels a window feature depends on on each side: the largest Gaussian's ``truncate * sigma``."""
    return int(np.ceil(float(truncate) * max(float(s) for s in sigmas))) if sigmas else 0


# --- the per-pixel description ----------------------------------------------------------------

def feature_names(phase_names, sigmas) -> list[str]:
    """Names of :func:`window_features`' channels: per scale, each phase's share, then its variation."""
    out = []
    for s in sigmas:
        out += [f"{p} share @{s:g}px" for p in phase_names] + [f"{p} variation @{s:g}px" for p in phase_names]
    return out


def window_features(memberships: np.ndarray, sigmas, truncate: float) -> np.ndarray:
    """Each pixel's phase memberships around it at every scale: ``(features, y, x)`` float32.

    Per sigma: the Gaussian-weighted mean of each membership (the local phase
    fractions) and its weighted standard deviation (the local variation), in
    :func:`feature_names`' order. Gaussians are cut at ``truncate * sigma``
    and the image continues as its edge pixels (``mode='nearest'``), so every
    value depends on the pixels within :func:`halo` only.
    """
    P = np.asarray(memberships, dtype=np.float64)
    out = []
    for s in sigmas:
        mean = np.stack([ndi.gaussian_filter(p, float(s), mode="nearest", truncate=float(truncate)) for p in P])
        square = np.stack([ndi.gaussian_filter(p * p, float(s), mode="nearest", truncate=float(truncate)) for p in P])
        out += [mean, np.sqrt(np.maximum(square - mean * mean, 0.0))]
    return np.concatenate(out, axis=0).astype(np.float32)


def activations(memberships: np.ndarray, level: dict, truncate: float) -> np.ndarray:
    """Constituent scores ``(n_constituents, y, x)`` float32 of phase memberships ``(n_phases, y, x)``.

    The window features (:func:`window_features`), scaled by the fit's range;
    each pixel's exact non-negative W against the level's H (``nnls.solve``);
    and the score ``2 c.w - |c|^2`` of each constituent's centre ``c`` in W
    (``model.centre_terms``), whose arg max is the nearest centre. The scores
    are affine in W, so resampling them bilinearly (``segment.labels_at``) is
    resampling W and then choosing. Pixel-wise after the windows, so any
    tiling grown by :func:`halo` gives the same numbers.
    """
    from .model import centre_terms

    F = window_features(memberships, level["sigmas"], truncate)
    X = apply_scaling(F.reshape(F.shape[0], -1).T, level["lo"], level["hi"])
    W = nnls.solve(X, level["H"])
    twice, shift = centre_terms(level["centres"])
    scores = W @ twice.T - shift
    return np.ascontiguousarray(scores.T.reshape((-1,) + F.shape[1:]), dtype=np.float32)


def _block_activations(block_yxp: np.ndarray, level: dict, truncate: float) -> np.ndarray:
    return np.moveaxis(activations(np.moveaxis(block_yxp, 2, 0), level, truncate), 0, 2)


def lazy_activations(memberships, level: dict, truncate: float):
    """:func:`activations` of lazy memberships ``(n_phases, y, x)`` (a dask array), chunk by chunk.

    Each chunk is grown by :func:`halo` pixels (``features.map_haloed``), so the
    result equals the whole image's whatever the chunking.
    """
    from .features import map_haloed

    m = int(np.asarray(level["centres"]).shape[0])
    out = map_haloed(_block_activations, memberships.transpose(1, 2, 0), halo(level["sigmas"], truncate), m,
                     name="bigseg-constituents", level=level, truncate=float(truncate))
    return out.transpose(2, 0, 1)


# --- the fit -------------------------------------------------------------------------------------

def fit(membership_maps, label_maps, n_constituents: int, settings: dict, phase_names) -> dict:
    """Fit the level on a few images' phase memberships and label maps.

    Parameters
    ----------
    membership_maps : list of ndarray, shape (n_phases, y, x)
        Phase memberships (``Model.phase_memberships``, boundary pixels settled).
    label_maps : list of ndarray, shape (y, x)
        The phase labels of the same images on the same grid: the scales come from them.
    n_constituents : int
    settings : dict
        ``truncate``, ``sample_size``, ``random_state`` and the NMF settings of the phases' fit.
    phase_names : list of str

    Returns
    -------
    dict
        ``H`` (unit-norm rows over :func:`feature_names`), ``centres`` (each
        constituent's centre in W), ``lo``/``hi`` (the features' scaling),
        ``sigmas``, ``names`` (from what each is made of, :func:`describe`),
        ``profiles`` (each constituent's mean share and variation of each
        phase at each scale on the sample: its fingerprint) and ``report``
        (the scales' measurement, sample size, each constituent's share of the
        fit images' pixels and its phase composition, and ``adds_nothing``:
        every constituent is one smooth phase).
    """
    from .model import fit_cd

    n_phases = int(membership_maps[0].shape[0])
    truncate = float(settings["truncate"])
    sigmas, measured = window_scales(label_maps, n_phases)
    rng = np.random.default_rng(settings["random_state"])
    sizes = [m[0].size for m in membership_maps]
    counts = block_counts(sizes, min(int(settings["sample_size"]), SAMPLE_PIXELS, int(sum(sizes))))
    parts = []
    for memb, count in zip(membership_maps, counts):
        F = window_features(memb, sigmas, truncate).reshape(-1, memb[0].size)
        pick = np.sort(rng.choice(F.shape[1], size=count, replace=False))
        parts.append(F[:, pick].T)
    raw = np.concatenate(parts, axis=0)
    if raw.shape[0] < n_constituents:
        raise ValueError(f"n_constituents: only {raw.shape[0]} pixels sampled for {n_constituents} constituents")
    lo, hi = fit_scaling(raw)
    X = apply_scaling(raw, lo, hi)
    nmf_settings = dict(settings, n_components=int(n_constituents), alpha_W=0.0, alpha_H=0.0)
    H, nmf_report = fit_cd(X, nmf_settings)
    H = normalise_rows(H)
    W = nnls.solve(X, H)
    centres = _centres(W, int(n_constituents), settings["random_state"])
    labels = nearest_centre(W.T, centres)
    profiles = np.array([raw[labels == j].mean(axis=0) if (labels == j).any() else raw.mean(axis=0)
                         for j in range(len(centres))])
    level = {"H": H, "centres": centres, "lo": lo, "hi": hi, "sigmas": list(sigmas)}
    maps = [activations(memb, level, truncate).argmax(axis=0) for memb in membership_maps]
    comp = composition(label_maps, maps, n_phases, len(centres))
    shares = np.bincount(np.concatenate([m.ravel() for m in maps]), minlength=len(centres)) / max(sum(sizes), 1)
    mixed = comp.max(axis=1) < PURE_SHARE
    order = sorted(range(len(centres)), key=lambda j: (bool(mixed[j]), *_main_phases(comp[j]), -float(shares[j])))
    centres, profiles, shares, comp, mixed = (centres[order], profiles[order], shares[order], comp[order],
                                              mixed[order])
    names = describe(comp, mixed, phase_names)
    report = dict(measured, sigmas=list(sigmas), truncate=truncate, sample_pixels=int(X.shape[0]),
                  images=len(membership_maps), n_iter=nmf_report["n_iter"], converged=nmf_report["converged"],
                  pixel_shares=[round(float(v), 6) for v in shares],
                  phase_composition=[[round(float(v), 4) for v in row] for row in comp],
                  adds_nothing=not bool(mixed[shares > 0].any()))
    return dict(level, centres=centres, names=names, profiles=profiles, report=report)


def _centres(W: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` distinct centres of the sample's W by k-means (the phases' ``assignment: centres``)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(np.asarray(W, np.float64))
    return np.maximum(km.cluster_centers_, 0.0)


def composition(label_maps, constituent_maps, n_phases: int, n_constituents: int) -> np.ndarray:
    """``(n_constituents, n_phases)``: the share of each constituent's pixels that each phase labels (a row
    of zeros for a constituent with no pixel)."""
    counts = np.zeros((n_constituents, n_phases))
    for lab, con in zip(label_maps, constituent_maps):
        pair = np.asarray(con, np.int64).ravel() * n_phases + np.asarray(lab, np.int64).ravel()
        counts += np.bincount(pair, minlength=n_constituents * n_phases).reshape(n_constituents, n_phases)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def _main_phases(shares) -> tuple[int, int]:
    """The two phases with the largest shares, the larger first."""
    ranked = np.argsort(-np.asarray(shares), kind="stable")
    return int(ranked[0]), int(ranked[min(1, len(ranked) - 1)])


def describe(comp, mixed, phase_names) -> list[str]:
    """Names from what each constituent is made of: "smooth <phase>" or "fine particles of <minor> in <major>".

    A constituent at least :data:`PURE_SHARE` of whose pixels one phase
    labels is that phase, smooth; any other mixes phases and is named by
    its two largest (:func:`composition`). Names repeated are numbered.
    """
    from .phases import _numbered

    names = []
    for shares, is_mixed in zip(comp, mixed):
        a, b = _main_phases(shares)
        names.append(f"fine particles of {phase_names[b]} in {phase_names[a]}" if is_mixed and a != b
                     else f"smooth {phase_names[a]}")
    return _numbered(names)


def fingerprints(level: dict, phase_names) -> list[dict]:
    """Each constituent's fingerprint: its mean share and variation of every phase at every scale, on the
    fit's sample (``level["profiles"]``), keyed by :func:`feature_names`."""
    names = feature_names(phase_names, level["sigmas"])
    return [{n: round(float(v), 6) for n, v in zip(names, row)} for row in np.asarray(level["profiles"])]


def fingerprint_png(level: dict, phase_names) -> bytes:
    """Each constituent's fingerprint as a picture: which phases at which scale.

    One panel per constituent, a grid of its mean windowed share of each phase
    (rows) at each window scale (columns, the finest first), on the fit's sample
    (``level["profiles"]``); the PNG bytes of ``constituent_fingerprints.png``.
    """
    from .viz import figure_png, pyplot

    sigmas, names = level["sigmas"], level["names"]
    n_phases = len(phase_names)
    shares = np.asarray(level["profiles"], np.float64).reshape(len(names), len(sigmas), 2, n_phases)[:, :, 0]
    fig, axes = pyplot().subplots(1, len(names), figsize=(3.2 * len(names), 0.4 * n_phases + 2.4), squeeze=False)
    top = max(float(shares.max()), 1e-6)     # memberships are soft: one colour scale for all panels, to the largest
    for i, ax in enumerate(axes[0]):
        ax.imshow(shares[i].T, vmin=0.0, vmax=top, cmap="viridis", aspect="auto")
        for (c, r), v in np.ndenumerate(shares[i]):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < top / 2 else "black")
        ax.set_xticks(range(len(sigmas)), [f"{s:g}" for s in sigmas], fontsize=7)
        ax.set_yticks(range(n_phases), list(phase_names) if i == 0 else [""] * n_phases, fontsize=7)
        ax.set_xlabel("window sigma (px)", fontsize=7)
        ax.set_title("\n".join(textwrap.wrap(f"{i}: {names[i]}", 40)), fontsize=7)
    axes[0][0].set_ylabel("mean share of each phase", fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
