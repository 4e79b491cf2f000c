"""The per-pixel feature bank as one fused ``map_overlap`` kernel with exact halos.

Like dask-image, each filter is a scipy.ndimage call and the halo is derived
from the filter sizes; unlike calling dask-image once per feature, all features
of a block come from one halo exchange. ``scripts/bench_features.py`` measures
the two side by side (1.6-1.7x in favour of the fused kernel on a 1024x1024 image,
256-pixel chunks, 2 cores).

Layout of the result: ``(y, x, feature)``, float32, so a block reshapes to the
``(pixels, features)`` matrix NMF wants without a copy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .config import feature_kinds


class ImageTooSmallError(ValueError):
    """The image is smaller than the filter halo, so its features are undefined."""


def feature_names(settings: dict) -> list[str]:
    """Names of the feature channels, in order."""
    names = []
    for kind in feature_kinds(settings):
        if kind == "blur":
            names += [f"blur_s{s:g}" for s in settings["blur_sigmas"]]
        elif kind == "hessian":
            names += [f"hessian_{e}_s{s:g}" for s in settings["hessian_sigmas"] for e in ("max", "min")]
        elif kind == "structure":
            d, i = settings["structure_sigmas"]
            names += [f"structure_{e}_s{d:g}_{i:g}" for e in ("max", "min")]
        elif kind == "local_std":
            names += [f"local_std_s{s:g}" for s in settings["local_std_sigmas"]]
        elif kind in ("closing", "opening"):
            names += [f"{kind}_w{s}" for s in settings[f"{kind}_sizes"]]
        elif kind == "gradient":
            names.append(f"gradient_s{settings['gradient_sigma']:g}")
        elif kind == "laplacian":
            names.append(f"laplacian_s{settings['laplacian_sigma']:g}")
        elif kind == "variance":
            names.append(f"variance_w{settings['variance_size']}")
        else:
            names.append(kind)
    return names


def _radius(sigma: float, truncate: float) -> int:
    # scipy.ndimage's own kernel radius for a Gaussian (and its derivatives)
    return int(truncate * float(sigma) + 0.5)


def halo(settings: dict) -> int:
    """Rows/columns of neighbours one output pixel depends on."""
    t = settings["truncate"]
    r = [0]
    kinds = feature_kinds(settings)
    if "gradient" in kinds:
        r.append(_radius(settings["gradient_sigma"], t))
    if "laplacian" in kinds:
        r.append(_radius(settings["laplacian_sigma"], t))
    if "variance" in kinds:
        r.append(settings["variance_size"] // 2)
    if "blur" in kinds:
        r += [_radius(s, t) for s in settings["blur_sigmas"]]
    if "hessian" in kinds:
        r += [_radius(s, t) for s in settings["hessian_sigmas"]]
    if "structure" in kinds:
        d, i = settings["structure_sigmas"]
        r.append(_radius(d, t) + _radius(i, t))      # smoothing of a gradient product
    if "local_std" in kinds:
        r += [_radius(s, t) for s in settings["local_std_sigmas"]]
    for kind in ("closing", "opening"):
        if kind in kinds:
            # a dilation then an erosion (or the reverse), each reaching half the window
            r += [2 * (s // 2) for s in settings[f"{kind}_sizes"]]
    return max(r)


def _eig2(a, b, c):
    """Eigenvalues (larger, smaller) of the symmetric 2x2 matrices [[a, b], [b, c]], elementwise."""
    mean = 0.5 * (a + c)
    root = np.sqrt(0.25 * (a - c) ** 2 + b * b)
    return mean + root, mean - root


def feature_block(block: np.ndarray, params: dict) -> np.ndarray:
    """All features of one (haloed) 2-D block, stacked on a last axis.

    ``params`` holds only plain values (the feature settings), so the function
    is pure and ships to any worker.
    """
    img = np.asarray(block, dtype=np.float32)
    t = params["truncate"]
    out = []
    for kind in feature_kinds(params):
        if kind == "intensity":
            out.append(img)
        elif kind == "gradient":
            out.append(ndi.gaussian_gradient_magnitude(img, params["gradient_sigma"], mode="reflect", truncate=t))
        elif kind == "laplacian":
            out.append(ndi.gaussian_laplace(img, params["laplacian_sigma"], mode="reflect", truncate=t))
        elif kind == "variance":
            size = params["variance_size"]
            mean = ndi.uniform_filter(img, size, mode="reflect")
            mean_sq = ndi.uniform_filter(img * img, size, mode="reflect")
            out.append(np.maximum(mean_sq - mean * mean, 0.0))
        elif kind == "blur":
            out += [ndi.gaussian_filter(img, s, mode="reflect", truncate=t) for s in params["blur_sigmas"]]
        elif kind == "hessian":
            for s in params["hessian_sigmas"]:
                # scale-normalised (sigma^2) second derivatives, so scales compare
                d = [s * s * ndi.gaussian_filter(img, s, order=o, mode="reflect", truncate=t)
                     for o in ((2, 0), (1, 1), (0, 2))]
                out += list(_eig2(*d))
        elif kind == "structure":
            d, i = params["structure_sigmas"]
            gy = ndi.gaussian_filter(img, d, order=(1, 0), mode="reflect", truncate=t)
            gx = ndi.gaussian_filter(img, d, order=(0, 1), mode="reflect", truncate=t)
            smooth = [ndi.gaussian_filter(p, i, mode="reflect", truncate=t) for p in (gy * gy, gy * gx, gx * gx)]
            out += [np.maximum(e, 0.0) for e in _eig2(*smooth)]
        elif kind == "local_std":
            for s in params["local_std_sigmas"]:
                mean = ndi.gaussian_filter(img, s, mode="reflect", truncate=t)
                mean_sq = ndi.gaussian_filter(img * img, s, mode="reflect", truncate=t)
                out.append(np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)))
        elif kind in ("closing", "opening"):
            op = ndi.grey_closing if kind == "closing" else ndi.grey_opening
            out += [op(img, size=(s, s), mode="reflect") for s in params[f"{kind}_sizes"]]
        else:  # config validation makes this unreachable for user input
            raise ValueError(f"unknown feature {kind!r}")
    return np.stack(out, axis=-1).astype(np.float32, copy=False)


def feature_params(settings: dict) -> dict:
    keys = ("features", "gradient_sigma", "laplacian_sigma", "variance_size", "blur_sigmas", "hessian_sigmas",
            "structure_sigmas", "local_std_sigmas", "closing_sizes", "opening_sizes", "truncate")
    return {k: settings[k] for k in keys}


#: ``chunk_size: auto``: the image's longer side rounded up to a step, at most the cap
AUTO_CHUNK_MAX = 1024
AUTO_CHUNK_STEP = 256
#: the smallest side ``chunk_memory`` may shrink an auto chunk to
AUTO_CHUNK_MIN = 128
#: peak memory a segment task holds per pixel of its haloed chunk (features, activations and their
#: temporaries); measured on a 6000 x 6000 tiled TIFF: 320 bytes for the first thread, 180 for the second
CHUNK_BYTES_PER_PIXEL = 400


def segment_halo(settings: dict) -> int:
    """Rows/columns a labelled pixel depends on: the features' halo plus one per coupled sweep."""
    sweeps = int(settings.get("spatial_sweeps", 0)) if settings.get("spatial_weight", 0) > 0 else 0
    return halo(settings) + sweeps


