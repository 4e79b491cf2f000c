"""Segment with H fixed: per-tile W solve (exact NNLS), argmax, outputs of one image.

The solve is a ``map_blocks`` over the feature chunks (no halo: each pixel is
independent once its features exist), so tiles run in parallel anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import io, nnls, viz
from .diagnose import speckle_rate
from .features import map_haloed
from .model import apply_scaling

PANEL_MAX_SIDE = 1024


def neighbour_mean(W: np.ndarray) -> np.ndarray:
    """Mean of each pixel's four neighbours in a (y, x, k) array; a missing neighbour
    at the border counts as the pixel itself."""
    P = np.pad(W, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return 0.25 * (P[:-2, 1:-1] + P[2:, 1:-1] + P[1:-1, :-2] + P[1:-1, 2:])


def spatial_block(feats: np.ndarray, H, lo, hi, l1: float = 0.0, l2: float = 0.0,
                  weight: float = 0.0, sweeps: int = 0) -> np.ndarray:
    """Activations (y, x, k) of a feature block with neighbouring pixels coupled.

    Minimises ``sum_i 0.5 ||v_i - w_i H||^2 + (weight / 2) sum_{i~j} ||w_i - w_j||^2``
    (4-neighbour grid graph, i.e. a graph-Laplacian penalty) with ``w >= 0``, by
    ``sweeps`` Jacobi sweeps from the pixel-wise solution: each sweep solves every
    pixel exactly with its neighbours held, which is a pull of strength
    ``4 * weight`` towards their mean. Each sweep reaches one pixel further, so a
    halo of ``sweeps`` pixels makes tiles agree exactly with the whole image.

    With numba, the solve and the sweeps run in one compiled kernel
    (``nnls.coupled_solve``) that gives the numbers of the loop below bit for
    bit; without it, the loop runs on the numpy solve.
    """
    shape = feats.shape
    X = apply_scaling(feats.reshape(-1, shape[-1]), lo, hi)
    if sweeps > 0 and weight > 0 and X.shape[0]:
        W = nnls.coupled_solve(X, H, shape[0], l1, l2, 4.0 * weight, sweeps)
        if W is not None:
            return W.reshape(shape[:-1] + (H.shape[0],))
    return _spatial_loop(X, shape, H, l1, l2, weight, sweeps)


def _spatial_loop(X, shape, H, l1, l2, weight, sweeps) -> np.ndarray:
    """:func:`spatial_block` on scaled pixels ``X`` as a loop of :func:`nnls.solve` calls: the definition
    the compiled ``nnls.coupled_solve`` reproduces bit for bit, and the path without numba."""
    W, support = nnls.solve(X, H, l1, l2, return_support=True)
    if sweeps <= 0 or weight <= 0:
        return W.reshape(shape[:-1] + (H.shape[0],))
    mu = 4.0 * weight
    solvers = nnls.subset_solvers(H, l1, l2 + mu)
    grid = W.reshape(shape[:-1] + (H.shape[0],))
    for _ in range(sweeps):
        pull = mu * neighbour_mean(grid).reshape(-1, H.shape[0]).astype(np.float64)
        W, support = nnls.solve(X, H, l1, l2 + mu, solvers, offset=pull, hint=support, return_support=True)
        grid = W.reshape(grid.shape)
    return grid


def activations_graph(feats, H, lo, hi, l1: float = 0.0, l2: float = 0.0, weight: float = 0.0, sweeps: int = 0):
    """Lazy activations ``(y, x, k)`` of a lazy feature stack ``(y, x, f)``."""
    depth = int(sweeps) if weight > 0 else 0
    return map_haloed(spatial_block, feats, depth, H.shape[0], name="bigseg-activations",
                      H=np.asarray(H), lo=np.asarray(lo), hi=np.asarray(hi), l1=float(l1), l2=float(l2),
                      weight=float(weight), sweeps=depth)


def _linear_weights(n_in: int, n_out: int):
    """Source indices and weights of linear interpolation with pixel centres aligned."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resample_linear(stack: np.ndarray, shape) -> np.ndarray:
    """Bilinear resize of the last two axes of ``stack`` to ``shape`` (separable, pixel-centre aligned)."""
    stack = np.asarray(stack, dtype=np.float32)
    if stack.shape[-2:] == tuple(shape):
        return stack
    lo, hi, w = _linear_weights(stack.shape[-2], shape[0])
    rows = stack[..., lo, :] * (1 - w)[:, None] + stack[..., hi, :] * w[:, None]
    lo, hi, w = _linear_weights(stack.shape[-1], shape[1])
    return rows[..., lo] * (1 - w) + rows[..., hi] * w


