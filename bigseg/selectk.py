"""Choosing k: reconstruction error and stability across resampled fits, for a range of k.

For each k we fit NMF (coordinate descent, random starts) on ``n_seeds``
random subsamples of the scaled pixel sample. *Error* is the relative reconstruction error on the
whole sample. *Stability* is how well the H rows of different fits match: rows
are paired across two fits by the Hungarian algorithm on cosine similarity, and
the mean paired cosine is averaged over all pairs of fits. Too large a k splits
a phase in a way that changes from one subsample to the next, so stability
falls; the recommendation is the largest k (below the number of features)
that stays stable.
"""

from __future__ import annotations

import itertools

import numpy as np

from .model import fit_cd, normalise_rows, reconstruction

#: mean matched cosine a k must reach to count as stable (about 11 degrees between paired rows)
STABLE = 0.98


def matched_cosine(A: np.ndarray, B: np.ndarray) -> float:
    """Mean cosine similarity of the rows of A and B under the best one-to-one pairing."""
    from scipy.optimize import linear_sum_assignment

    S = normalise_rows(A) @ normalise_rows(B).T
    r, c = linear_sum_assignment(-S)
    return float(S[r, c].mean())


def scan(X: np.ndarray, k_values, settings: dict, n_seeds: int = 3, subsample: float = 0.7, progress=None) -> dict:
    """Error and stability for each k; the recommended k. ``progress(k, seed)``, when given, is told of each fit
    as it ends (``bigseg select-k``'s bar)."""
    X = np.asarray(X, dtype=np.float64)
    rows = []
    for k in k_values:
        s = dict(settings, n_components=int(k), solver="cd")
        Hs, errs = [], []
        for seed in range(n_seeds):
            rng = np.random.default_rng(settings["random_state"] + 1000 * seed + k)
            idx = rng.choice(X.shape[0], max(int(subsample * X.shape[0]), k), replace=False)
            # random starts: a deterministic NNDSVD start would hide an unstable k
            H, _ = fit_cd(X[idx], dict(s, init="random", random_state=settings["random_state"] + seed))
            Hs.append(normalise_rows(H))
            errs.append(reconstruction(X, Hs[-1], s)["relative_error"])
            if progress is not None:
                progress(int(k), seed)
        pairs = [matched_cosine(a, b) for a, b in itertools.combinations(Hs, 2)]
        rows.append({"k": int(k), "error": float(np.mean(errs)), "error_std": float(np.std(errs)),
                     "stability": float(np.mean(pairs)) if pairs else 1.0})
    return {"results": rows, "recommended": recommend(rows, X.shape[1]), "stable_threshold": STABLE}


#: the k that ``n_components: auto`` considers: from 2 to this, and below the feature count
AUTO_K_MAX = 8
#: resampled fits per k for ``n_components: auto``
AUTO_SEEDS = 3


def auto_k(X: np.ndarray, settings: dict, progress=None) -> tuple[int, list[dict]]:
    """The k ``n_components: auto`` stands for on the scaled pixel sample ``X``, and the scan behind it;
    ``progress(k, seed)`` as in :func:`scan`."""
    k_values = range(2, max(2, min(AUTO_K_MAX, X.shape[1] - 1)) + 1)
    result = scan(X, k_values, dict(settings, n_components=2), AUTO_SEEDS, progress=progress)
    return result["recommended"], result["results"]


def recommend(rows, n_features: int | None = None) -> int:
    """The largest k whose stability reaches the threshold; the most stable k if none does.

    k at or above the number of features is never recommended: there NMF can
    reproduce every pixel almost exactly, so a low error says nothing about phases.
    """
    usable = [r for r in rows if n_features is None or r["k"] < n_features] or rows
    stable = [r["k"] for r in usable if r["stability"] >= STABLE]
    if stable:
        return max(stable)
    return max(usable, key=lambda r: r["stability"])["k"]


def plot(result: dict, path) -> None:
    """Error and stability against k, the recommendation marked; written atomically as PNG."""
    from .viz import pyplot, save_figure

    ks = [r["k"] for r in result["results"]]
    fig, ax = pyplot().subplots(figsize=(5.5, 3.5))
    ax.errorbar(ks, [r["error"] for r in result["results"]], yerr=[r["error_std"] for r in result["results"]],
                marker="o", color="tab:blue")
    ax.set_xlabel("k (components)")
    ax.set_ylabel("relative reconstruction error", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(ks, [r["stability"] for r in result["results"]], marker="s", color="tab:orange")
    ax2.axhline(result["stable_threshold"], color="tab:orange", ls=":", lw=1)
    ax2.set_ylabel("stability (matched cosine)", color="tab:orange")
    ax2.set_ylim(0, 1.05)
    ax.axvline(result["recommended"], color="grey", ls="--", lw=1)
    ax.set_title(f"recommended k = {result['recommended']}")
    fig.tight_layout()
    save_figure(fig, path)
