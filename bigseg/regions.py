"""Regions, not rims: label-map steps that treat phase boundaries as boundaries.

A secondary-electron image brightens every edge, so a pixel-wise factorisation
readily spends a component on the thin bright band where two phases meet. That
band is not a phase: it separates two regions and belongs to them. This module
finds such *transition components* from label maps alone (:func:`between_share`,
:func:`transition_components`), and :func:`find_transitions` does so for a fitted
H on a few images of a collection, so the fit can give the capacity they took back
to the phases and keep them only to explain edge pixels (:func:`bigseg.model.fit`).
:func:`absorb` gives the pixels of given labels to the regions around them.

All functions are plain numpy/scipy on in-memory arrays: a label map ``(y, x)``
and, where used, activations ``(k, y, x)`` or features ``(y, x, f)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .model import apply_scaling, nearest_centre

#: images of a collection whose label maps decide which components are transitions, and the
#: largest window of each that is read: a decision over a few images, in bounded memory
TRANSITION_IMAGES = 8
TRANSITION_WINDOW = 1024


def window_radius(sigmas) -> int:
    """Radius (pixels) of the window that spans a transition: twice the largest derivative filter's sigma.

    A derivative-of-Gaussian response to a step edge is spread over about
    ``+-2 sigma``, so a component living on edges is at most that wide on each
    side; a window of this radius around any of its pixels reaches the regions
    on both sides.
    """
    return max(1, int(np.ceil(2.0 * max(float(s) for s in sigmas))))


def _presence(labels: np.ndarray, k: int, radius: int) -> np.ndarray:
    """Boolean ``(k, y, x)``: label ``j`` occurs in the square window of ``radius`` around the pixel."""
    size = 2 * radius + 1
    return np.stack([ndi.maximum_filter(labels == j, size=size, mode="nearest") for j in range(k)])


def between_share(labels: np.ndarray, k: int, radius: int = 2) -> np.ndarray:
    """For each label, the share of its pixels that lie *between two other labels*.

    A pixel lies between two other labels when the square window of ``radius``
    around it holds at least two distinct labels other than its own. A rim
    around an island in a matrix (island on one side, matrix on the other)
    scores near 1; a compact region, a speckle inside one region, a precipitate
    in a matrix or a film between two grains of the same phase score low.

    Parameters
    ----------
    labels : ndarray of int, shape (y, x)
        Label map with values in ``[0, k)``.
    k : int
        Number of labels.
    radius : int
        Half side of the window (see :func:`window_radius`).

    Returns
    -------
    ndarray of float, shape (k,)
        The share per label; 0 for a label with no pixels.
    """
    labels = np.asarray(labels)
    present = _presence(labels, k, radius)
    others = present.sum(axis=0) - present[labels, np.arange(labels.shape[0])[:, None],
                                           np.arange(labels.shape[1])[None, :]]
    between = others >= 2
    counts = np.bincount(labels.ravel(), minlength=k)[:k]
    hits = np.bincount(labels.ravel(), weights=between.ravel(), minlength=k)[:k]
    return np.where(counts > 0, hits / np.maximum(counts, 1), 0.0)


def transition_components(labels: np.ndarray, k: int, radius: int = 2, share: float = 0.75,
                          counts_from=None) -> list[int]:
    """Labels that live on transitions: most of their pixels lie between two other labels.

    Parameters
    ----------
    labels : ndarray of int, shape (y, x)
        Label map with values in ``[0, k)``.
    k : int
        Number of labels.
    radius : int
        Window half side (see :func:`window_radius`).
    share : float
        A label is a transition when more than this share of its pixels lies
        between two other labels (0.75: rims scored 0.88-0.99 on every set, real phases at most 0.67).
    counts_from : sequence of (labels) arrays, optional
        Pool the statistic over these label maps instead (a collection), so one
        decision holds for all images.

    Returns
    -------
    list of int
        The transition labels, at most ``k - 2`` (two regions must remain for a
        transition to lie between), the most transitional first.
    """
    s, counts = pooled_between_share(list(counts_from) if counts_from is not None else [labels], k, radius)
    order = [int(j) for j in np.argsort(-s, kind="stable") if s[j] > share and counts[j] > 0]
    return order[: max(0, k - 2)]


def pooled_between_share(maps, k: int, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """:func:`between_share` over several label maps, weighted by pixels; and each label's pixel count."""
    hits, counts = np.zeros(k), np.zeros(k)
    for m in maps:
        n = np.bincount(np.asarray(m).ravel(), minlength=k)[:k]
        hits += between_share(m, k, radius) * n
        counts += n
    return np.where(counts > 0, hits / np.maximum(counts, 1), 0.0), counts


