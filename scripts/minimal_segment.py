"""The per-image path written out by hand: the reference ``PhaseSegmenter.predict`` is timed against.

    python scripts/minimal_segment.py MODEL_DIR IMAGE... --out DIR

Reads a saved bigseg model (``model.json`` and ``model.npz``) with json and numpy, and for each image:
PIL decode, Rec. 601 grey, bottom rows cropped, scikit-image resize, normalisation and CLAHE, the
feature bank with scipy.ndimage, the feature scaling, the exact NNLS of every pixel against H with the
coupled sweeps (and, for a model with a void phase, each pixel's normalised level before CLAHE,
smoothed at half a pixel, against the model's void threshold), the pixels of thin bands between two
phases handed to the nearer, then the scores resampled bilinearly to the image's size and the argmax,
written as ``DIR/<stem>.png``. Nothing of bigseg is imported: no settings validation, no dask, no store.

Its labels equal ``PhaseSegmenter.load(MODEL_DIR).predict(image)``, bit for bit: each step does
bigseg's arithmetic in bigseg's order (``tests/test_scripts.py`` checks it). It covers the settings a
micrograph run uses: the kinds of the ``method`` feature set, ``resize`` as a side, a shape,
``native`` or the scale a fit carries as a factor, features computed on the fly (the ``cd`` solver); it refuses the others by name.
``scripts/bench.py`` times it against ``predict`` in memory and against ``bigseg segment`` as a process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

#: the kinds this script computes, as ``features: method`` lists them
METHOD_KINDS = ("intensity", "gradient", "laplacian", "variance", "blur")


# --- the model -------------------------------------------------------------------------------

def load_model(folder) -> dict:
    """H, the feature scaling, the settings and the phase rows of a bigseg model folder."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    with np.load(folder / "model.npz") as arrays:
        H, lo, hi = arrays["H"].astype(np.float64), arrays["scale_lo"], arrays["scale_hi"]
        centres = arrays["centres"].astype(np.float64) if "centres" in arrays else None
    s = meta["settings"]
    kinds = list(s["features"]) if isinstance(s["features"], list) else \
        {"method": list(METHOD_KINDS)}.get(s["features"])
    if kinds is None or set(kinds) - set(METHOD_KINDS):
        raise SystemExit(f"{folder}: features {s['features']!r}: this script computes only {METHOD_KINDS}")
    if s.get("store_features", "auto") is True or (s.get("store_features", "auto") == "auto"
                                                   and s.get("solver") == "minibatch"):
        raise SystemExit(f"{folder}: this model's features are rounded as stored (solver minibatch): not covered")
    if s["resize"] == "physical" or (isinstance(s["resize"], dict) and s["resize"].get("um_per_pixel")):
        raise SystemExit(f"{folder}: a scale in micrometres needs pixel sizes: not covered")
    transitions = set(meta.get("transitions", []))
    a = float(s.get("alpha_W", 0.0)) * H.shape[1]
    ratio = float(s.get("l1_ratio", 0.0))
    # a void phase is row 0: the pixels whose smoothed level before CLAHE is below void_below; the
    # other rows are solved without it
    void = meta.get("void_below")
    first = 0 if void is None else 1
    return {"H": H[first:], "lo": lo, "hi": hi, "s": s, "kinds": kinds, "names": meta["feature_names"],
            "void": void,
            "phases": np.array([j - first for j in range(first, H.shape[0]) if j not in transitions], np.intp),
            # phases as centres in activation space: the label is the nearest centre, i.e. the arg max of
            # 2 c.w - |c|^2, summed in float32 in the order of the components
            "centres": None if centres is None else ((2 * centres).astype(np.float32),
                                                     (centres ** 2).sum(axis=1).astype(np.float32)),
            "l1": a * ratio, "l2": a * (1.0 - ratio),
            "weight": float(s.get("spatial_weight", 2.0)), "sweeps": int(s.get("spatial_sweeps", 5)),
            # bigseg.regions.boundary_radius: auto is twice the larger derivative sigma, rounded up
            "boundary_radius": max(1, int(np.ceil(2.0 * max(float(s["gradient_sigma"]), float(s["laplacian_sigma"])))))
            if s.get("boundary_radius", "auto") == "auto" else int(s["boundary_radius"])}


