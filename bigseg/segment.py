"""Segment with H fixed: per-tile W solve (exact NNLS), argmax, outputs of one image.

The solve is a ``map_blocks`` over the feature chunks (no halo: each pixel is
independent once its features exist), so tiles run in parallel anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import io, viz
from .model import transform_block

PANEL_MAX_SIDE = 1024


def activations_graph(feats, H, lo, hi, l1: float = 0.0, l2: float = 0.0):
    """Lazy activations ``(y, x, k)`` of a lazy feature stack ``(y, x, f)``."""
    import dask.array as da

    if len(feats.chunks[2]) != 1:
        feats = feats.rechunk({2: -1})
    k = H.shape[0]
    return da.map_blocks(transform_block, feats, H=np.asarray(H), lo=np.asarray(lo), hi=np.asarray(hi),
                         l1=float(l1), l2=float(l2), chunks=feats.chunks[:2] + ((k,),), dtype=np.float32,
                         meta=np.empty((0, 0, 0), np.float32), name="bigseg-activations")


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
    """
    return np.argmax(resample_linear(acts_kyx, shape), axis=0).astype(np.uint8)


def _panel_view(acts_kyx: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(acts_kyx.shape[1:]) / PANEL_MAX_SIDE)))
    return acts_kyx[:, ::step, ::step]


def export_image(acts_kyx: np.ndarray, native_shape, out_dir, image_id: str, labels_zarr=None) -> dict:
    """Write labels/, color/, activations/ PNGs (and the OME label array) of one image.

    Returns the phase fractions. Pure apart from the files it writes, so it runs
    on any worker; every file is written atomically.
    """
    out_dir = Path(out_dir)
    k = acts_kyx.shape[0]
    labels = labels_at(acts_kyx, native_shape)
    if labels_zarr is not None:
        labels_zarr[...] = labels
    io.write_png(out_dir / "labels" / f"{image_id}.png", labels)
    io.write_png(out_dir / "color" / f"{image_id}.png", viz.colorize(labels))
    io.write_png(out_dir / "activations" / f"{image_id}.png", viz.activation_panels(_panel_view(acts_kyx)))
    counts = np.bincount(labels.ravel(), minlength=k)[:k]
    return {f"phase_{i}": float(c) / labels.size for i, c in enumerate(counts)}