def absorb(labels: np.ndarray, drop, acts: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Give the pixels of the ``drop`` labels to the regions around them.

    With ``acts`` (activations ``(k, y, x)`` on the same grid), each such pixel
    takes the kept component with the largest activation; without, the label
    of the nearest pixel whose label is kept (so a rim is split down its middle
    between the two regions it separates).

    Parameters
    ----------
    labels : ndarray of int, shape (y, x)
    drop : iterable of int
        Labels to dissolve.
    acts : ndarray, shape (k, y, x), optional

    Returns
    -------
    labels : ndarray, shape (y, x), same dtype
        The new label map (a copy).
    moved : int
        How many pixels changed label.
    """
    labels = np.asarray(labels)
    drop = sorted(set(int(d) for d in drop))
    out = labels.copy()
    if not drop:
        return out, 0
    gone = np.isin(labels, drop)
    if not gone.any():
        return out, 0
    if gone.all():
        return out, 0
    if acts is not None:
        a = np.array(acts, dtype=np.float32, copy=True)
        a[drop] = -np.inf
        out[gone] = np.argmax(a[:, gone], axis=0).astype(labels.dtype)
    else:
        _, (iy, ix) = ndi.distance_transform_edt(gone, return_indices=True)
        out[gone] = labels[iy[gone], ix[gone]]
    return out, int(gone.sum())


def remove_transitions(labels: np.ndarray, k: int, radius: int = 2, share: float = 0.75,
                       acts: np.ndarray | None = None, drop=None) -> tuple[np.ndarray, list[int], int]:
    """Find the transition labels of one map (or use ``drop``) and absorb them.

    Returns ``(labels, dropped labels, moved pixel count)``.
    """
    if drop is None:
        drop = transition_components(labels, k, radius, share)
    out, moved = absorb(labels, drop, acts)
    return out, list(drop), moved


def activation_maps(feature_maps, H, lo, hi, settings) -> list[np.ndarray]:
    """Activations ``(k, y, x)`` of in-memory ``(y, x, f)`` features with H fixed, by the coupled solve segment uses."""
    from .model import regularisation
    from .segment import spatial_block

    l1, l2 = regularisation(settings, H.shape[1])
    return [np.moveaxis(spatial_block(f, H, lo, hi, l1, l2, settings["spatial_weight"], settings["spatial_sweeps"]),
                        2, 0) for f in feature_maps]


def label_maps(feature_maps, H, lo, hi, settings) -> list[np.ndarray]:
    """Argmax label maps of in-memory ``(y, x, f)`` features with H fixed, by the coupled solve segment uses."""
    return [a.argmax(axis=0) for a in activation_maps(feature_maps, H, lo, hi, settings)]


def find_transitions(feature_maps, H, lo, hi, settings) -> tuple[list[int], list[float]]:
    """The components of H that live on transitions in these images, and every component's between-share.

    The window is twice the largest derivative sigma (:func:`window_radius`),
    the threshold ``settings["transition_share"]``; the statistic is pooled over
    the images, so one decision holds for the collection.
    """
    k = H.shape[0]
    maps = label_maps(feature_maps, H, lo, hi, settings)
    radius = window_radius([settings["gradient_sigma"], settings["laplacian_sigma"]])
    shares, _ = pooled_between_share(maps, k, radius)
    drop = transition_components(None, k, radius, settings["transition_share"], counts_from=maps)
    return drop, [round(float(v), 4) for v in shares]


def coherence(maps) -> float:
    """Share of pixels whose four neighbours all carry their label, over label maps (pixel-weighted).

    A phase is a region: of two labellings of the same pixels, the one whose
    labels form larger contiguous regions (fewer isolated pixels and ragged
    borders) has the higher coherence.
    """
    same = total = 0
    for lab in maps:
        lab = np.asarray(lab)
        ok = np.ones(lab.shape, bool)
        ok[1:] &= lab[1:] == lab[:-1]
        ok[:-1] &= lab[:-1] == lab[1:]
        ok[:, 1:] &= lab[:, 1:] == lab[:, :-1]
        ok[:, :-1] &= lab[:, :-1] == lab[:, 1:]
        same += int(ok.sum())
        total += ok.size
    return same / total if total else 0.0


#: activation vectors the centres are fitted on, at most (drawn evenly from the maps)
ASSIGNMENT_PIXELS = 200_000
#: centres replace the rows only where they leave clearly fewer ragged pixels (pixels whose
#: neighbours are not all of their phase): at most this share of the rows' count. The rows are the
#: default because their fingerprints are H itself; a switch on a difference within sampling noise
#: would trade sets back and forth
CENTRES_RAGGED_SHARE = 0.9


def separation(X: np.ndarray, labels: np.ndarray) -> float:
    """Calinski-Harabasz variance ratio of a labelling of feature vectors ``X`` (pixels, features):
    the spread between the phases' means over the spread within them, each per degree of freedom.
    0 where fewer than two labels occur."""
    labels = np.asarray(labels).ravel()
    used = np.unique(labels)
    n, m = X.shape[0], len(used)
    if m < 2 or n <= m:
        return 0.0
    X = np.asarray(X, np.float64)
    mean = X.mean(axis=0)
    between = within = 0.0
    for c in used:
        part = X[labels == c]
        centre = part.mean(axis=0)
        between += len(part) * float(((centre - mean) ** 2).sum())
        within += float(((part - centre) ** 2).sum())
    return between * (n - m) / (within * (m - 1)) if within > 0 else float("inf")


def choose_assignment(maps, transitions, n_phases: int, settings, features=None,
                      scaling=None) -> tuple[np.ndarray | None, float | None, dict]:
    """Phases as H rows or as centres in activation space, decided on a few images' coupled activations.

    Arg max over the phase rows treats each phase as one part of H; that fails
    where two phases share their parts and differ in how much of each (islands a
    little darker and rougher than their matrix break into speckle). Centres
    fitted by k-means on every pixel's whole activation vector tell such phases
    apart. With ``settings["assignment"]`` auto, :func:`decide_assignment` picks
    from the two labellings' coherence and, where that is a tie, their
    separation in the scaled features; centres of which one lives on boundaries
    (:func:`pooled_between_share` above ``transition_share``: a boundary is not a
    phase) are never chosen.

    Parameters
    ----------
    maps : list of ndarray, shape (k, y, x)
        Coupled activations of the final H on a few images (:func:`activation_maps`).
    transitions : list of int
        H's boundary rows.
    n_phases : int
        Phases asked for: the number of centres.
    settings : dict
        ``assignment``, ``random_state``, ``transition_share``, the derivative sigmas.
    features : list of ndarray, shape (y, x, f), optional
        The same images' features, for :func:`separation`; without them a coherence tie keeps the rows.
    scaling : (lo, hi), optional
        The model's feature scaling (:func:`bigseg.model.apply_scaling`), applied to the sampled
        pixels' first ``len(lo)`` features (the NMF's); without it the features are taken as given.

    Returns
    -------
    centres : ndarray of shape (n_phases, k) or None
        None: phases are the non-boundary rows of H.
    spread : float or None
        Variance per activation dimension about the centres (the memberships' width).
    info : dict
        What was measured and chosen, for the model's report.
    """
    from sklearn.cluster import KMeans

    mode = settings.get("assignment", "auto")
    k = int(maps[0].shape[0]) if maps else 0
    rows = [j for j in range(k) if j not in set(transitions)]
    info = {"asked": mode, "chosen": "components"}
    if mode == "components" or not maps or n_phases < 2:
        return None, None, info
    by_rows = [m[rows].argmax(axis=0) for m in maps]
    # the sample is drawn map by map, so no copy of all the windows' pixels is ever made
    sizes = np.array([m[0].size for m in maps])
    if sizes.sum() < 10 * n_phases:
        return None, None, dict(info, note="too few pixels to fit centres")
    rng = np.random.default_rng(settings["random_state"])
    pick = np.sort(rng.choice(int(sizes.sum()), min(ASSIGNMENT_PIXELS, int(sizes.sum())), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    picks = [pick[(pick >= starts[i]) & (pick < starts[i + 1])] - starts[i] for i in range(len(maps))]
    sample = np.concatenate([maps[i].reshape(k, -1)[:, picks[i]].T for i in range(len(maps))]).astype(np.float64)
    km = KMeans(n_clusters=n_phases, n_init=3, random_state=settings["random_state"]).fit(sample)
    centres = np.maximum(km.cluster_centers_, 0.0)
    by_centres = [nearest_centre(m, centres) for m in maps]
    radius = window_radius([settings["gradient_sigma"], settings["laplacian_sigma"]])
    shares, counts = pooled_between_share(by_centres, n_phases, radius)
    near = centres[nearest_centre(sample.T, centres)]
    spread = float(((sample - near) ** 2).mean())
    ordered_rows, ordered_centres = coherence(by_rows), coherence(by_centres)
    info.update({"coherence": {"components": round(ordered_rows, 4), "centres": round(ordered_centres, 4)},
                 "centre_between_shares": [round(float(v), 4) for v in shares]})
    usable = (counts > 0).all() and len({c.tobytes() for c in centres}) == n_phases and spread > 0
    rims = bool((shares > settings["transition_share"]).any())
    info["centres_on_boundaries"] = rims
    ragged_rows, ragged_centres = 1.0 - ordered_rows, 1.0 - ordered_centres
    if features is not None:
        F = np.concatenate([features[i].reshape(-1, features[i].shape[-1])[picks[i]] for i in range(len(maps))])
        if scaling is not None:
            F = apply_scaling(F[:, :len(scaling[0])], *scaling)
        sep_rows = separation(F, np.concatenate([by_rows[i].ravel()[picks[i]] for i in range(len(maps))]))
        sep_centres = separation(F, np.concatenate([by_centres[i].ravel()[picks[i]] for i in range(len(maps))]))
        info["separation"] = {"components": round(sep_rows, 2), "centres": round(sep_centres, 2)}
    if mode == "centres" and usable:
        info["chosen"] = "centres"
    elif mode == "auto" and usable and not rims:
        chosen, decided_by, margin = decide_assignment(ragged_rows, ragged_centres, info.get("separation"))
        info.update(chosen=chosen, decided_by=decided_by, margin=round(margin, 4))
    if info["chosen"] != "centres":
        return None, None, info
    return centres, spread, info


def decide_assignment(ragged_rows: float, ragged_centres: float, separations=None) -> tuple[str, str, float]:
    """The auto assignment from what both labellings measured on the same pixels.

    A clear difference in coherence decides (a phase is a region): one labelling
    leaves at most ``CENTRES_RAGGED_SHARE`` of the other's ragged pixels. Within
    that band coherence is a coin flip (a map dominated by one label is
    coherent because it says little), so the labelling whose phases differ more
    in the features themselves decides (:func:`separation`: a phase has its own
    texture). Without separations, the rows stay.

    Parameters
    ----------
    ragged_rows, ragged_centres : float
        Share of pixels whose neighbours are not all of their phase (1 - :func:`coherence`).
    separations : dict or None
        ``{"components": ..., "centres": ...}`` variance ratios of the two labellings.

    Returns
    -------
    chosen : {"components", "centres"}
    decided_by : {"coherence", "separation", "default"}
    margin : float
        How clearly: the log ratio of the deciding statistic beyond its band (coherence) or the log
        ratio of the separations; 0 for the default.
    """
    rr, rc = max(ragged_rows, 1e-12), max(ragged_centres, 1e-12)
    band = -math.log(CENTRES_RAGGED_SHARE)
    if rc <= CENTRES_RAGGED_SHARE * rr:
        return "centres", "coherence", math.log(rr / rc) - band
    if rr <= CENTRES_RAGGED_SHARE * rc:
        return "components", "coherence", math.log(rc / rr) - band
    if separations:
        sr, sc = max(separations["components"], 1e-12), max(separations["centres"], 1e-12)
        return ("centres" if sc > sr else "components"), "separation", abs(math.log(sc / sr))
    return "components", "default", 0.0


def fit_hooks(windows, settings) -> dict:
    """The ``find_transitions`` and ``choose_assignment`` callbacks of :func:`bigseg.model.fit`.

    Both read the same few images' features, which ``windows()`` returns
    (:func:`bigseg.estimator.transition_windows`); they are computed once, on first use.
    """
    cache = []

    def feature_maps():
        if not cache:
            cache.append(list(windows()))
        return cache[0]

    return {"find_transitions": lambda H, lo, hi: find_transitions(feature_maps(), H, lo, hi, settings),
            "choose_assignment": lambda H, lo, hi, transitions, n_phases: choose_assignment(
                activation_maps(feature_maps(), H, lo, hi, settings), transitions, n_phases, settings,
                feature_maps(), (lo, hi))}



# --- boundary pixels: the bands a label map still holds -----------------------------------------

def boundary_radius(settings) -> int:
    """Radius (pixels, processing grid) of the boundary-pixel step: the ``boundary_radius`` setting.

    ``auto`` is :func:`window_radius` of the derivative filters, the reach
    over which the boundary components are judged too: a derivative filter
    answers a step edge over about ``+-2 sigma``, so a band of a label that
    the filters made of an edge is at most twice that wide.
    """
    value = settings.get("boundary_radius", "auto")
    if value != "auto":
        return int(value)
    return window_radius([settings["gradient_sigma"], settings["laplacian_sigma"]])


def boundary_halo(radius: int) -> int:
    """Rows/columns a settled label depends on (:func:`settle_boundaries`): twice the radius."""
    return 2 * int(radius) if radius > 0 else 0


def _offsets(reach: int) -> np.ndarray:
    """``(dy, dx)`` within ``reach`` pixels of the origin (origin left out), nearest first, then by dy, dx."""
    r = int(reach)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    d2 = dy * dy + dx * dx
    keep = (d2 > 0) & (d2 <= r * r)
    order = np.lexsort((dx[keep], dy[keep], d2[keep]))
    return np.stack([dy[keep][order], dx[keep][order]], axis=1)


def _nearest_other(labels, iy, ix, own, offsets):
    """For pixels ``(iy, ix)`` of label ``own``: the label of the first of ``offsets`` that holds another
    label, and that offset's index (-1 where none does; offsets outside the image are passed over)."""
    h, w = labels.shape
    found = np.full(iy.size, -1, np.int64)
    at = np.full(iy.size, -1, np.int64)
    todo = np.arange(iy.size)
    for i, (dy, dx) in enumerate(offsets):
        y, x = iy[todo] + dy, ix[todo] + dx
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        hit = np.zeros(todo.size, bool)
        hit[ok] = labels[y[ok], x[ok]] != own[todo[ok]]
        found[todo[hit]], at[todo[hit]] = labels[y[hit], x[hit]], i
        todo = todo[~hit]
        if todo.size == 0:
            break
    return found, at


def _third_beyond(labels, iy, ix, own, near, toward, offsets):
    """Whether a label other than ``own`` and ``near`` lies at one of ``offsets`` on the far side of each
    pixel: a negative dot product with its ``toward`` (the offset of its nearest other label)."""
    h, w = labels.shape
    found = np.zeros(iy.size, bool)
    todo = np.arange(iy.size)
    for dy, dx in offsets:
        y, x = iy[todo] + dy, ix[todo] + dx
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w) & (toward[todo, 0] * dy + toward[todo, 1] * dx < 0)
        hit = np.zeros(todo.size, bool)
        there = labels[y[ok], x[ok]]
        hit[ok] = (there != own[todo[ok]]) & (there != near[todo[ok]])
        found[todo[hit]] = True
        todo = todo[~hit]
        if todo.size == 0:
            break
    return found


