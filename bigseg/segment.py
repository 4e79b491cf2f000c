"""Segment with H fixed: the per-tile kernels. The W solve (exact NNLS) with spatial coupling, the
memberships, and the labels at the image's own size (activations resampled, then argmax).

The solve maps over the feature chunks grown by a halo of one pixel per
sweep (``features.map_haloed``), so tiles run in parallel anywhere and agree
exactly with the whole image. What is written of one image (PNGs, tables) is :mod:`bigseg.export`.
"""

from __future__ import annotations

import numpy as np

from . import nnls
from .features import map_haloed
from .model import apply_scaling


def neighbour_mean(W: np.ndarray) -> np.ndarray:
    """Mean of each pixel's four neighbours in a (y, x, k) array; a missing neighbour
    at the border counts as the pixel itself."""
    P = np.pad(W, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return 0.25 * (P[:-2, 1:-1] + P[2:, 1:-1] + P[1:-1, :-2] + P[1:-1, 2:])


def spatial_block(feats: np.ndarray, H, lo, hi, l1: float = 0.0, l2: float = 0.0,
                  weight: float = 0.0, sweeps: int = 0, void_below: float | None = None) -> np.ndarray:
    """Activations (y, x, k) of a feature stack block with neighbouring pixels coupled.

    The block's first ``H.shape[1]`` channels are the NMF features; channels
    after them (the void level, ``features.stack_names``) are no part of the
    solve. With ``void_below`` (a model with a void phase, ``Model.void_below``),
    component 0 is the void phase: its activation is 1 where the pixel's own
    level (``void_pixel``) is below ``void_below`` and 0 elsewhere,
    and the other components are solved as below without it.

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
    H = np.asarray(H)
    n = H.shape[1]
    if void_below is not None:
        void = (feats[..., n + 1] < np.float32(void_below)).astype(np.float32)[..., None]
        rest = spatial_block(feats, H[1:], lo, hi, l1, l2, weight, sweeps)
        return np.concatenate([void, rest.astype(np.float32, copy=False)], axis=-1)
    if feats.shape[-1] != n:
        feats = feats[..., :n]
    shape = feats.shape
    X = apply_scaling(feats.reshape(-1, shape[-1]), lo[:n], hi[:n])
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


def activations_graph(feats, H, lo, hi, l1: float = 0.0, l2: float = 0.0, weight: float = 0.0, sweeps: int = 0,
                      void_below: float | None = None):
    """Lazy activations ``(y, x, k)`` of a lazy feature stack ``(y, x, f)`` (:func:`spatial_block`)."""
    depth = int(sweeps) if weight > 0 else 0
    return map_haloed(spatial_block, feats, depth, H.shape[0], name="bigseg-activations",
                      H=np.asarray(H), lo=np.asarray(lo), hi=np.asarray(hi), l1=float(l1), l2=float(l2),
                      weight=float(weight), sweeps=depth,
                      void_below=None if void_below is None else float(void_below))


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
