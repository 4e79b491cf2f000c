"""Read a fit back to the user: the fingerprint chart and the method's failure modes (phase names: :mod:`bigseg.phases`).

Failure modes checked (each with a suggested fix):

* ``dominant``: one component takes almost every pixel of the collection;
* ``unused``: a component (almost) never wins a pixel;
* ``speckled``: label maps change class between neighbouring pixels too often;
* ``not_converged``: the NMF fit stopped at ``max_iter``.
"""

from __future__ import annotations

import numpy as np

DOMINANT_SHARE = 0.90
UNUSED_SHARE = 0.002
SPECKLE_RATE = 0.25
#: what to do when boundary components leave fewer phases than asked: only what was measured to help or to
#: cost nothing (docs/method.md); adding features, which a refit would need, lowered MetalDAM's mean IoU
BOUNDARY_SUGGESTION = ("lower n_components (on MetalDAM, k = 4 gave four phases, no boundary component, and mean "
                       "IoU 0.388 against 0.392 at k = 5); more features did not help there (features: extended "
                       "lowered it to 0.354)")


def speckle_rate(labels: np.ndarray) -> float:
    """Share of horizontally or vertically adjacent pixel pairs with different labels."""
    labels = np.asarray(labels)
    pairs = labels[:, 1:].size + labels[1:, :].size
    if pairs == 0:
        return 0.0
    return float(((labels[:, 1:] != labels[:, :-1]).sum() + (labels[1:, :] != labels[:-1, :]).sum()) / pairs)


def failure_modes(shares: np.ndarray, speckle: dict, report: dict) -> list[dict]:
    """Warnings with suggested fixes, from collection-wide shares, per-image speckle and the fit report."""
    out = []
    shares = np.asarray(shares, dtype=np.float64)
    if shares.size and shares.max() > DOMINANT_SHARE:
        i = int(shares.argmax())
        out.append({"kind": "dominant", "component": i,
                    "message": f"component {i} takes {shares[i]:.1%} of all pixels",
                    "suggestion": "the phases differ too little in these features: check the crop and "
                                  "normalisation, raise n_components, or lower alpha_W/alpha_H"})
    for i in np.flatnonzero(shares < UNUSED_SHARE):
        out.append({"kind": "unused", "component": int(i),
                    "message": f"component {i} wins only {shares[i]:.2%} of pixels",
                    "suggestion": "lower n_components, or check whether it marks a rare phase worth keeping"})
    noisy = {k: v for k, v in speckle.items() if v > SPECKLE_RATE}
    if noisy:
        worst = max(noisy, key=noisy.get)
        out.append({"kind": "speckled", "images": sorted(noisy),
                    "message": f"{len(noisy)} image(s) have speckled maps ({worst}: {noisy[worst]:.0%} of "
                               f"neighbouring pixels disagree)",
                    "suggestion": "raise spatial_weight or spatial_sweeps, or add a larger blur sigma"})
    asked = report.get("phases_asked") if report else None
    if asked and report.get("transitions") and len(shares) < asked:
        out.append({"kind": "boundaries",
                    "message": f"{report['transitions']} of the {asked} components live on phase boundaries, not "
                               f"in regions, and the features allow no refit with more components: "
                               f"{len(shares)} phases",
                    "suggestion": BOUNDARY_SUGGESTION})
    if report and not report.get("converged", True):
        out.append({"kind": "not_converged",
                    "message": f"the fit stopped at max_iter ({report.get('n_iter')} iterations) before reaching "
                               f"its tolerance, so H may still move",
                    "suggestion": "raise max_iter (or loosen tol) and compare the maps; on MetalDAM and the "
                                  "demo more iterations lowered the error without improving the maps"})
    return out


def scale_warnings(scale: dict | None) -> list[dict]:
    """The warning naming the images that could not be brought to the run's scale (``summary["scale"]``)."""
    unmatched = (scale or {}).get("unmatched") or {}
    if not unmatched:
        return []
    ids = sorted(unmatched)
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return [{"kind": "scale", "images": ids,
             "message": f"{len(ids)} image(s) not brought to the model's scale: {shown} ({unmatched[ids[0]]})",
             "suggestion": "give every image's pixel size (pixel_size_csv, or pixel_size for all) where the "
                           "model's scale is in micrometres, or fit a model on images like these"}]


def fingerprint_figure(values: np.ndarray, names, labels) -> bytes:
    """One bar chart per phase over the features in plain words, as PNG bytes.

    ``values`` are ``phases.fingerprint_values``: each phase's pixels against
    the phases' mean, so a bar above zero is what the phase has more of than
    the others, the words its name uses.
    """
    from .features import feature_label
    from .viz import PALETTE, figure_png, pyplot

    k = len(values)
    ticks = [feature_label(n) for n in names]
    fig, axes = pyplot().subplots(1, k, figsize=(2.6 * k, 3.6), sharey=True, squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.bar(range(len(names)), values[i], color=PALETTE[i % len(PALETTE)] / 255.0)
        ax.axhline(0.0, color="0.3", linewidth=0.6)
        ax.set_xticks(range(len(names)), ticks, rotation=70, ha="right", fontsize=7)
        ax.set_title(f"{i}: {labels[i]}", fontsize=8)
    axes[0][0].set_ylabel("its pixels against the phases'\nmean (features scaled 0-1)", fontsize=8)
    fig.tight_layout()
    return figure_png(fig)