# --- one image ---------------------------------------------------------------------------------

def read_grey(path) -> np.ndarray:
    """A PNG, JPEG, BMP or TIFF as PIL decodes it, upright, greyed."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_grey(np.asarray(im))


def to_grey(arr: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of RGB(A), rounded back to the integer type; grey (+ alpha) as is."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        grey = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if np.issubdtype(arr.dtype, np.integer):
            return np.clip(np.rint(grey), 0, np.iinfo(arr.dtype).max).astype(arr.dtype)
        return grey
    return arr[..., 0] if arr.ndim == 3 else arr


def data_bar_rows(grey: np.ndarray) -> int:
    """Rows of an SEM data bar at the bottom: the first flat row (std < 4 grey levels) under a textured
    one in the bottom quarter."""
    if grey.shape[0] < 8:
        return 0
    scale = 255.0 / max(float(np.max(grey)), 1.0) if grey.dtype != np.uint8 else 1.0
    h = grey.shape[0]
    first = max(1, int(h * 0.75)) - 1
    std = grey.astype(np.float32)[first:].std(axis=1) * scale
    for r in range(first + 1, h):
        if std[r - first] < 4.0 and std[r - first - 1] >= 4.0:
            return h - r
    return 0


def crop(grey: np.ndarray, setting, from_file: bool) -> np.ndarray:
    """``crop_bottom``: N rows, or for files ``auto`` (arrays are taken as already cropped)."""
    n = int(setting) if isinstance(setting, int) else (data_bar_rows(grey) if from_file else 0)
    return grey[: grey.shape[0] - n] if n else grey


def grid_shape(shape, resize) -> tuple[int, int]:
    if isinstance(resize, dict):     # the scale of the fit's images: processing pixels per native pixel
        scale = resize["factor"]
        return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))
    if resize == "native":
        return int(shape[0]), int(shape[1])
    if isinstance(resize, int):
        scale = resize / max(shape)
        return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))
    return int(resize[0]), int(resize[1])


def preprocess(grey: np.ndarray, s: dict) -> np.ndarray:
    """Resize (anti-aliased when shrinking), min-max or percentile normalisation, CLAHE: float32 in [0, 1]."""
    return equalise(normalise(resized(grey, s), s["normalize_percentiles"]), s)


def resized(grey: np.ndarray, s: dict) -> np.ndarray:
    """Resize to the processing grid (anti-aliased when shrinking), float32."""
    from skimage.transform import resize

    img = grey.astype(np.float32)
    shape = grid_shape(img.shape, s["resize"])
    if img.shape != shape:
        shrink = shape[0] < img.shape[0] or shape[1] < img.shape[1]
        img = resize(img, shape, order=1, mode="reflect", anti_aliasing=shrink,
                     preserve_range=True).astype(np.float32)
    return img


def normalise(img: np.ndarray, percentiles) -> np.ndarray:
    """Min-max or percentile normalisation: float32 in [0, 1]."""
    pct = tuple(float(p) for p in percentiles)
    lo, hi = (img.min(), img.max()) if pct == (0.0, 100.0) else np.percentile(img, pct)
    span = float(hi) - float(lo)
    if not np.isfinite(span) or span <= 0:
        img = np.zeros_like(img)
    else:
        img = np.clip((img - np.float32(lo)) / np.float32(span), 0.0, 1.0)
    return img


def equalise(img: np.ndarray, s: dict) -> np.ndarray:
    """CLAHE, when the model's settings ask for it."""
    from skimage.exposure import equalize_adapthist

    if s["clahe"] and float(img.max()) > float(img.min()):
        img = equalize_adapthist(img, kernel_size=s["clahe_kernel_size"],
                                 clip_limit=s["clahe_clip_limit"]).astype(np.float32)
    return img


