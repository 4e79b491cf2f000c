"""Voids: pores and cracks, found as the collection's own dark intensity mode before CLAHE.

A void gives the detector no signal, so before contrast equalisation its
pixels are the darkest of the collection, in a mode of their own below the
matrix's histogram. CLAHE stretches each tile's histogram and lifts them back
into the matrix's range, where no pixel phase can tell them apart (on CLAHE's
output the same test finds no mode on any set we have). So the stack of
features carries two more channels (:data:`CHANNELS`) from the void plane, the
image before CLAHE normalised with a robust white end (:func:`plane_percentiles`:
two hot pixels of a 16-bit frame once pressed its whole body below the void
threshold), smoothed at the smaller blur sigma (the finest scale the features
already smooth at), on whose sample the fit looks for the mode
(:func:`dark_mode_threshold`), and the same image smoothed at half a pixel
(:data:`PIXEL_SIGMA`), on which each pixel is decided. The smoothing serves to
see the mode above the detector's noise; it would also spread each void's edge
over a few pixels, so a pixel is a void by its own level, with only its
single-pixel noise taken out (docs/method.md: how the defaults were chosen).
Where a mode exists, the pixels below its threshold become one phase, label 0,
and NMF fits the other phases on the remaining pixels.

The test has no constant tuned on one set: the Tukey fence (Q1 - 1.5 IQR,
the conventional outlier fence), bins of a tenth of the IQR smoothed by
[1, 2, 1] / 4, and a dip of :data:`DIP` times and three Poisson standard
deviations between the mode's peak and the fence. It fires on every collection
with pores that was tried and on MetalDAM (cracks), and on none of 39 others
(docs/method.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: the channels of the feature stack after the NMF features (no NMF feature): the level the test
#: reads and the level each pixel is decided on
VOID_LEVEL, VOID_PIXEL = "void_level", "void_pixel"
CHANNELS = (VOID_LEVEL, VOID_PIXEL)
#: the settings the level reads
PARAMS = ("void_class", "blur_sigmas", "truncate")
#: the Gaussian sigma of the level each pixel is decided on: half a pixel takes out single-pixel
#: detector noise and moves no edge by a pixel. Measured against 0, 1 and 2 (void-decision): mean IoU
#: within 0.005 of the unsmoothed decision on three pores collections and 0.388 against 0.378 on
#: MetalDAM, with 2.6 times fewer void pixels in its 26 images without voids (0.101 % against
#: 0.264 %); at 1 pixel pores lose 0.03-0.04
PIXEL_SIGMA = 0.5
#: the void plane's white end: at most this percentile of each image (the project's robust range, as
#: ``model.SCALE_PERCENTILES``), so a few hot or saturated pixels do not press the whole image
#: towards black; its black end is the features' own (the darkest pixel by default), where a void is
HIGH_PERCENTILE = 99.5
#: the name a void phase gets until people name it
VOID_NAME = "voids (darkest mode)"
#: a dark mode needs the smoothed counts to fall by this factor between its peak and the dip
DIP = 1.5
#: and by this many Poisson standard deviations of the peak's count (two stray pixels are no mode)
DIP_SIGMAS = 3.0


def enabled(settings) -> bool:
    """Whether the feature stack carries the void level (``void_class`` is not 'off')."""
    return settings.get("void_class", "off") != "off"


def plane_percentiles(settings) -> tuple[float, float]:
    """The percentiles of each image mapped to 0 and 1 in the void plane: the darkest pixel, and the
    features' high end but at most :data:`HIGH_PERCENTILE`. A void mode may hold less than a percent
    of the pixels, so a robust low end that clips the darkest ones would erase it."""
    hi = float(settings["normalize_percentiles"][1])
    return 0.0, min(hi, HIGH_PERCENTILE)


def level_sigma(settings) -> float:
    """The Gaussian sigma of the level: the smaller blur sigma."""
    return float(min(settings["blur_sigmas"]))


def level_radius(settings) -> int:
    """Rows/columns of neighbours one level pixel depends on (scipy's Gaussian radius)."""
    return int(settings["truncate"] * max(level_sigma(settings), PIXEL_SIGMA) + 0.5)


def level_block(plane: np.ndarray, params: dict) -> np.ndarray:
    """The void channels ``(y, x, 2)`` float32 of a (haloed) block of the void plane (the image before
    CLAHE normalised at :func:`plane_percentiles`): smoothed at :func:`level_sigma` (the test's) and at
    :data:`PIXEL_SIGMA` (each pixel's)."""
    img = np.asarray(plane, dtype=np.float32)
    return np.stack([ndi.gaussian_filter(img, sigma, mode="reflect", truncate=params["truncate"])
                     for sigma in (level_sigma(params), PIXEL_SIGMA)], axis=-1).astype(np.float32, copy=False)


def dark_mode_threshold(values: np.ndarray, dip: float = DIP) -> float | None:
    """The level below which the darkest pixels form a mode of their own, or None.

    Parameters
    ----------
    values : ndarray, 1-D
        Levels of a pixel sample of the whole collection.
    dip : float
        How many times the mode's peak count must exceed the lowest count
        between it and the fence.

    Returns
    -------
    float or None
        The histogram of the values below the first quartile, in bins of a
        tenth of the interquartile range smoothed by [1, 2, 1] / 4: the
        darkest bin below the Tukey fence ``Q1 - 1.5 IQR`` whose count is
        ``dip`` times, and :data:`DIP_SIGMAS` Poisson standard deviations
        above, the lowest count between it and the fence is a mode, and the
        centre of that lowest bin (the dip) is the threshold. None when no
        bin qualifies.
    """
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    q1, q3 = np.percentile(values, [25, 75])
    iqr = q3 - q1
    fence = q1 - 1.5 * iqr
    low = values[values < q1]
    if iqr <= 0 or low.size == 0 or low.min() >= fence:
        return None
    counts, edges = np.histogram(low, bins=np.arange(low.min(), q1 + iqr / 10, iqr / 10))
    counts = np.convolve(np.pad(counts.astype(float), 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    centres = 0.5 * (edges[1:] + edges[:-1])
    below = np.flatnonzero(centres < fence)
    for peak in below:
        between = np.arange(peak, below[-1] + 1)
        valley = between[np.argmin(counts[between])]
        if (valley > peak and counts[peak] >= dip * max(counts[valley], 1e-12)
                and counts[peak] - counts[valley] >= DIP_SIGMAS * np.sqrt(counts[peak])):
            return float(centres[valley])
    return None


def fingerprint(X_void: np.ndarray, n_features: int) -> np.ndarray:
    """The void phase's H row: the unit-norm mean of its pixels' scaled features (what a void looks like).

    It labels nothing (the level does) and explains no pixel in the solve; it is
    what the fingerprint charts show for the phase.
    """
    row = np.asarray(X_void, np.float64).mean(axis=0) if len(X_void) else np.ones(n_features)
    row = np.clip(row, 0.0, None)
    norm = np.linalg.norm(row)
    return row / norm if norm > 0 else np.full(n_features, 1.0 / np.sqrt(n_features))
