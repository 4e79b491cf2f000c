"""Tiled, exact normalisation and CLAHE of images larger than memory.

scikit-image's ``equalize_adapthist`` needs the whole frame: it rescales by the
image's own range, builds one clipped histogram per contextual tile, maps every
pixel through the four nearest tiles' lookup tables and stretches the result by
its own range. Each of those global quantities is a small reduction, so here
they are computed first from bounded reads (value counts, one lookup table per
tile, the result's range) and every chunk is then mapped on its own. The
arithmetic follows scikit-image step by step, so a chunked result equals
``preprocess.preprocess_image`` on the whole frame, bit for bit (tests check
this on odd chunks and tile sizes).

The per-chunk functions are pure (array region in, array out) and read their
pixels themselves, so a reduction never holds blocks that the output graph
also needs: memory stays at a few chunks per worker.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import voids

#: grey levels scikit-image's CLAHE quantises to
NR_OF_GRAY = 2 ** 14
NBINS = 256
#: rows read at a time by the whole-image reductions
BAND_ROWS = 1024


# --- normalisation ---------------------------------------------------------------

def value_counts(source, band_rows: int = BAND_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of an integer 2-D array-like and their counts, read a band of rows at a time."""
    source_dtype = np.dtype(source.dtype)
    if source_dtype.kind not in "ub" or source_dtype.itemsize > 2:
        raise TypeError(f"exact tiled percentiles need an 8- or 16-bit unsigned image, not {source_dtype}")
    counts = np.zeros(2 ** (8 * source_dtype.itemsize), np.int64)
    for r in range(0, source.shape[0], band_rows):
        band = np.asarray(source[r:r + band_rows])
        counts += np.bincount(band.ravel(), minlength=counts.size)
    values = np.nonzero(counts)[0]
    return values.astype(np.float32), counts[values]


def percentile_from_counts(values: np.ndarray, counts: np.ndarray, q) -> np.ndarray:
    """``np.percentile(image, q)`` (linear method) from the image's value counts, with numpy's own arithmetic."""
    n = int(counts.sum())
    quantiles = np.true_divide(np.asanyarray(q, dtype=np.float64), 100)
    virtual = n * quantiles + (1 + quantiles * (1 - 1 - 1)) - 1
    prev = np.clip(np.floor(virtual), 0, n - 1)
    nxt = np.clip(prev + 1, 0, n - 1)
    gamma = np.where(virtual >= n - 1, 0.0, virtual - prev)
    cum = np.cumsum(counts)
    a = values[np.searchsorted(cum, prev.astype(np.int64), side="right")]
    b = values[np.searchsorted(cum, nxt.astype(np.int64), side="right")]
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


def normalisation_range(values, counts, percentiles) -> tuple[float, float]:
    """The (lo, hi) that ``preprocess.normalize`` would use on the whole image."""
    if tuple(percentiles) == (0.0, 100.0):
        return float(values[0]), float(values[-1])
    lo, hi = percentile_from_counts(values, counts, percentiles)
    return float(lo), float(hi)