def settle_boundaries(labels: np.ndarray, radius: int, fixed=()) -> np.ndarray:
    """Give the pixels of thin bands that part two different phases to the nearer of the two.

    A pixel moves when its label is thin there (no square of side
    ``2 radius + 1`` of its label covers it; the image continues as its edge
    pixels) and, within ``2 radius`` pixels, the nearest pixel of another
    label (Euclidean; ties to the smaller ``(dy, dx)``) has a third label
    beyond it (a label other than both, on the far side: a negative dot
    product with the nearest one's offset): the pixel is on a band between
    two regions, as a rim between an island and its matrix is. It takes the
    nearest one's label, so a band is split down its middle. A film between
    two grains of one phase, a precipitate in a matrix and the edge of a wide
    region stay. Labels in ``fixed`` (the void phase: decided
    on its own level, not on the filters) never move. Every decision reads the
    original labels within ``2 radius`` pixels (:func:`boundary_halo`), so
    tiles grown by that halo agree exactly with the whole image.

    Parameters
    ----------
    labels : ndarray of int, shape (y, x)
    radius : int
        The band's half width (:func:`boundary_radius`); 0 leaves ``labels``.
    fixed : iterable of int
        Labels whose pixels never move.

    Returns
    -------
    ndarray, shape (y, x), ``labels``' dtype
        The settled labels (a copy).
    """
    labels = np.asarray(labels)
    out = labels.copy()
    if radius <= 0 or labels.size == 0:
        return out
    size, reach = 2 * radius + 1, 2 * radius
    thin = np.zeros(labels.shape, bool)
    for j in np.unique(labels):
        if j not in fixed:
            mine = labels == j
            thin |= mine & ~ndi.maximum_filter(ndi.minimum_filter(mine, size, mode="nearest"), size, mode="nearest")
    # only pixels with three labels within reach (their own among them) can lie between two others: the
    # test below runs on those alone
    iy, ix = np.nonzero(thin & (_presence(labels, int(labels.max()) + 1, reach).sum(axis=0) >= 3))
    own = labels[iy, ix]
    offsets = _offsets(reach)
    near, at = _nearest_other(labels, iy, ix, own, offsets)
    has = near >= 0
    iy, ix, own, near, toward = iy[has], ix[has], own[has], near[has], offsets[at[has]]
    move = _third_beyond(labels, iy, ix, own, near, toward, offsets)
    out[iy[move], ix[move]] = near[move].astype(labels.dtype)
    return out