def chunk_side(shape, settings: dict) -> int:
    """The chunk side for an image of ``shape``.

    The ``chunk_size`` setting, or for ``auto`` the longer side rounded up to
    ``AUTO_CHUNK_STEP``, at most ``AUTO_CHUNK_MAX``, and shrunk in steps of
    ``AUTO_CHUNK_MIN`` until a task's haloed chunk fits ``chunk_memory``
    (once the runner has resolved it to bytes). Halos are exact, so the chunk
    side changes speed and memory, never the result.
    """
    value = settings["chunk_size"]
    if value != "auto":
        return int(value)
    side = min(AUTO_CHUNK_MAX, -(-max(int(s) for s in shape[:2]) // AUTO_CHUNK_STEP) * AUTO_CHUNK_STEP)
    budget = settings.get("chunk_memory", "auto")
    if budget != "auto":
        depth = segment_halo(settings)
        while side > AUTO_CHUNK_MIN and (side + 2 * depth) ** 2 * CHUNK_BYTES_PER_PIXEL > budget:
            side = max(AUTO_CHUNK_MIN, side - AUTO_CHUNK_MIN)
    return side


def check_size(shape, settings: dict, name: str = "image") -> None:
    depth = halo(settings)
    if min(shape) <= depth:
        raise ImageTooSmallError(
            f"{name}: {shape[0]}x{shape[1]} pixels is smaller than the feature halo of {depth} pixels "
            f"(from the largest filter); use a larger image, resize, or smaller sigmas")


def compute_features(image, settings: dict, name: str = "image"):
    """Lazy feature stack ``(y, x, feature)`` of a 2-D dask or numpy image.

    Chunk edges are interior seams: each block is extended by the halo before
    filtering and trimmed after, so the chunked result equals the unchunked one.
    At the image border scipy's own ``reflect`` mode applies (``boundary='none'``),
    exactly as in one whole-image call.
    """
    import dask.array as da

    if not isinstance(image, da.Array):
        image = np.asarray(image)
        image = da.from_array(image, chunks=chunk_side(image.shape, settings))
    check_size(image.shape, settings, name)
    depth = halo(settings)
    # a chunk thinner than the halo would need neighbours' neighbours
    if depth and min(min(c) for c in image.chunks) < depth:
        image = image.rechunk(tuple(_merge_thin(c, depth) for c in image.chunks))
    nfeat = len(feature_names(settings))
    return map_haloed(feature_block, image.astype(np.float32), depth, nfeat, name="bigseg-features",
                      params=feature_params(settings))


def map_haloed(func, arr, depth: int, out_channels: int, name: str, **kwargs):
    """Apply ``func`` to every block of ``arr`` grown by ``depth`` pixels in y and x, then trim.

    ``arr`` is ``(y, x)`` or ``(y, x, c)`` (one chunk along c); ``func`` returns
    ``(y, x, out_channels)`` for its haloed block. Interior seams get real
    neighbours; the image border gets none (``boundary='none'``), so ``func``
    sees exactly what a whole-image call sees there. Written out as overlap ->
    map_blocks -> trim because ``map_overlap``'s own trim does not follow a
    channel axis that appears or changes length.
    """
    import dask.array as da
    from dask.base import tokenize

    # map_blocks takes ``name`` as the whole key: without a token, two images'
    # blocks would share keys in one graph and overwrite each other
    name = f"{name}-{tokenize(arr, func, depth, out_channels, kwargs)}"
    spatial = {0: depth, 1: depth}
    if arr.ndim == 3:
        arr = arr.rechunk({2: -1})
        spatial[2] = 0
    padded = da.overlap.overlap(arr, depth=spatial, boundary="none") if depth else arr
    out = padded.map_blocks(func, new_axis=2 if arr.ndim == 2 else None,
                            chunks=padded.chunks[:2] + ((out_channels,),), dtype=np.float32,
                            meta=np.empty((0, 0, 0), np.float32), name=name, **kwargs)
    if not depth:
        return out
    return da.overlap.trim_internal(out, {0: depth, 1: depth, 2: 0}, boundary="none")


def _merge_thin(chunks, minimum):
    """Merge chunks along one axis until each is at least ``minimum`` long."""
    out: list[int] = []
    for c in chunks:
        if out and out[-1] < minimum:
            out[-1] += c
        else:
            out.append(c)
    if len(out) > 1 and out[-1] < minimum:
        last = out.pop()
        out[-1] += last
    return tuple(out)


def suggested_chunk(shape, nfeatures: int, target_bytes: int = 16 * 2**20) -> int:
    """A square chunk side whose float32 feature block is about ``target_bytes``."""
    side = int(math.sqrt(target_bytes / (4 * max(nfeatures, 1))))
    return max(64, min(side, max(shape)))