def normalise(block: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The same float32 arithmetic as ``preprocess.normalize`` with the whole image's (lo, hi)."""
    block = np.asarray(block, dtype=np.float32)
    span = float(hi) - float(lo)
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(block)
    return np.clip((block - np.float32(lo)) / np.float32(span), 0.0, 1.0)


# --- CLAHE -----------------------------------------------------------------------

def kernel_shape(shape, kernel_size) -> tuple[int, int]:
    if kernel_size is None:
        return tuple(max(int(s) // 8, 1) for s in shape)
    if isinstance(kernel_size, (list, tuple)):
        return int(kernel_size[0]), int(kernel_size[1])
    return (int(kernel_size),) * 2


def grid(shape, kernel) -> tuple[int, int]:
    """Contextual tiles per axis, as scikit-image pads and counts them."""
    out = []
    for s, k in zip(shape, kernel):
        padded = s + k // 2 + (k - s % k) % k + int(np.ceil(k / 2.0))
        out.append(int(padded / k) - 1)
    return tuple(out)


def supports(shape, kernel) -> bool:
    """Whether the tiled path reproduces scikit-image here (its reflect padding must stay one-fold)."""
    return all((k - s % k) % k + int(np.ceil(k / 2.0)) <= s - 1 for s, k in zip(shape, kernel))


def _reflect(idx: np.ndarray, size: int) -> np.ndarray:
    return np.where(idx >= size, 2 * (size - 1) - idx, idx)


def quantise(normalised: np.ndarray, uint_range) -> np.ndarray:
    """The histogram bin of each pixel of a normalised image, as scikit-image computes it (uint16 levels
    over 2^14 grey levels, then 65 levels per bin)."""
    from skimage.exposure import rescale_intensity
    from skimage.util import img_as_uint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        as_uint = img_as_uint(normalised)
    levels = np.round(rescale_intensity(as_uint, in_range=uint_range, out_range=(0, NR_OF_GRAY - 1)))
    levels = levels.astype(np.min_scalar_type(NR_OF_GRAY))
    return levels // (1 + NR_OF_GRAY // NBINS)


def uint_range(norm_lo_hi) -> tuple[float, float]:
    """The range ``img_as_uint`` gives the normalised image's extremes (scikit-image rescales by it)."""
    from skimage.util import img_as_uint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ext = img_as_uint(np.asarray(norm_lo_hi, dtype=np.float32))
    return float(ext[0]), float(ext[1])


def bin_table(bits: int, lo: float, hi: float, urange) -> np.ndarray:
    """The histogram bin of every possible raw value of a ``bits``-bit image (normalise, then quantise).

    Both steps act on each pixel alone, so looking the bins up is exact and
    far cheaper than redoing the float arithmetic for every pixel.
    """
    return quantise(normalise(np.arange(2 ** bits), lo, hi), urange).astype(np.intp)


def tile_lut(source, ty: int, tx: int, kernel, table: np.ndarray, clip_limit: float) -> np.ndarray:
    """The lookup table (bin -> grey level, int64) of one contextual tile, read from ``source``."""
    # scikit-image's own clipping and mapping, so the tables are theirs; a private module, so the
    # bit-for-bit tests against equalize_adapthist are what guard an upgrade
    from skimage.exposure._adapthist import clip_histogram, map_histogram

    h, w = source.shape
    ry = _reflect(np.arange(ty * kernel[0], (ty + 1) * kernel[0]), h)
    rx = _reflect(np.arange(tx * kernel[1], (tx + 1) * kernel[1]), w)
    region = np.asarray(source[ry.min():ry.max() + 1, rx.min():rx.max() + 1])
    binned = table[region[np.ix_(ry - ry.min(), rx - rx.min())]]
    elements = kernel[0] * kernel[1]
    clim = int(np.clip(clip_limit * elements, 1, None)) if clip_limit > 0.0 else elements
    hist = np.bincount(binned.ravel(), minlength=NBINS)
    hist = clip_histogram(hist, clip_limit=clim)
    return map_histogram(hist, 0, NR_OF_GRAY - 1, elements)


def tile_luts(source, row: int, kernel, table, clip_limit, n_cols: int) -> np.ndarray:
    """The lookup tables of one row of contextual tiles: ``(n_cols, bins)``."""
    return np.stack([tile_lut(source, row, tx, kernel, table, clip_limit) for tx in range(n_cols)])


def equalise_block(block: np.ndarray, y0: int, x0: int, luts: np.ndarray, kernel, table) -> np.ndarray:
    """CLAHE levels (uint16, before the final stretch) of the raw block whose top-left pixel is (y0, x0)."""
    binned = table[np.asarray(block)]
    ny, nx, nbins = luts.shape
    flat = luts.reshape(-1)
    ky, kx = kernel
    yp = np.arange(y0, y0 + block.shape[0]) + ky // 2
    xp = np.arange(x0, x0 + block.shape[1]) + kx // 2
    jy, jx = yp // ky, xp // kx
    cy, cx = (yp - jy * ky) / ky, (xp - jx * kx) / kx
    result = np.zeros(block.shape, dtype=np.float32)
    for ey, ex in np.ndindex(2, 2):
        ty = np.clip(jy - 1 + ey, 0, ny - 1)
        tx = np.clip(jx - 1 + ex, 0, nx - 1)
        mapped = flat[(ty[:, None] * nx + tx[None, :]) * nbins + binned]
        coeff = (cx if ex else 1 - cx)[None, :] * (cy if ey else 1 - cy)[:, None]
        result += (mapped * coeff).astype(np.float32)
    return result.astype(np.min_scalar_type(NR_OF_GRAY))


def block_extremes(source, y0: int, y1: int, x0: int, x1: int, luts, kernel, table) -> np.ndarray:
    """(min, max) of the CLAHE levels of one region, read from ``source``."""
    levels = equalise_block(np.asarray(source[y0:y1, x0:x1]), y0, x0, luts, kernel, table)
    return np.array([levels.min(), levels.max()], dtype=np.float64)


def stretch(levels: np.ndarray, level_range) -> np.ndarray:
    """scikit-image's final ``rescale_intensity`` of the float32 levels by the whole image's range."""
    from skimage.exposure import rescale_intensity

    return rescale_intensity(levels.astype(np.float32), in_range=tuple(level_range), out_range=(0.0, 1.0))


def _preprocess_chunk(block, stats, row0=0, block_info=None):
    lo, hi = stats["lo"], stats["hi"]
    # a constant image has nothing to equalise: zeros, as preprocess.clahe leaves them
    if stats["luts"] is None or float(hi) <= float(lo):
        return normalise(block, lo, hi)
    (y0, _), (x0, _) = block_info[0]["array-location"]
    levels = equalise_block(block, row0 + y0, x0, stats["luts"], stats["kernel"], stats["table"])
    return stretch(levels, stats["level_range"]).astype(np.float32)


def stats_graph(source, settings: dict, chunk: int):
    """Delayed dict of the whole image's preprocessing constants: ``lo``, ``hi`` (normalisation),
    ``table`` (bin per raw value), ``luts`` (per contextual tile), ``kernel`` and ``level_range``
    (the final stretch); ``luts`` is None without CLAHE; ``void_lo``, ``void_hi`` (the void plane's
    range, ``voids.plane_percentiles``), None when ``void_class`` is off.

    Every task reads its own pixels from ``source`` a band or a tile at a time.
    """
    import dask

    shape = tuple(int(s) for s in source.shape)
    counts = dask.delayed(value_counts, pure=True)(source)
    lohi = dask.delayed(normalisation_range, pure=True, nout=2)(counts[0], counts[1],
                                                                 tuple(settings["normalize_percentiles"]))
    lo, hi = lohi[0], lohi[1]
    void_lo = void_hi = None
    if voids.enabled(settings):
        void = dask.delayed(normalisation_range, pure=True, nout=2)(counts[0], counts[1],
                                                                    voids.plane_percentiles(settings))
        void_lo, void_hi = void[0], void[1]
    kernel = kernel_shape(shape, settings["clahe_kernel_size"])
    luts = table = level_range = None
    if settings["clahe"]:
        urange = dask.delayed(_uint_range_of, pure=True)(lo, hi)
        table = dask.delayed(bin_table, pure=True)(8 * np.dtype(source.dtype).itemsize, lo, hi, urange)
        ny, nx = grid(shape, kernel)
        rows = [dask.delayed(tile_luts, pure=True)(source, r, kernel, table, float(settings["clahe_clip_limit"]), nx)
                for r in range(ny)]
        luts = dask.delayed(np.stack, pure=True)(rows)
        ext = [dask.delayed(block_extremes, pure=True)(source, y0, y0 + dy, x0, x0 + dx, luts, kernel, table)
               for y0, dy in _starts(chunk_lengths(shape[0], _pair(chunk)[0])) for x0, dx in _starts(chunk_lengths(shape[1], _pair(chunk)[1]))]
        level_range = dask.delayed(_range_of, pure=True)(ext)
    return dask.delayed(dict, pure=True)(lo=lo, hi=hi, table=table, luts=luts, kernel=kernel, level_range=level_range,
                                         void_lo=void_lo, void_hi=void_hi)


class RowWindow:
    """Rows ``r0:r1`` of a 2-D array-like, read only when sliced (picklable if the source is)."""

    def __init__(self, source, r0: int, r1: int):
        self.source, self.r0, self.r1 = source, int(r0), int(r1)
        self.shape = (self.r1 - self.r0, int(source.shape[1]))
        self.dtype = np.dtype(source.dtype)
        self.ndim = 2

    def __getitem__(self, key):
        ys, xs = key
        start, stop, _ = ys.indices(self.shape[0])
        return np.asarray(self.source[self.r0 + start:self.r0 + stop, xs])


def preprocess_graph(source, settings: dict, chunk: int, name: str = "image", stats=None, rows=None,
                     row_chunks=None):
    """Lazy float32 ``preprocess_image`` of a native-resolution 2-D integer array-like (zarr, tifffile, numpy).

    ``stats`` (from :func:`stats_graph`, computed or delayed) holds the whole
    image's constants; without it the delayed reductions go into this graph.
    ``rows=(r0, r1)`` preprocesses only those rows of the image, chunked as
    ``row_chunks`` (default: ``chunk``), each pixel exactly as in the whole image.
    Nothing is computed here.
    """
    return preprocess_planes(source, settings, chunk, name, stats, rows, row_chunks)[0]


def preprocess_planes(source, settings: dict, chunk: int, name: str = "image", stats=None, rows=None,
                      row_chunks=None):
    """Lazy ``(preprocessed, void plane)``: :func:`preprocess_graph` and the void plane of
    ``preprocess.planes`` (None when ``void_class`` is off), both read from one lazy array of the
    source's pixels."""
    import dask.array as da
    from dask.base import tokenize

    if stats is None:
        stats = stats_graph(source, settings, chunk)
    r0, r1 = rows if rows is not None else (0, int(source.shape[0]))
    window = RowWindow(source, r0, r1)
    cy, cx = _pair(chunk)
    chunks = (tuple(row_chunks) if row_chunks is not None else cy, cx)
    token = tokenize(name, tuple(source.shape), str(source.dtype), r0, r1, chunks, stats)
    raw = da.from_array(window, chunks=chunks, name=f"bigseg-raw-{name}-{token}", asarray=True)
    pre = raw.map_blocks(_preprocess_chunk, stats, r0, dtype=np.float32, name=f"bigseg-preprocess-{name}-{token}")
    if not voids.enabled(settings):
        return pre, None
    plane = raw.map_blocks(_void_plane_chunk, stats, dtype=np.float32, name=f"bigseg-void-plane-{name}-{token}")
    return pre, plane


def _void_plane_chunk(block, stats):
    return normalise(block, stats["void_lo"], stats["void_hi"])


def _pair(chunk):
    return (int(chunk), int(chunk)) if np.isscalar(chunk) else (int(chunk[0]), int(chunk[1]))


def chunk_lengths(n: int, chunk: int) -> list[int]:
    """Lengths of ``chunk``-sized pieces of ``n`` (the last may be shorter)."""
    return [min(chunk, n - i) for i in range(0, n, chunk)]


def _starts(chunks):
    out, pos = [], 0
    for c in chunks:
        out.append((pos, c))
        pos += c
    return out


def _uint_range_of(lo, hi):
    # normalised images reach exactly 0 and 1 (the percentiles clip there), so their uint16 range is fixed
    return uint_range([0.0, 1.0]) if float(hi) > float(lo) else (0.0, 0.0)


def _range_of(extremes):
    ext = np.stack(extremes)
    return float(ext[:, 0].min()), float(ext[:, 1].max())