def features(img: np.ndarray, m: dict) -> np.ndarray:
    """The feature bank ``(y, x, f)``, float32, channel by channel as the model names them."""
    from scipy import ndimage as ndi

    s, t = m["s"], m["s"]["truncate"]
    out, names = [], []
    for kind in m["kinds"]:
        if kind == "intensity":
            out.append(img), names.append("intensity")
        elif kind == "gradient":
            out.append(ndi.gaussian_gradient_magnitude(img, s["gradient_sigma"], mode="reflect", truncate=t))
            names.append(f"gradient_s{s['gradient_sigma']:g}")
        elif kind == "laplacian":
            out.append(ndi.gaussian_laplace(img, s["laplacian_sigma"], mode="reflect", truncate=t))
            names.append(f"laplacian_s{s['laplacian_sigma']:g}")
        elif kind == "variance":
            size = s["variance_size"]
            mean = ndi.uniform_filter(img, size, mode="reflect")
            out.append(np.maximum(ndi.uniform_filter(img * img, size, mode="reflect") - mean * mean, 0.0))
            names.append(f"variance_w{size}")
        else:
            out += [ndi.gaussian_filter(img, b, mode="reflect", truncate=t) for b in s["blur_sigmas"]]
            names += [f"blur_s{b:g}" for b in s["blur_sigmas"]]
    if names != list(m["names"]):
        raise SystemExit(f"the model's features are {m['names']}, this script computed {names}")
    return np.stack(out, axis=-1).astype(np.float32, copy=False)


def subset_solvers(H: np.ndarray, l2: float) -> np.ndarray:
    """Per non-empty subset S of components (by size, then in order): G_SS^-1 embedded in a k x k matrix."""
    k = H.shape[0]
    G = H @ H.T + l2 * np.eye(k)
    out = []
    for size in range(1, k + 1):
        for S in itertools.combinations(range(k), size):
            idx = np.array(S)
            M = np.zeros((k, k))
            M[np.ix_(idx, idx)] = np.linalg.pinv(G[np.ix_(idx, idx)])
            out.append(M)
    return np.array(out)


def segment(image: np.ndarray, m: dict, from_file: bool = False, crop_bottom="auto") -> np.ndarray:
    """Labels (uint8, the image's size after cropping) of a decoded image (2-D grey or RGB array).

    ``crop_bottom`` is the image's own (a model carries no data bar's height), as bigseg's setting."""
    from scipy import ndimage as ndi

    grey = crop(to_grey(np.asarray(image)), crop_bottom, from_file)
    small = resized(grey, m["s"])
    img = equalise(normalise(small, m["s"]["normalize_percentiles"]), m["s"])
    f = features(img, m)
    X = np.clip((f.reshape(-1, f.shape[-1]) - m["lo"]) / (m["hi"] - m["lo"]), 0.0, 1.0)
    H, l1, l2, k = m["H"], m["l1"], m["l2"], m["H"].shape[0]
    mu = 4.0 * m["weight"]
    sweeps = m["sweeps"] if m["weight"] > 0 else 0
    kernels = _kernels()
    W = kernels["solve"](np.ascontiguousarray(X, np.float32), H, l1, subset_solvers(H, l2), H @ H.T + l2 * np.eye(k),
                         subset_solvers(H, l2 + mu), H @ H.T + (l2 + mu) * np.eye(k), mu, sweeps, img.shape[0],
                         (0.0,) * k)
    if m["centres"] is None:
        scores = W[:, m["phases"]]
    else:
        twice, shift = m["centres"]
        scores = W[:, 0:1] * twice[:, 0]
        for j in range(1, k):
            scores = scores + W[:, j:j + 1] * twice[:, j]
        scores = scores - shift
    if m["void"] is not None:
        # bigseg.voids.PIXEL_SIGMA: half a pixel
        # the void plane: the features' black end, a white end of at most the 99.5th percentile
        # (bigseg.voids.plane_percentiles), smoothed at half a pixel (bigseg.voids.PIXEL_SIGMA)
        lo_pct, hi_pct = m["s"]["normalize_percentiles"]
        plane = normalise(small, (lo_pct, min(hi_pct, 99.5)))
        level = ndi.gaussian_filter(plane, 0.5, mode="reflect", truncate=m["s"]["truncate"])
        v = (level.reshape(-1, 1) < np.float32(m["void"])).astype(np.float32)
        # far above any other score where the level passes the test (bigseg.model.VOID_SCORE)
        scores = np.concatenate([np.float32(2.0 ** 21) * v - np.float32(2.0 ** 20), scores], axis=1)
    scores = np.ascontiguousarray(scores, np.float32)
    if m["boundary_radius"] > 0:
        scores = settle(scores, img.shape, m["boundary_radius"], () if m["void"] is None else (0,))
    return resample_argmax(scores, img.shape, np.arange(scores.shape[1], dtype=np.intp), grey.shape)


