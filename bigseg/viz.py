"""Colour label maps (RGB) and viridis activation panels (palette indices)."""

from __future__ import annotations

import numpy as np

#: distinct colours for up to 12 phases (ColorBrewer "Paired"-like, then tab10-like)
PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [255, 255, 153], [0, 0, 0],
], dtype=np.uint8)

# matplotlib's viridis (CC0) at 11 evenly spaced stops; linear interpolation between
# them differs from the full 256-entry table by under 2 levels per channel
_VIRIDIS_STOPS = np.array([
    [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
    [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
], dtype=np.float64)


def viridis_lut(n: int) -> np.ndarray:
    """``n`` viridis colours, dark blue to yellow, as uint8 RGB."""
    t = np.linspace(0, 1, n)
    xs = np.linspace(0, 1, len(_VIRIDIS_STOPS))
    return np.stack([np.interp(t, xs, _VIRIDIS_STOPS[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


#: palette of the activation panels: 255 viridis levels, then white for the gaps
PANEL_PALETTE = np.concatenate([viridis_lut(255), [[255, 255, 255]]]).astype(np.uint8)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on workers or CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig, path, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    from .io import atomic_write_bytes

    atomic_write_bytes(path, figure_png(fig, dpi))


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map (y, x) -> RGB (y, x, 3)."""
    return PALETTE[np.asarray(labels) % len(PALETTE)]


def activation_panels(acts: np.ndarray, gap: int = 4) -> np.ndarray:
    """Activations (k, y, x) -> one index image of k panels side by side, for :data:`PANEL_PALETTE`.

    All panels share one scale (0 to the 99.5th percentile over every component)
    so a brighter panel means a stronger component. Indices 0-254 are viridis
    levels and 255 the white gaps: written as a palette PNG, the panels encode
    in a third of the time of RGB and show the same colours.
    """
    acts = np.asarray(acts, dtype=np.float32)
    k, h, w = acts.shape
    top = float(np.percentile(acts, 99.5)) if acts.size else 0.0
    scaled = np.clip(acts / top, 0, 1) if top > 0 else np.zeros_like(acts)
    idx = (scaled * 254).round().astype(np.uint8)
    out = np.full((h, k * w + (k - 1) * gap), 255, np.uint8)
    for i in range(k):
        out[:, i * (w + gap): i * (w + gap) + w] = idx[i]
    return out
