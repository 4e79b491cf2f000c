"""Feature scaling and the NMF fit (``cd`` on a sample, ``minibatch`` streamed); safe save/load.

A model is a folder with ``model.json`` (settings, feature names, fit report,
version) and ``model.npz`` (H and the scaling), read with ``allow_pickle=False``:
a model received from someone else cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import nnls
from .config import ConfigError, check_same, model_bound, resolved_init

MODEL_FORMAT = 1
#: streamed feature blocks evaluated per compute call of the minibatch fit
BLOCKS_PER_COMPUTE = 4
#: minibatch passes without improvement before it stops
PATIENCE = 2
SCALE_PERCENTILES = (0.5, 99.5)


class ModelError(ValueError):
    """A model file is missing, damaged or does not fit the request."""


# --- pure helpers shipped to workers ------------------------------------------

def sample_block(block: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The pixels (rows of features) of one block at the given block-local coordinates."""
    return np.asarray(block)[rows, cols]


def block_counts(sizes, total: int) -> list[int]:
    """Split ``total`` draws over blocks in proportion to their pixel counts (largest remainder)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    share = sizes / sizes.sum() * total
    counts = np.floor(share).astype(int)
    rest = int(total - counts.sum())
    if rest > 0:
        counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
    return np.minimum(counts, sizes.astype(int)).tolist()


def block_refs(arr, image_index: int):
    """``(image_index, block index, pixel count)`` of every spatial block of one lazy (y, x, f) array."""
    grid = [len(c) for c in arr.chunks[:2]]
    return [(image_index, idx + (0,), arr.chunks[0][idx[0]] * arr.chunks[1][idx[1]]) for idx in np.ndindex(*grid)]


def fetch_blocks(feature_arrays, refs):
    """Delayed blocks for ``refs`` from :func:`block_refs`; each image's graph is built only when asked."""
    return [feature_arrays[i].to_delayed()[idx] for i, idx, _ in refs]


def image_sample_graph(arr, image_index: int, count: int, seed: int):
    """Lazy sample of ``count`` pixels of one image, drawn uniformly without replacement.

    The pixels are chosen on the whole image's grid and returned in raster
    order, so the sample (and so the fit) does not depend on the chunking.
    """
    import dask

    h, w = arr.shape[:2]
    count = min(int(count), h * w)
    flat = np.sort(np.random.default_rng([seed, image_index]).choice(h * w, size=count, replace=False,
                                                                    shuffle=False))
    ys, xs = flat // w, flat % w
    y_edges, x_edges = np.cumsum((0,) + arr.chunks[0]), np.cumsum((0,) + arr.chunks[1])
    by = np.searchsorted(y_edges, ys, side="right") - 1
    bx = np.searchsorted(x_edges, xs, side="right") - 1
    blocks = arr.to_delayed()
    parts, order = [], []
    for iy, ix in sorted(set(zip(by.tolist(), bx.tolist()))):
        sel = np.flatnonzero((by == iy) & (bx == ix))
        parts.append(dask.delayed(sample_block, pure=True)(blocks[iy, ix, 0], ys[sel] - y_edges[iy],
                                                            xs[sel] - x_edges[ix]))
        order.append(sel)
    return dask.delayed(_in_raster_order, pure=True)(parts, np.concatenate(order) if order else np.empty(0, int))


def _in_raster_order(parts, positions):
    out = np.empty((len(positions),) + parts[0].shape[1:], parts[0].dtype)
    out[positions] = np.concatenate(parts, axis=0)
    return out


def sample_pixels(feature_arrays, n: int, seed: int, compute, batch_images: int = 32) -> np.ndarray:
    """About ``n`` pixels drawn across all images, in proportion to their sizes.

    ``feature_arrays`` is a sequence of lazy (y, x, f) arrays; it may build each
    on access (see ``pipeline.FeatureSources``). Images are sampled
    ``batch_images`` per ``compute`` call, so neither the graphs nor the
    intermediate blocks of a whole archive are ever held at once.
    """
    sizes = [a.shape[0] * a.shape[1] for a in _each(feature_arrays)]
    per_image = block_counts(sizes, n)
    parts = []
    for start in range(0, len(sizes), batch_images):
        batch = [image_sample_graph(feature_arrays[j], j, per_image[j], seed)
                 for j in range(start, min(start + batch_images, len(sizes))) if per_image[j] > 0]
        parts += compute(batch)
    return np.concatenate(parts, axis=0)