def settle(scores: np.ndarray, grid, radius: int, fixed) -> np.ndarray:
    """The ``(pixels, n)`` scores with each pixel of a thin band between two different phases handed to the
    nearer one (bigseg.regions.settle_boundaries): its own and that phase's scores exchanged."""
    from scipy import ndimage as ndi

    labels = scores.argmax(axis=1).reshape(grid)
    h, w = grid
    size, reach = 2 * radius + 1, 2 * radius
    thin, kinds = np.zeros(grid, bool), np.zeros(grid, np.uint8)
    for j in np.unique(labels):
        mine = labels == j
        kinds += ndi.maximum_filter(mine, 2 * reach + 1, mode="constant", cval=False)   # labels within reach
        if j not in fixed:
            thin |= mine & ~ndi.maximum_filter(ndi.minimum_filter(mine, size, mode="nearest"), size, mode="nearest")
    thin &= kinds >= 3
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    d2 = dy * dy + dx * dx
    ring = (d2 > 0) & (d2 <= reach * reach)
    order = np.lexsort((dx[ring], dy[ring], d2[ring]))
    offsets = np.stack([dy[ring][order], dx[ring][order]], axis=1)

    y, x = np.nonzero(thin)
    own = labels[y, x]
    near, toward, left = np.full(y.size, -1), np.zeros((y.size, 2), np.intp), np.arange(y.size)
    for oy, ox in offsets:                      # the nearest pixel of another label
        ty, tx = y[left] + oy, x[left] + ox
        ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        hit = np.zeros(left.size, bool)
        hit[ok] = labels[ty[ok], tx[ok]] != own[left[ok]]
        near[left[hit]], toward[left[hit]] = labels[ty[hit], tx[hit]], (oy, ox)
        left = left[~hit]
    y, x, own, toward, near = y[near >= 0], x[near >= 0], own[near >= 0], toward[near >= 0], near[near >= 0]
    move, left = np.zeros(y.size, bool), np.arange(y.size)
    for oy, ox in offsets:                      # a third label on the far side
        ty, tx = y[left] + oy, x[left] + ox
        ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w) & (toward[left, 0] * oy + toward[left, 1] * ox < 0)
        hit = np.zeros(left.size, bool)
        there = labels[ty[ok], tx[ok]]
        hit[ok] = (there != own[left[ok]]) & (there != near[left[ok]])
        move[left[hit]] = True
        left = left[~hit]
    pixel = y[move] * w + x[move]
    out = scores.copy()
    out[pixel, own[move]], out[pixel, near[move]] = scores[pixel, near[move]], scores[pixel, own[move]]
    return out