def labels_at(acts_kyx: np.ndarray, shape) -> np.ndarray:
    """Label map at ``shape``: activations resampled bilinearly, then argmax.

    Interpolating the activations (not the labels) gives phase boundaries at
    the native resolution instead of blocky upsampled ones.

    With numba, one compiled pass (``_labels_kernel``) interpolates a row at a
    time and takes the argmax of each pixel as it goes, never holding the
    full-size float stack: the labels of ``argmax(resample_linear(...))``
    exactly, several times faster.
    """
    shape = tuple(int(s) for s in shape)
    acts_kyx = np.asarray(acts_kyx)
    kernel = nnls.compiled(_labels_kernel)
    if (kernel is None or acts_kyx.ndim != 3 or acts_kyx.shape[1:] == shape or 0 in acts_kyx.shape
            or 0 in shape or acts_kyx.shape[0] > 256):        # (more than 256: uint8 wraps, as it did)
        return np.argmax(resample_linear(acts_kyx, shape), axis=0).astype(np.uint8)
    out = np.empty(shape, np.uint8)
    ylo, yhi, wy = _linear_weights(acts_kyx.shape[1], shape[0])
    xlo, xhi, wx = _linear_weights(acts_kyx.shape[2], shape[1])
    # the complements as resample_linear computes them: float32 1 - w
    kernel(np.ascontiguousarray(acts_kyx, dtype=np.float32), ylo, yhi, 1 - wy, wy, xlo, xhi, 1 - wx, wx, out)
    return out


def _labels_kernel(acts, ylo, yhi, vy, wy, xlo, xhi, vx, wx, out):  # pragma: no cover - compiled by numba
    """``out = argmax(resample_linear(acts))`` in float32 with the same operations in the same order:
    each output row interpolated between two input rows (``a * (1 - w) + b * w``), then each pixel
    between two columns, and the first largest component wins (a NaN first, as ``np.argmax`` has it)."""
    k, _, w = acts.shape
    rows = np.empty((k, w), np.float32)
    for y in range(out.shape[0]):
        y0, y1, a, b = ylo[y], yhi[y], vy[y], wy[y]
        for c in range(k):
            for x in range(w):
                rows[c, x] = acts[c, y0, x] * a + acts[c, y1, x] * b
        for x in range(out.shape[1]):
            x0, x1, a, b = xlo[x], xhi[x], vx[x], wx[x]
            best = rows[0, x0] * a + rows[0, x1] * b
            arg = 0
            if best == best:
                for c in range(1, k):
                    v = rows[c, x0] * a + rows[c, x1] * b
                    if v > best or v != v:
                        best = v
                        arg = c
                        if v != v:
                            break
            out[y, x] = arg


def _panel_view(acts_kyx: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(acts_kyx.shape[1:]) / PANEL_MAX_SIDE)))
    return acts_kyx[:, ::step, ::step]


def _names(names, k: int) -> list[str]:
    return list(names) if names is not None else [f"phase {i}" for i in range(k)]


def write_overlay(out_dir, image_id: str, grey, labels, names) -> None:
    """``overlay/<id>.png``: the micrograph (8-bit) tinted and outlined by phase, with a legend.

    ``grey`` and ``labels`` are arrays or zarr arrays at the image's own size;
    an image over ``viz.OVERLAY_MAX_SIDE`` on a side is read through a strided
    (nearest) view, so a montage's overlay is bounded whatever its size.
    """
    step = viz.overlay_step(labels.shape)
    view = (slice(None, None, step), slice(None, None, step))
    picture = viz.overlay_picture(viz.to_uint8(np.asarray(grey[view])), np.asarray(labels[view]))
    io.atomic_write_bytes(Path(out_dir) / "overlay" / f"{image_id}.png", viz.overlay_png(picture, names))