def _each(seq):
    for i in range(len(seq)):
        yield seq[i]


def fit_scaling(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature robust range: the 0.5th and 99.5th percentiles of the sample."""
    lo, hi = np.percentile(sample, SCALE_PERCENTILES, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    return lo.astype(np.float32), hi.astype(np.float32)


def apply_scaling(X: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Map each feature's robust range to [0, 1] (clipped): non-negative, comparable weights."""
    return np.clip((np.asarray(X, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def regularisation(settings: dict, n_features: int) -> tuple[float, float]:
    """The (l1, l2) penalties on one pixel's w, as scikit-learn scales alpha_W."""
    a = settings.get("alpha_W", 0.0) * n_features
    ratio = settings.get("l1_ratio", 0.0)
    return a * ratio, a * (1.0 - ratio)


# --- the model ------------------------------------------------------------------

@dataclass
class Model:
    """H (unit-norm rows), the feature scaling and everything needed to reuse them."""

    H: np.ndarray
    scale_lo: np.ndarray
    scale_hi: np.ndarray
    feature_names: list
    settings: dict
    report: dict = field(default_factory=dict)
    #: the fingerprint bar charts as PNG, drawn once when the model is fitted and kept
    #: with it, so segmenting with a saved model needs no plotting
    figure: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def n_components(self) -> int:
        return int(self.H.shape[0])

    def fingerprint_png(self) -> bytes:
        """The components' fingerprints (H rows over the named features) as a PNG bar chart."""
        if self.figure is None:
            from .diagnose import component_names, fingerprint_figure

            self.figure = fingerprint_figure(self.H, self.feature_names, component_names(self.H, self.feature_names))
        return self.figure

    def check_settings(self, settings: dict) -> None:
        """Fail, naming the setting, if ``settings`` would compute other features than the model's."""
        check_same(settings, self.settings, "the model")

    # --- persistence ---
    def save(self, path) -> None:
        """Write ``model.json``, ``model.npz`` and ``fingerprints.png`` into ``path`` atomically
        (temp folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            np.savez(tmp / "model.npz", H=self.H.astype(np.float64), scale_lo=self.scale_lo, scale_hi=self.scale_hi)
            meta = {"format": MODEL_FORMAT, "bigseg_version": __version__, "n_components": self.n_components,
                    "feature_names": list(self.feature_names), "settings": self.settings, "report": self.report,
                    "fingerprints": fingerprints(self.H, self.feature_names)}
            (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
            (tmp / "fingerprints.png").write_bytes(self.fingerprint_png())
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)     # mkdtemp's 0700 would hide the model from colleagues
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path) -> "Model":
        path = Path(path)
        meta_path, arr_path = path / "model.json", path / "model.npz"
        if not meta_path.exists() or not arr_path.exists():
            raise ModelError(f"{path}: not a bigseg model (needs model.json and model.npz)")
        try:
            meta = json.loads(meta_path.read_text())
            with np.load(arr_path, allow_pickle=False) as z:
                H, lo, hi = z["H"], z["scale_lo"], z["scale_hi"]
        except (ValueError, KeyError, OSError) as exc:
            raise ModelError(f"{path}: damaged model file ({exc})") from None
        if meta.get("format") != MODEL_FORMAT:
            raise ModelError(f"{path}: model format {meta.get('format')!r}, this bigseg reads {MODEL_FORMAT}")
        names = meta["feature_names"]
        if H.ndim != 2 or H.shape[1] != len(names) or lo.shape != (len(names),) or hi.shape != (len(names),):
            raise ModelError(f"{path}: H {H.shape} and scaling do not match {len(names)} features")
        figure = path / "fingerprints.png"       # absent in models saved before it was kept
        return cls(H=H, scale_lo=lo, scale_hi=hi, feature_names=names, settings=meta["settings"],
                   report=meta.get("report", {}), figure=figure.read_bytes() if figure.exists() else None)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def fingerprints(H: np.ndarray, names) -> list[dict]:
    """Each component's H row over the named features."""
    return [{name: round(float(v), 6) for name, v in zip(names, row)} for row in H]


def normalise_rows(H: np.ndarray) -> np.ndarray:
    """Unit-norm H rows: W H is unchanged if W absorbs the norms, and argmax W compares like with like."""
    norms = np.linalg.norm(H, axis=1, keepdims=True)
    return H / np.where(norms > 0, norms, 1.0)


def reconstruction(X: np.ndarray, H: np.ndarray, settings: dict) -> dict:
    """Frobenius error of the best W >= 0 for fixed H on the pixels X (already scaled)."""
    W = nnls.solve(X, H, *regularisation(settings, H.shape[1])).astype(np.float64)
    err = float(np.linalg.norm(X - W @ H))
    return {"reconstruction_error": err, "relative_error": err / max(float(np.linalg.norm(X)), 1e-12),
            "eval_pixels": int(X.shape[0])}


def _nmf_kwargs(settings: dict) -> dict:
    return dict(n_components=settings["n_components"], init=resolved_init(settings), beta_loss=settings["beta_loss"],
                tol=settings["tol"], random_state=settings["random_state"], alpha_W=settings["alpha_W"],
                alpha_H=settings["alpha_H"], l1_ratio=settings["l1_ratio"])


def fit_cd(X: np.ndarray, settings: dict) -> tuple[np.ndarray, dict]:
    """Full-batch coordinate-descent NMF on an in-memory sample."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    nmf = NMF(solver="cd", max_iter=settings["max_iter"], **_nmf_kwargs(settings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        nmf.fit(X)
    return nmf.components_, {"n_iter": int(nmf.n_iter_), "converged": bool(nmf.n_iter_ < settings["max_iter"]),
                             "sklearn_reconstruction_err": float(nmf.reconstruction_err_)}


def overlap(H: np.ndarray) -> float:
    """Mean off-diagonal of the cosine-similarity matrix of H's rows (0 = orthogonal rows)."""
    Hn = normalise_rows(np.asarray(H, dtype=np.float64))
    k = len(Hn)
    if k < 2:
        return 0.0
    S = Hn @ Hn.T
    return float((S.sum() - np.trace(S)) / (k * (k - 1)))


def refine_orthogonal(X: np.ndarray, H: np.ndarray, settings: dict) -> tuple[np.ndarray, dict]:
    """Push H's rows apart: multiplicative updates of ``||X - W H||^2 + beta * sum_{i != j} h_i . h_j``.

    Starts from a fitted H (so it inherits the NNDSVD start), keeps rows at unit
    norm after each step (otherwise shrinking H would pay the penalty for free)
    and runs ``max_iter`` iterations or until the objective changes by less than
    ``tol`` (relative).
    """
    beta = float(settings["orthogonality"])
    X = np.asarray(X, dtype=np.float64)
    H = normalise_rows(np.asarray(H, dtype=np.float64)) + 1e-9
    k = len(H)
    off = np.ones((k, k)) - np.eye(k)
    W = nnls.solve(X, H).astype(np.float64) + 1e-9
    eps = 1e-12
    # beta is per pixel of the data term, so its pull does not fade with the sample size
    b = beta * X.shape[0]
    before, prev, it = overlap(H), np.inf, 0
    for it in range(1, settings["max_iter"] + 1):
        H *= (W.T @ X) / (W.T @ W @ H + b * (off @ H) + eps)
        norms = np.linalg.norm(H, axis=1, keepdims=True)
        H /= np.where(norms > 0, norms, 1.0)
        W *= norms.T
        W *= (X @ H.T) / (W @ (H @ H.T) + eps)
        obj = float(np.linalg.norm(X - W @ H) ** 2 + b * np.sum((H @ H.T) * off))
        if np.isfinite(prev) and abs(prev - obj) <= settings["tol"] * max(prev, eps):
            break
        prev = obj
    return H, {"orthogonality": beta, "overlap_before": round(before, 6), "overlap_after": round(overlap(H), 6),
               "orthogonal_iterations": it}


def fit_minibatch(feature_arrays, lo, hi, settings: dict, eval_X: np.ndarray, compute,
                  log=None) -> tuple[np.ndarray, dict]:
    """MiniBatchNMF fed with pixels streamed block by block from the store.

    Each pass visits every block of every image in ``feature_arrays`` in a new
    random order, a few blocks per ``compute`` call, so memory holds only those
    blocks (and their graphs), never the store. A pass ends with the objective on
    ``eval_X``. Minibatch updates are noisy, so we keep the best H seen and stop
    after ``max_iter`` passes or once ``PATIENCE`` passes in a row fail to improve
    on the best by more than ``tol`` (relative).
    """
    from sklearn.decomposition import MiniBatchNMF

    rng = np.random.default_rng(settings["random_state"])
    bs = settings["batch_size"]
    nmf = MiniBatchNMF(batch_size=bs, max_iter=1, **_nmf_kwargs(settings))
    history, n_batches, stale = [], 0, 0
    best_H, best = None, np.inf
    pending = np.empty((0, len(lo)), np.float32)
    refs = [r for i, a in enumerate(_each(feature_arrays)) for r in block_refs(a, i)]
    for passes in range(1, settings["max_iter"] + 1):
        order = rng.permutation(len(refs))
        for start in range(0, len(order), BLOCKS_PER_COMPUTE):
            blocks = compute(fetch_blocks(feature_arrays, [refs[i] for i in order[start:start + BLOCKS_PER_COMPUTE]]))
            pix = [b.reshape(-1, b.shape[-1]) for b in blocks]
            pix = [p[rng.random(p.shape[0]) < settings["minibatch_fraction"]] for p in pix]
            X = np.concatenate([pending] + pix, axis=0)
            X = apply_scaling(X[rng.permutation(X.shape[0])], lo, hi)
            full = (X.shape[0] // bs) * bs
            for b0 in range(0, full, bs):
                nmf.partial_fit(X[b0:b0 + bs])
                n_batches += 1
            pending = X[full:]
        if n_batches == 0 and pending.shape[0] >= settings["n_components"]:
            nmf.partial_fit(pending)   # smaller than one batch: still fit once
            n_batches += 1
            pending = pending[:0]
        if n_batches == 0:
            raise ValueError("too few pixels for one minibatch; lower batch_size")
        obj = reconstruction(eval_X, normalise_rows(nmf.components_), settings)["reconstruction_error"]
        history.append(obj)
        if log:
            log(f"minibatch pass {passes}: error {obj:.5g}")
        stale = stale + 1 if obj >= best * (1 - settings["tol"]) else 0
        if obj < best:
            best, best_H = obj, nmf.components_.copy()
        if stale >= PATIENCE:
            break
    return best_H, {"n_iter": passes, "converged": stale >= PATIENCE, "n_batches": n_batches,
                    "pass_errors": history}


def scaled_sample(feature_arrays, settings: dict, compute, batch_images: int = 32):
    """The bounded pixel sample across all images, scaled by the per-feature range fitted on it.

    Returns ``(X, lo, hi)``; ``X`` has about ``sample_size`` rows whatever the collection's size.
    """
    sample = sample_pixels(feature_arrays, settings["sample_size"], settings["random_state"], compute, batch_images)
    lo, hi = fit_scaling(sample)
    return apply_scaling(sample, lo, hi), lo, hi


def fit(feature_arrays, feature_names, settings: dict, compute, log=None, batch_images: int = 32) -> Model:
    """Fit scaling and NMF on lazy (y, x, f) feature arrays of many images.

    ``feature_arrays`` is a sequence (a list, or one that builds each graph on
    access). ``compute`` evaluates a list of dask objects (threads, processes
    or a cluster). The pixel sample for the scaling (and for ``cd``) is bounded
    by ``sample_size`` whatever the collection's size.
    """
    t0 = time.perf_counter()
    X, lo, hi = scaled_sample(feature_arrays, settings, compute, batch_images)
    if X.shape[0] < settings["n_components"]:
        raise ValueError(f"only {X.shape[0]} pixels sampled; fewer than n_components={settings['n_components']}")
    t1 = time.perf_counter()
    if settings["solver"] == "cd":
        H, report = fit_cd(X, settings)
    else:
        H, report = fit_minibatch(feature_arrays, lo, hi, settings, X, compute, log)
    if settings["orthogonality"] > 0:
        H, extra = refine_orthogonal(X, H, settings)
        report.update(extra)
    H = normalise_rows(H)
    report.update(reconstruction(X, H, settings))
    report.update({"solver": settings["solver"], "init": resolved_init(settings), "sample_pixels": int(X.shape[0]),
                   "sample_seconds": round(t1 - t0, 3), "fit_seconds": round(time.perf_counter() - t1, 3)})
    keep = model_bound(settings)
    keep.update({k: settings[k] for k in ("n_components", "solver", "beta_loss", "alpha_W", "alpha_H", "l1_ratio",
                                          "max_iter", "tol", "init", "sample_size", "batch_size", "random_state",
                                          "spatial_weight", "spatial_sweeps", "orthogonality", "crop_bottom")})
    return Model(H=H, scale_lo=lo, scale_hi=hi, feature_names=list(feature_names), settings=keep, report=report)


__all__ = ["Model", "ModelError", "ConfigError", "fit", "scaled_sample", "apply_scaling", "fit_scaling"]