def resample_argmax(W: np.ndarray, grid, phases, shape) -> np.ndarray:
    """Argmax over ``phases`` of the ``(pixels, k)`` activations on ``grid``, bilinearly resampled to ``shape``
    (pixel centres aligned, float32, rows first)."""
    def weights(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        w = (pos - lo).astype(np.float32)
        return lo, np.minimum(lo + 1, n_in - 1), 1 - w, w

    out = np.empty(shape, np.uint8)
    _kernels()["labels"](W, grid[1], phases, *weights(grid[0], shape[0]), *weights(grid[1], shape[1]), out)
    return out


# --- the two compiled loops ---------------------------------------------------------------------

def _pixel(c, j, M, G, ws, best, kt):
    """The exact NNLS of one pixel given ``c = H v - l1 (+ pull)``: support ``j`` if it meets the KKT
    conditions, else the feasible support of lowest objective. Leaves w in ``ws``, returns the support."""
    k = len(kt)
    scale = 0.0
    for a in range(k):
        scale = max(scale, abs(c[a]))
    tol = 1e-9 * (1.0 + scale)
    ok = True
    for a in range(k):
        acc = 0.0
        if j >= 0:
            for b in range(k):
                acc += c[b] * M[j, b, a]
        ws[a] = acc
        if acc < 0.0:
            ok = False
    if ok:
        for a in range(k):
            g = -c[a]
            for b in range(k):
                g += ws[b] * G[b, a]
            if g < -tol:
                ok = False
                break
    if not ok:
        best_obj, j = 0.0, -1
        for a in range(k):
            best[a] = 0.0
        for s in range(M.shape[0]):
            feasible, dot = True, 0.0
            for a in range(k):
                acc = 0.0
                for b in range(k):
                    acc += c[b] * M[s, b, a]
                ws[a] = acc
                dot += acc * c[a]
                if acc < 0.0:
                    feasible = False
                    break
            if feasible and -0.5 * dot < best_obj:
                best_obj, j = -0.5 * dot, s
                for a in range(k):
                    best[a] = ws[a]
        for a in range(k):
            ws[a] = best[a]
    return j


def _solve(V, H, l1, M0, G0, M1, G1, mu, sweeps, rows, kt):
    """Every pixel solved alone (the previous pixel's support tried first), then ``sweeps`` Jacobi sweeps,
    each pixel pulled towards the float32 mean of its 4 neighbours (edge pixels repeat themselves)."""
    n, f = V.shape
    k = len(kt)
    cols = n // rows
    C = np.empty((n, k))
    A = np.empty((n, k), np.float32)
    B = np.empty((n, k), np.float32)
    sup = np.empty(n, np.intp)
    c, ws, best = np.zeros(k), np.zeros(k), np.zeros(k)
    j = -1
    for i in range(n):
        for a in range(k):
            acc = 0.0
            for b in range(f):
                acc += np.float64(V[i, b]) * H[a, b]
            C[i, a] = acc - l1
            c[a] = C[i, a] + 0.0
        j = _pixel_c(c, j, M0, G0, ws, best, kt)
        for a in range(k):
            A[i, a] = ws[a]
        sup[i] = j
    q = np.float32(0.25)
    for _ in range(sweeps):
        for y in range(rows):
            up, down = max(y - 1, 0) * cols, min(y + 1, rows - 1) * cols
            for x in range(cols):
                i = y * cols + x
                left, right = (i - 1 if x > 0 else i), (i + 1 if x < cols - 1 else i)
                for a in range(k):
                    c[a] = C[i, a] + mu * np.float64(q * (((A[up + x, a] + A[down + x, a]) + A[left, a])
                                                          + A[right, a]))
                sup[i] = _pixel_c(c, sup[i], M1, G1, ws, best, kt)
                for a in range(k):
                    B[i, a] = ws[a]
        A, B = B, A
    return A


def _labels(W, cols, phases, ylo, yhi, vy, wy, xlo, xhi, vx, wx, out):
    k = phases.shape[0]
    row = np.empty((k, cols), np.float32)
    for y in range(out.shape[0]):
        for c in range(k):
            p = phases[c]
            for x in range(cols):
                row[c, x] = W[ylo[y] * cols + x, p] * vy[y] + W[yhi[y] * cols + x, p] * wy[y]
        for x in range(out.shape[1]):
            best, arg = row[0, xlo[x]] * vx[x] + row[0, xhi[x]] * wx[x], 0
            for c in range(1, k):
                v = row[c, xlo[x]] * vx[x] + row[c, xhi[x]] * wx[x]
                if v > best:
                    best, arg = v, c
            out[y, x] = arg


_KERNELS: dict = {}
_pixel_c = None          # _pixel compiled, inlined into _solve: set by _kernels before _solve compiles


def _kernels() -> dict:
    if not _KERNELS:
        import numba

        jit = numba.njit(cache=True, nogil=True)
        globals()["_pixel_c"] = numba.njit(inline="always")(_pixel)
        _KERNELS.update(solve=jit(_solve), labels=jit(_labels))
    return _KERNELS


# --- the command ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a bigseg model folder (OUT/model of bigseg run, or PhaseSegmenter.save)")
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--out", required=True, help="folder for the label PNGs")
    ap.add_argument("--crop-bottom", default="auto", help="rows of data bar to remove: auto (found) or N")
    args = ap.parse_args(argv)
    crop_bottom = args.crop_bottom if args.crop_bottom == "auto" else int(args.crop_bottom)
    from PIL import Image

    m = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        labels = segment(read_grey(path), m, from_file=True, crop_bottom=crop_bottom)
        Image.fromarray(labels).save(out / f"{Path(path).stem}.png")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