def hand_over(values, old, new):
    """``values`` ``(n, y, x)`` with each pixel's entries at labels ``old`` and ``new`` exchanged.

    Where ``old`` is the arg max, the arg max becomes ``new``, and the
    values stay the pixel's own: a boundary pixel's scores or memberships
    favour the region it went to by the margin they had favoured its band.
    Pixel-wise; numpy and dask arrays alike.
    """
    if isinstance(values, np.ndarray):
        out = values.copy()
        yy, xx = np.nonzero(old != new)
        a, b = old[yy, xx].astype(np.intp), new[yy, xx].astype(np.intp)
        out[a, yy, xx], out[b, yy, xx] = values[b, yy, xx], values[a, yy, xx]
        return out
    index = np.arange(values.shape[0])[:, None, None]
    at_old, at_new = index == old[None], index == new[None]
    zero = np.zeros((), values.dtype)
    v_old = np.where(at_old, values, zero).sum(axis=0, dtype=values.dtype)
    v_new = np.where(at_new, values, zero).sum(axis=0, dtype=values.dtype)
    moved = (old != new)[None]
    return np.where(moved & at_old, v_new[None], np.where(moved & at_new, v_old[None], values))


def settled_maps(model, acts, settings, memberships: bool = True):
    """Phase scores, memberships and labels of activations ``(n_components, y, x)`` on their grid, boundary
    pixels settled (:func:`settle_boundaries`; the void phase stays where it is).

    Returns ``(scores, memberships or None, labels before, labels after)``: the
    scores and memberships handed over (:func:`hand_over`), so their arg max is
    the settled label and resampling the scores carries it to any grid. Numpy
    and dask arrays alike: lazily, each chunk is settled grown by
    :func:`boundary_halo` (exact: the chunks agree with the whole image).
    """
    radius = boundary_radius(settings)
    fixed = () if model.void_below is None else (0,)
    scores = model.phase_scores(acts)
    before = scores.argmax(axis=0).astype(np.uint8)
    if isinstance(before, np.ndarray) or radius <= 0:
        after = settle_boundaries(before, radius, fixed) if radius > 0 else before
    else:
        import dask.array as da

        after = da.map_overlap(settle_boundaries, before, depth=boundary_halo(radius), boundary="none",
                               dtype=np.uint8, radius=radius, fixed=fixed)
    probs = hand_over(model.phase_memberships(acts), before, after) if memberships else None
    return hand_over(scores, before, after), probs, before, after
