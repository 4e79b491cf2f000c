"""The per-pixel feature bank as one fused ``map_overlap`` kernel with exact halos.

Like dask-image, each filter is a scipy.ndimage call and the halo is derived
from the filter sizes; unlike calling dask-image once per feature, all features
of a block come from one halo exchange. ``scripts/bench_features.py`` measures
the two side by side (1.6-1.7x in favour of the fused kernel on a 1024x1024 image,
256-pixel chunks, 2 cores).

Each kind of feature is one :class:`FeatureKind` in :data:`FEATURES` (the
settings it reads, its channel names, its halo, its kernel); adding a kind is
an entry there, its options in ``config.OPTIONS`` and its name in
``config.FEATURE_NAMES``, and nothing else.

Layout of the result: ``(y, x, feature)``, float32, so a block reshapes to the
``(pixels, features)`` matrix NMF wants without a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from . import voids
from .config import FEATURE_NAMES, OPTIONS, feature_kinds


class ImageTooSmallError(ValueError):
    """The image is smaller than the filter halo, so its features are undefined."""


@dataclass(frozen=True)
class FeatureKind:
    """One kind of feature: the settings it reads, its channels, its halo and its kernel.

    Every function of a kind receives ``p``, a dict of exactly the settings in
    ``params``, so a kind that reads a setting it does not declare fails at
    once instead of silently escaping the model-bound check.

    Attributes
    ----------
    name : str
        The kind as the ``features`` setting lists it.
    params : tuple of str
        The settings it reads.
    channels : callable
        ``channels(p) -> list of str``: names of its channels, in the order ``kernel`` yields them.
    radius : callable
        ``radius(p) -> int``: rows/columns of neighbours one output pixel depends on.
    kernel : callable
        ``kernel(img, p) -> list of ndarray``: its channels of one float32 block, each of the block's shape.
    says : {"brightness", "texture", None}
        What a phase scoring high on it is (:mod:`bigseg.phases` names phases from it); None for neither.
    word : str
        What it measures in plain words, as a metallurgist would say it ("edge strength",
        "blobs/curvature"): the start of its channels' labels (:func:`feature_label`) in
        fingerprint charts, and the words of phase names.
    """

    name: str
    params: tuple[str, ...]
    channels: Callable[[dict], list[str]]
    radius: Callable[[dict], int]
    kernel: Callable[[np.ndarray, dict], list[np.ndarray]]
    says: str | None = None
    word: str = ""

    def args(self, settings) -> dict:
        """The settings this kind reads, out of a whole settings mapping."""
        return {k: settings[k] for k in self.params}


def _radius(sigma: float, truncate: float) -> int:
    # scipy.ndimage's own kernel radius for a Gaussian (and its derivatives)
    return int(truncate * float(sigma) + 0.5)


def _eig2(a, b, c):
    """Eigenvalues (larger, smaller) of the symmetric 2x2 matrices [[a, b], [b, c]], elementwise."""
    mean = 0.5 * (a + c)
    root = np.sqrt(0.25 * (a - c) ** 2 + b * b)
    return mean + root, mean - root


def _gradient(img, p):
    return [ndi.gaussian_gradient_magnitude(img, p["gradient_sigma"], mode="reflect", truncate=p["truncate"])]


def _laplacian(img, p):
    return [ndi.gaussian_laplace(img, p["laplacian_sigma"], mode="reflect", truncate=p["truncate"])]


def _variance(img, p):
    size = p["variance_size"]
    mean = ndi.uniform_filter(img, size, mode="reflect")
    mean_sq = ndi.uniform_filter(img * img, size, mode="reflect")
    return [np.maximum(mean_sq - mean * mean, 0.0)]


def _blur(img, p):
    return [ndi.gaussian_filter(img, s, mode="reflect", truncate=p["truncate"]) for s in p["blur_sigmas"]]


def _hessian(img, p):
    out = []
    for s in p["hessian_sigmas"]:
        # scale-normalised (sigma^2) second derivatives, so scales compare
        d = [s * s * ndi.gaussian_filter(img, s, order=o, mode="reflect", truncate=p["truncate"])
             for o in ((2, 0), (1, 1), (0, 2))]
        out += list(_eig2(*d))
    return out


def _structure(img, p):
    d, i = p["structure_sigmas"]
    t = p["truncate"]
    gy = ndi.gaussian_filter(img, d, order=(1, 0), mode="reflect", truncate=t)
    gx = ndi.gaussian_filter(img, d, order=(0, 1), mode="reflect", truncate=t)
    smooth = [ndi.gaussian_filter(q, i, mode="reflect", truncate=t) for q in (gy * gy, gy * gx, gx * gx)]
    return [np.maximum(e, 0.0) for e in _eig2(*smooth)]


def _local_std(img, p):
    out = []
    for s in p["local_std_sigmas"]:
        mean = ndi.gaussian_filter(img, s, mode="reflect", truncate=p["truncate"])
        mean_sq = ndi.gaussian_filter(img * img, s, mode="reflect", truncate=p["truncate"])
        out.append(np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)))
    return out


def _granulometry(name: str, op, word: str) -> FeatureKind:
    """Grey closings or openings at several window sides (``<name>_sizes``)."""
    key = f"{name}_sizes"
    return FeatureKind(
        name, (key,),
        channels=lambda p: [f"{name}_w{s}" for s in p[key]],
        # a dilation then an erosion (or the reverse), each reaching half the window
        radius=lambda p: max(2 * (s // 2) for s in p[key]),
        kernel=lambda img, p: [op(img, size=(s, s), mode="reflect") for s in p[key]], word=word)


def _max_radius(key):
    return lambda p: max(_radius(s, p["truncate"]) for s in p[key])


#: every feature kind, in the order of ``config.FEATURE_NAMES`` (the kinds the settings allow)
FEATURES: dict[str, FeatureKind] = {k.name: k for k in (
    FeatureKind("intensity", (), channels=lambda p: ["intensity"], radius=lambda p: 0, kernel=lambda img, p: [img],
                says="brightness", word="brightness"),
    FeatureKind("gradient", ("gradient_sigma", "truncate"),
                channels=lambda p: [f"gradient_s{p['gradient_sigma']:g}"],
                radius=lambda p: _radius(p["gradient_sigma"], p["truncate"]), kernel=_gradient, says="texture",
                word="edge strength"),
    # no "says": after scaling a flat region sits mid-range, so a high Laplacian is not "rough"
    FeatureKind("laplacian", ("laplacian_sigma", "truncate"),
                channels=lambda p: [f"laplacian_s{p['laplacian_sigma']:g}"],
                radius=lambda p: _radius(p["laplacian_sigma"], p["truncate"]), kernel=_laplacian,
                word="blobs/curvature"),
    FeatureKind("variance", ("variance_size",), channels=lambda p: [f"variance_w{p['variance_size']}"],
                radius=lambda p: p["variance_size"] // 2, kernel=_variance, says="texture", word="texture"),
    FeatureKind("blur", ("blur_sigmas", "truncate"), channels=lambda p: [f"blur_s{s:g}" for s in p["blur_sigmas"]],
                radius=_max_radius("blur_sigmas"), kernel=_blur, says="brightness", word="brightness blurred"),
    FeatureKind("hessian", ("hessian_sigmas", "truncate"),
                channels=lambda p: [f"hessian_{e}_s{s:g}" for s in p["hessian_sigmas"] for e in ("max", "min")],
                radius=_max_radius("hessian_sigmas"), kernel=_hessian, word="ridges/blobs"),
    FeatureKind("structure", ("structure_sigmas", "truncate"),
                channels=lambda p: [f"structure_{e}_s{p['structure_sigmas'][0]:g}_{p['structure_sigmas'][1]:g}"
                                    for e in ("max", "min")],
                # smoothing of a gradient product: the two reaches add
                radius=lambda p: sum(_radius(s, p["truncate"]) for s in p["structure_sigmas"]),
                kernel=_structure, says="texture", word="edges and corners"),
    FeatureKind("local_std", ("local_std_sigmas", "truncate"),
                channels=lambda p: [f"local_std_s{s:g}" for s in p["local_std_sigmas"]],
                radius=_max_radius("local_std_sigmas"), kernel=_local_std, says="texture",
                word="texture"),
    _granulometry("closing", ndi.grey_closing, "size of dark regions"),
    _granulometry("opening", ndi.grey_opening, "size of bright regions"),
)}
# config lists the kinds a user may write (as it lists every other setting's choices); each needs an entry here,
# and each says in plain words what it measures
if tuple(FEATURES) != FEATURE_NAMES or not all(k.word for k in FEATURES.values()):
    raise ImportError(f"bigseg.features.FEATURES {tuple(FEATURES)} does not match config.FEATURE_NAMES "
                      f"{FEATURE_NAMES}")

#: the settings ``feature_block`` and ``stack_block`` read, in the schema's order: the kinds' own,
#: ``features`` itself and the void level's
FEATURE_PARAM_KEYS = tuple(k for k in OPTIONS
                           if k == "features" or k in voids.PARAMS or any(k in kind.params for kind in FEATURES.values()))


def kinds(settings) -> list[FeatureKind]:
    """The registry entries of the kinds ``settings["features"]`` stands for, in order."""
    out = []
    for name in feature_kinds(settings):
        if name not in FEATURES:   # config validation makes this unreachable for user input
            raise ValueError(f"unknown feature {name!r}")
        out.append(FEATURES[name])
    return out


def feature_names(settings: dict) -> list[str]:
    """Names of the feature channels, in order."""
    return [n for kind in kinds(settings) for n in kind.channels(kind.args(settings))]


def feature_kind(channel: str) -> FeatureKind | None:
    """The kind a channel name (``laplacian_s1``, ``variance_w7``) belongs to; None for a channel of no kind
    (the void levels)."""
    found = [k for k in FEATURES.values() if channel == k.name or channel.startswith(f"{k.name}_")]
    return max(found, key=lambda k: len(k.name)) if found else None


def feature_label(channel: str) -> str:
    """A channel in plain words, with its scale: ``laplacian_s1`` -> "blobs/curvature, 1 px",
    ``variance_w7`` -> "texture, 7 px window", ``structure_max_s1_4`` -> "edges and corners, max, 1-4 px".

    What fingerprint charts show for a feature; the phase names use the kind's word alone.
    """
    import re

    kind = feature_kind(channel)
    if kind is None:
        return channel
    rest = channel[len(kind.name):].lstrip("_")
    parts = [kind.word]
    extreme = re.match(r"(max|min)_", rest)
    if extreme:
        parts.append(extreme.group(1))
        rest = rest[extreme.end():]
    if rest.startswith("s"):
        parts.append("-".join(rest[1:].split("_")) + " px")
    elif rest.startswith("w"):
        parts.append(f"{rest[1:]} px window")
    return ", ".join(parts)


def aux_names(settings: dict) -> list[str]:
    """Channels the feature stack carries after the NMF features: the void levels when ``void_class`` is on."""
    return list(voids.CHANNELS) if voids.enabled(settings) else []


def stack_names(settings: dict) -> list[str]:
    """Names of every channel of the feature stack: the NMF features (:func:`feature_names`), then :func:`aux_names`."""
    return feature_names(settings) + aux_names(settings)


def stack_block(pre: np.ndarray, plane: np.ndarray | None, params: dict) -> np.ndarray:
    """The whole stack ``(y, x, channels)`` of one (haloed) block: :func:`feature_block` of the
    preprocessed image, then the void levels of the void plane (``preprocess.planes``; when on)."""
    feats = feature_block(pre, params)
    if not voids.enabled(params):
        return feats
    return np.concatenate([feats, voids.level_block(plane, params)], axis=-1)


def stack_features(pre, plane, settings: dict, name: str = "image"):
    """Lazy stack ``(y, x, channels)`` of a preprocessed image and its void plane (:func:`stack_block`),
    chunked as ``pre`` is, with exact halos.

    Without the void level this is :func:`compute_features` of ``pre``.
    """
    import dask.array as da

    if not voids.enabled(settings):
        return compute_features(pre, settings, name)
    pre = _chunked(pre, settings, name)
    if not isinstance(plane, da.Array):
        plane = da.from_array(np.asarray(plane), chunks=pre.chunks)
    elif plane.chunks != pre.chunks:
        plane = plane.rechunk(pre.chunks)
    return map_haloed(stack_block, pre.astype(np.float32), halo(settings), len(stack_names(settings)),
                      name="bigseg-features", others=(plane.astype(np.float32),),
                      params=feature_params(settings))


def halo(settings: dict) -> int:
    """Rows/columns of neighbours one output pixel of the stack depends on."""
    level = [voids.level_radius(settings)] if voids.enabled(settings) else []
    return max([0] + level + [kind.radius(kind.args(settings)) for kind in kinds(settings)])


def feature_block(block: np.ndarray, params: dict) -> np.ndarray:
    """All features of one (haloed) 2-D block, stacked on a last axis.

    ``params`` holds only plain values (the feature settings), so the function
    is pure and ships to any worker.
    """
    img = np.asarray(block, dtype=np.float32)
    out = []
    for kind in kinds(params):
        out += kind.kernel(img, kind.args(params))
    return np.stack(out, axis=-1).astype(np.float32, copy=False)


def feature_params(settings: dict) -> dict:
    """The plain values ``feature_block`` reads (``FEATURE_PARAM_KEYS``) out of whole settings."""
    return {k: settings[k] for k in FEATURE_PARAM_KEYS}


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
    """Lazy features ``(y, x, feature)`` of a 2-D dask or numpy image (:func:`feature_names`; the whole
    stack with the void level is :func:`stack_features`).

    Chunk edges are interior seams: each block is extended by the halo before
    filtering and trimmed after, so the chunked result equals the unchunked one.
    At the image border scipy's own ``reflect`` mode applies (``boundary='none'``),
    exactly as in one whole-image call.
    """
    image = _chunked(image, settings, name)
    nfeat = len(feature_names(settings))
    return map_haloed(feature_block, image.astype(np.float32), halo(settings), nfeat, name="bigseg-features",
                      params=feature_params(settings))


def _chunked(image, settings: dict, name: str):
    """A 2-D image as a dask array whose chunks each hold the halo, its size checked."""
    import dask.array as da

    if not isinstance(image, da.Array):
        image = np.asarray(image)
        image = da.from_array(image, chunks=chunk_side(image.shape, settings))
    check_size(image.shape, settings, name)
    depth = halo(settings)
    # a chunk thinner than the halo would need neighbours' neighbours
    if depth and min(min(c) for c in image.chunks) < depth:
        image = image.rechunk(tuple(_merge_thin(c, depth) for c in image.chunks))
    return image


def map_haloed(func, arr, depth: int, out_channels: int, name: str, others=(), **kwargs):
    """Apply ``func`` to every block of ``arr`` grown by ``depth`` pixels in y and x, then trim.

    ``others`` are more 2-D arrays chunked as ``arr``, grown alike and passed
    to ``func`` after ``arr``'s block.

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
    name = f"{name}-{tokenize(arr, func, depth, out_channels, others, kwargs)}"
    spatial = {0: depth, 1: depth}
    if arr.ndim == 3:
        arr = arr.rechunk({2: -1})
        spatial[2] = 0
    padded = [da.overlap.overlap(a, depth=spatial if a is arr else {0: depth, 1: depth}, boundary="none")
              if depth else a for a in (arr,) + tuple(others)]
    out = da.map_blocks(func, *padded, new_axis=2 if arr.ndim == 2 else None,
                        chunks=padded[0].chunks[:2] + ((out_channels,),), dtype=np.float32,
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