def export_image(acts_kyx: np.ndarray, native_shape, out_dir, image_id: str, labels_zarr=None,
                 phases=None, names=None, grey=None) -> dict:
    """Write labels/, color/, activations/, overlay/ PNGs (and the OME label array) of one image.

    ``names`` are the phases' names for the panel titles and the legend
    (default ``phase i``); the overlay needs ``grey``, the stored image at
    ``native_shape`` (array or zarr array), and is skipped without it.

    ``phases`` are the components that label pixels (default: all); the others
    live on boundaries, so each pixel they would win goes to the phase with the
    largest activation there. Returns the phase fractions, pixel count, speckle
    rate and the share of pixels a boundary component would have won. Pure
    apart from the files it writes, so it runs on any worker; every file is
    written atomically.
    """
    out_dir = Path(out_dir)
    phases = list(range(acts_kyx.shape[0])) if phases is None else list(phases)
    boundary = np.setdiff1d(np.arange(acts_kyx.shape[0]), phases)
    moved = float(np.isin(acts_kyx.argmax(axis=0), boundary).mean()) if boundary.size else 0.0
    acts_kyx = acts_kyx[phases]
    k = acts_kyx.shape[0]
    labels = labels_at(acts_kyx, native_shape)
    if labels_zarr is not None:
        labels_zarr[...] = labels
    io.write_png(out_dir / "labels" / f"{image_id}.png", labels)
    io.write_palette_png(out_dir / "color" / f"{image_id}.png", labels % len(viz.PALETTE), viz.PALETTE)
    names = _names(names, k)
    io.atomic_write_bytes(out_dir / "activations" / f"{image_id}.png",
                          viz.titled_panels_png(_panel_view(acts_kyx), names))
    if grey is not None:
        write_overlay(out_dir, image_id, grey, labels, names)
    counts = np.bincount(labels.ravel(), minlength=k)[:k]
    return {"fractions": {f"phase_{i}": float(c) / labels.size for i, c in enumerate(counts)},
            "pixels": int(labels.size), "speckle": speckle_rate(labels), "transition_share": round(moved, 6)}


def export_large(labels_zarr, acts_zarr, out_dir, image_id: str, phases, tile: int = 256, names=None,
                 grey=None) -> dict:
    """Exports of an image too large to hold, read back from the store a band or a tile at a time.

    ``labels/<id>.tif`` and ``color/<id>.tif`` are tiled TIFFs; the activation
    panels come from a strided view (at most ``PANEL_MAX_SIDE`` on a side), and
    so does the overlay (at most ``viz.OVERLAY_MAX_SIDE``; needs ``grey``, the
    stored image as a zarr array).
    Returns the same fractions, pixel count and speckle rate as :func:`export_image`.
    """
    out_dir = Path(out_dir)
    h, w = labels_zarr.shape
    k = len(phases)
    counts = np.zeros(k, np.int64)
    changes = 0
    band = labels_zarr.chunks[0]
    for r0 in range(0, h, band):
        top = max(r0 - 1, 0)          # the row above joins the band, so pairs across the seam count once
        lab = np.asarray(labels_zarr[top:r0 + band])
        own = lab[r0 - top:]
        counts += np.bincount(own.ravel(), minlength=k)[:k]
        changes += int((own[:, 1:] != own[:, :-1]).sum() + (lab[1:] != lab[:-1]).sum())
    pairs = h * (w - 1) + (h - 1) * w

    def tiles(colour: bool):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                t = np.asarray(labels_zarr[y:y + tile, x:x + tile])
                yield viz.colorize(t) if colour else t

    io.write_tiled_tiff(out_dir / "labels" / f"{image_id}.tif", tiles(False), (h, w), np.uint8, tile)
    io.write_tiled_tiff(out_dir / "color" / f"{image_id}.tif", tiles(True), (h, w, 3), np.uint8, tile)
    step = max(1, int(np.ceil(max(h, w) / PANEL_MAX_SIDE)))
    names = _names(names, k)
    io.atomic_write_bytes(out_dir / "activations" / f"{image_id}.png",
                          viz.titled_panels_png(np.asarray(acts_zarr[:, ::step, ::step])[list(phases)], names))
    if grey is not None:
        write_overlay(out_dir, image_id, grey, labels_zarr, names)
    total = h * w
    return {"fractions": {f"phase_{i}": float(c) / total for i, c in enumerate(counts)},
            "pixels": int(total), "speckle": float(changes / pairs) if pairs else 0.0}
