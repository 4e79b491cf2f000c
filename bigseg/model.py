"""Feature scaling and the NMF fit (``cd`` on a sample, ``minibatch`` streamed); safe save/load.

A model is a folder with ``model.json`` (settings, feature names, fit report,
version) and ``model.npz`` (H and the scaling), read with ``allow_pickle=False``:
a model received from someone else cannot run code. It is data, never
instructions: :meth:`Model.load` checks every field, accepts only the settings
that define the segmentation (``config.MODEL_KEYS``) and reads only regular
files of bounded size.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import nnls, voids
from .config import MODEL_KEYS, ConfigError, check_same, resolved_init, validate
from .safety import UnsafeFileError, read_regular

MODEL_FORMAT = 1
#: size caps of the model files, so a model cannot exhaust memory (H has at most nnls.MAX_EXACT_K rows)
MAX_JSON_BYTES = 16 * 2 ** 20
MAX_NPZ_BYTES = 256 * 2 ** 20
MAX_PNG_BYTES = 16 * 2 ** 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: the arrays of model.npz, each one float vector or matrix
MODEL_ARRAYS = ("H", "scale_lo", "scale_hi")
#: arrays a model may hold besides: the phase centres of a model whose phases are not H rows, and the
#: microconstituent level (:mod:`bigseg.constituents`): its H, its features' scaling and its fingerprints
CONSTITUENT_ARRAYS = ("constituent_H", "constituent_centres", "constituent_lo", "constituent_hi",
                      "constituent_profiles")
OPTIONAL_ARRAYS = ("centres",) + CONSTITUENT_ARRAYS
#: window scales a constituent level may have: an octave ladder from one pixel to 1/16 of the largest grid side
MAX_CONSTITUENT_SCALES = 16
#: the fields of model.json ("fingerprints" is derived from H, for people reading the file)
MODEL_FIELDS = ("format", "bigseg_version", "n_components", "feature_names", "settings", "report", "fingerprints",
                "transitions", "phase_names", "spread", "void_below", "constituents")
#: streamed feature blocks evaluated per compute call of the minibatch fit
BLOCKS_PER_COMPUTE = 4
#: minibatch passes without improvement before it stops
PATIENCE = 2
SCALE_PERCENTILES = (0.5, 99.5)
#: settings older models carried that are facts of their images' files (a data bar's height): ignored on load
FORMER_MODEL_KEYS = ("crop_bottom",)
#: the void phase's score where its test passes (and minus it where not): far above any activation or
#: centre score, and exact in float32 steps of 1/16 near the crossing
VOID_SCORE = 2.0 ** 20


class ModelError(ValueError):
    """A model file is missing, damaged or does not fit the request."""


# --- pure helpers shipped to workers ------------------------------------------

def sample_block(block: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The pixels (rows of features) of one block at the given block-local coordinates."""
    return np.asarray(block)[rows, cols]


def block_counts(sizes, total: int) -> list[int]:
    """Split ``total`` draws over blocks in proportion to their pixel counts (largest remainder)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    share = sizes / sizes.sum() * total
    counts = np.floor(share).astype(int)
    rest = int(total - counts.sum())
    if rest > 0:
        counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
    return np.minimum(counts, sizes.astype(int)).tolist()


def block_refs(arr, image_index: int):
    """``(image_index, block index, pixel count)`` of every spatial block of one lazy (y, x, f) array."""
    grid = [len(c) for c in arr.chunks[:2]]
    return [(image_index, idx + (0,), arr.chunks[0][idx[0]] * arr.chunks[1][idx[1]]) for idx in np.ndindex(*grid)]


def fetch_blocks(feature_arrays, refs):
    """Delayed blocks for ``refs`` from :func:`block_refs`; each image's graph is built only when asked."""
    return [feature_arrays[i].to_delayed()[idx] for i, idx, _ in refs]


def image_sample_graph(arr, image_index: int, count: int, seed: int):
    """Lazy sample of ``count`` pixels of one image, drawn uniformly without replacement.

    The pixels are chosen on the whole image's grid and returned in raster
    order, so the sample (and so the fit) does not depend on the chunking.
    """
    import dask

    h, w = arr.shape[:2]
    count = min(int(count), h * w)
    flat = np.sort(np.random.default_rng([seed, image_index]).choice(h * w, size=count, replace=False,
                                                                    shuffle=False))
    ys, xs = flat // w, flat % w
    y_edges, x_edges = np.cumsum((0,) + arr.chunks[0]), np.cumsum((0,) + arr.chunks[1])
    by = np.searchsorted(y_edges, ys, side="right") - 1
    bx = np.searchsorted(x_edges, xs, side="right") - 1
    blocks = arr.to_delayed()
    parts, order = [], []
    for iy, ix in sorted(set(zip(by.tolist(), bx.tolist()))):
        sel = np.flatnonzero((by == iy) & (bx == ix))
        parts.append(dask.delayed(sample_block, pure=True)(blocks[iy, ix, 0], ys[sel] - y_edges[iy],
                                                            xs[sel] - x_edges[ix]))
        order.append(sel)
    return dask.delayed(_in_raster_order, pure=True)(parts, np.concatenate(order) if order else np.empty(0, int))


def _in_raster_order(parts, positions):
    out = np.empty((len(positions),) + parts[0].shape[1:], parts[0].dtype)
    out[positions] = np.concatenate(parts, axis=0)
    return out


def sample_pixels(feature_arrays, n: int, seed: int, compute, batch_images: int = 32) -> np.ndarray:
    """About ``n`` pixels drawn across all images, in proportion to their sizes.

    ``feature_arrays`` is a sequence of lazy (y, x, f) arrays; it may build each
    on access (see ``pipeline.FeatureSources``). Images are sampled
    ``batch_images`` per ``compute`` call, so neither the graphs nor the
    intermediate blocks of a whole archive are ever held at once.
    """
    return np.concatenate(sample_parts(feature_arrays, n, seed, compute, batch_images), axis=0)


def sample_parts(feature_arrays, n: int, seed: int, compute, batch_images: int = 32) -> list[np.ndarray]:
    """:func:`sample_pixels` image by image: one array of sampled pixels per image that got any."""
    sizes = [a.shape[0] * a.shape[1] for a in _each(feature_arrays)]
    per_image = block_counts(sizes, n)
    parts = []
    for start in range(0, len(sizes), batch_images):
        batch = [image_sample_graph(feature_arrays[j], j, per_image[j], seed)
                 for j in range(start, min(start + batch_images, len(sizes))) if per_image[j] > 0]
        parts += compute(batch)
    return parts


def _each(seq):
    for i in range(len(seq)):
        yield seq[i]


def fit_scaling(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature robust range: the 0.5th and 99.5th percentiles of the sample."""
    lo, hi = np.percentile(sample, SCALE_PERCENTILES, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    return lo.astype(np.float32), hi.astype(np.float32)


def apply_scaling(X: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Map each feature's robust range to [0, 1] (clipped): non-negative, comparable weights."""
    return np.clip((np.asarray(X, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def regularisation(settings: dict, n_features: int) -> tuple[float, float]:
    """The (l1, l2) penalties on one pixel's w, as scikit-learn scales alpha_W."""
    a = settings.get("alpha_W", 0.0) * n_features
    ratio = settings.get("l1_ratio", 0.0)
    return a * ratio, a * (1.0 - ratio)


# --- the model ------------------------------------------------------------------

@dataclass
class Model:
    """H (unit-norm rows), the feature scaling and everything needed to reuse them."""

    H: np.ndarray
    scale_lo: np.ndarray
    scale_hi: np.ndarray
    feature_names: list
    settings: dict
    report: dict = field(default_factory=dict)
    #: rows of H that live on phase boundaries: they explain edge pixels in the solve, never label a pixel
    transitions: list = field(default_factory=list)
    #: what people call each phase (label ``i`` is ``phase_names[i]``); it names the outputs and never
    #: changes the segmentation, so it is no part of ``pipeline.model_digest``. None: from the fingerprints
    phase_names: list | None = None
    #: the fingerprint bar charts as PNG, drawn once when the model is fitted and kept
    #: with it, so segmenting with a saved model needs no plotting
    figure: bytes | None = field(default=None, repr=False, compare=False)
    #: phases as centres in the space of every component's activation ``(n_phases, n_components)``:
    #: a pixel is the phase whose centre its W is nearest (:func:`bigseg.regions.choose_assignment`).
    #: None: a pixel is the phase component with the largest activation
    centres: np.ndarray | None = None
    #: the variance per activation dimension of pixels about their centre: the width of the
    #: memberships' Gaussian posterior (only with ``centres``)
    spread: float | None = None
    #: with a void phase (``void_class``, :mod:`bigseg.voids`): the void level below which a pixel is
    #: the void phase, label 0, whose H row 0 is its fingerprint and whose activation is that test
    #: (``segment.spatial_block``); ``centres``, when any, are then over components 1 and up.
    #: None: no void phase
    void_below: float | None = None
    #: the microconstituent level (``n_constituents`` > 0, :func:`bigseg.constituents.fit`): ``H``,
    #: ``centres``, ``lo``, ``hi``, ``profiles`` (arrays), ``sigmas`` (the window scales, processing pixels), ``names``
    #: and ``report``. None: no constituents. It reads the phase memberships only, so the phases' labels
    #: are the same with or without it
    constituents: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.phase_names is None:
            from .phases import fingerprint_names

            self.phase_names = fingerprint_names(self.phase_H, self.feature_names)

    @property
    def n_components(self) -> int:
        """Rows of H: the phases and the transition components."""
        return int(self.H.shape[0])

    @property
    def phases(self) -> list[int]:
        """The rows of H that are phases, in order: label ``i`` is component ``phases[i]``."""
        return [j for j in range(self.n_components) if j not in self.transitions]

    @property
    def n_phases(self) -> int:
        if self.centres is None:
            return len(self.phases)
        return int(self.centres.shape[0]) + (self.void_below is not None)

    @property
    def phase_H(self) -> np.ndarray:
        """Each phase's fingerprint over the features: its H row, or, with centres, the unit-norm
        profile its centre reconstructs (``centres @ H``)."""
        if self.centres is None:
            return self.H[self.phases]
        if self.void_below is None:
            return normalise_rows(self.centres @ self.H)
        return np.vstack([self.H[:1], normalise_rows(self.centres @ self.H[1:])])

    def phase_scores(self, acts):
        """Per-phase scores of activations ``(n_components, y, x)`` whose arg max is the label.

        Without centres: the phase rows' activations. With centres:
        ``2 c.w - |c|^2``, which orders phases as the distance of W to each
        centre does and is affine in W, so bilinear resampling the scores
        (``segment.labels_at``) is resampling W and then choosing. With a void
        phase, its score ``VOID_SCORE * (2 v - 1)`` of its 0/1 activation ``v``
        comes first and outweighs every other score, so resampled it wins where
        the interpolated test passes one half. Works on numpy and dask arrays
        alike; float32.
        """
        if self.void_below is None:
            return self._pixel_scores(acts)
        void = (np.float32(2 * VOID_SCORE) * acts[:1].astype(np.float32) - np.float32(VOID_SCORE))
        return np.concatenate([void, self._pixel_scores(acts[1:], 1)], axis=0)

    def _rows_from(self, first: int) -> list[int]:
        """The phase rows of H from row ``first`` on, counted from there (the void's row 0 left out when 1)."""
        return [j - first for j in self.phases if j >= first]

    def _pixel_scores(self, acts, first: int = 0):
        """The scores of the phases other than the void of ``acts``, the activations of components ``first`` and up."""
        if self.centres is None:
            return acts[self._rows_from(first)]
        twice, shift = centre_terms(self.centres)
        acts = acts.astype(np.float32)
        # a sum in a fixed order of float32 products (not a BLAS product, whose order depends on the
        # machine), so every path and scripts/minimal_segment.py get these scores bit for bit
        total = twice[:, 0, None, None] * acts[0][None]
        for j in range(1, acts.shape[0]):
            total = total + twice[:, j, None, None] * acts[j][None]
        return total - shift[:, None, None]

    def phase_memberships(self, acts):
        """Soft memberships ``(n_phases, y, x)``, float32, summing to 1 at each pixel, whose arg max is the label.

        Without centres: each pixel's phase activations divided by their sum
        (equal shares where all are zero). With centres: the posterior of a
        Gaussian mixture with one shared, isotropic spread around the centres
        (k-means' soft counterpart), a softmax of :meth:`phase_scores`.
        """
        if self.void_below is None:
            return self._pixel_memberships(acts)
        void = acts[:1].astype(np.float32)
        return np.concatenate([void, self._pixel_memberships(acts[1:], 1) * (np.float32(1) - void)], axis=0)

    def _pixel_memberships(self, acts, first: int = 0):
        if self.centres is None:
            return activation_shares(acts[self._rows_from(first)])
        z = self._pixel_scores(acts, first) / np.float32(2.0 * self.spread)
        e = np.exp(z - z.max(axis=0, keepdims=True))
        return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)

    def fingerprint_png(self) -> bytes:
        """The phases' fingerprints as a PNG bar chart: each phase's pixels against the phases' mean, over the
        features in plain words (``phases.fingerprint_values``), what the phase names read."""
        if self.figure is None:
            from .diagnose import fingerprint_figure
            from .phases import fingerprint_values

            self.figure = fingerprint_figure(fingerprint_values(self), self.feature_names, self.phase_names)
        return self.figure

    def check_settings(self, settings: dict) -> None:
        """Fail, naming the setting, if ``settings`` would compute other features than the model's."""
        check_same(settings, self.settings, "the model")

    # --- persistence ---
    def save(self, path) -> None:
        """Write ``model.json``, ``model.npz`` and ``fingerprints.png`` into ``path`` atomically
        (temp folder, then rename).

        Raises
        ------
        ModelError
            If ``settings`` holds a key that is not in ``config.MODEL_KEYS``
            (:meth:`load` would refuse the model).
        """
        extra = [k for k in self.settings if k not in MODEL_KEYS]
        if extra:
            raise ModelError(f"settings.{extra[0]} is not a model setting; a model carries only what defines "
                             f"the segmentation ({', '.join(MODEL_KEYS)})")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            arrays = dict(H=self.H.astype(np.float64), scale_lo=self.scale_lo, scale_hi=self.scale_hi)
            if self.centres is not None:
                arrays["centres"] = np.asarray(self.centres, np.float64)
            if self.constituents is not None:
                for name in CONSTITUENT_ARRAYS:
                    arrays[name] = np.asarray(self.constituents[name.removeprefix("constituent_")], np.float64)
            np.savez(tmp / "model.npz", **arrays)
            meta = {"format": MODEL_FORMAT, "bigseg_version": __version__, "n_components": self.n_components,
                    "feature_names": list(self.feature_names), "settings": self.settings, "report": self.report,
                    "fingerprints": fingerprints(self.H, self.feature_names),
                    "transitions": [int(j) for j in self.transitions], "phase_names": list(self.phase_names)}
            if self.centres is not None:
                meta["spread"] = float(self.spread)
            if self.void_below is not None:
                meta["void_below"] = float(self.void_below)
            if self.constituents is not None:
                meta["constituents"] = {key: self.constituents[key] for key in ("sigmas", "names", "report")}
            (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
            (tmp / "fingerprints.png").write_bytes(self.fingerprint_png())
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)     # mkdtemp's 0700 would hide the model from colleagues
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path) -> "Model":
        """Read a model folder written by :meth:`save`, checking every field.

        Raises
        ------
        ModelError
            One line naming the file and the field, for a missing, damaged,
            oversized or inconsistent model, a symbolic link or non-regular
            file in the folder, or a setting that is not a model setting.
        """
        path = Path(path)
        meta_path, arr_path, png_path = path / "model.json", path / "model.npz", path / "fingerprints.png"
        meta_bytes = _read_regular(meta_path, MAX_JSON_BYTES)
        arr_bytes = _read_regular(arr_path, MAX_NPZ_BYTES)
        if meta_bytes is None or arr_bytes is None:
            raise ModelError(f"{path}: not a bigseg model (needs model.json and model.npz)")
        meta = _parse_json(meta_path, meta_bytes)
        arrays = _parse_npz(arr_path, arr_bytes)
        names, settings, report = _check_meta(meta_path, meta)
        H, lo, hi = _check_arrays(arr_path, arrays, names)
        transitions = _check_transitions(meta_path, meta.get("transitions", []), H.shape[0])
        void_below = _check_void(meta_path, meta.get("void_below"), H.shape[0], transitions)
        void = int(void_below is not None)
        centres, spread = _check_centres(arr_path, meta_path, arrays.get("centres"), meta.get("spread"),
                                         H.shape[0] - void)
        n_phases = H.shape[0] - len(transitions) if centres is None else len(centres) + void
        settings = _check_settings(meta_path, settings, names, H.shape[0], len(transitions),
                                   None if centres is None else n_phases)
        if void and not voids.enabled(settings):
            raise ModelError(f"{meta_path}: field 'void_below' needs settings.void_class 'auto'; got 'off'")
        if "n_components" in meta and meta["n_components"] != H.shape[0]:
            raise ModelError(f"{meta_path}: field 'n_components' is {meta['n_components']} but H in model.npz "
                             f"has {H.shape[0]} rows")
        _check_fingerprints(meta_path, meta.get("fingerprints"), names, H.shape[0])
        # absent in models saved before names were kept: Model computes them from the fingerprints
        phase_names = _check_phase_names(meta_path, meta["phase_names"], n_phases) \
            if "phase_names" in meta else None
        constituents = _check_constituents(arr_path, meta_path, arrays, meta.get("constituents"), settings,
                                           n_phases)
        figure = _read_regular(png_path, MAX_PNG_BYTES)      # absent in models saved before it was kept
        if figure is not None and not figure.startswith(PNG_SIGNATURE):
            raise ModelError(f"{png_path}: not a PNG image")
        return cls(H=H, scale_lo=lo, scale_hi=hi, feature_names=names, settings=settings, report=report,
                   transitions=transitions, phase_names=phase_names, figure=figure, centres=centres, spread=spread,
                   void_below=void_below, constituents=constituents)


# --- reading a model: every check names the file and the field -----------------------

def _read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes, never read through a link
    (:func:`bigseg.safety.read_regular`); None when ``path`` does not exist."""
    link = f"{path}: is a symbolic link; a model folder holds only regular files"
    if os.path.islink(path):
        raise ModelError(link)
    try:
        return read_regular(path, "model file", limit, follow_links=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnsafeFileError as exc:
        if "regular file" in str(exc):
            raise ModelError(f"{path}: is not a regular file; a model folder holds only regular files") from None
        raise ModelError(f"{path}: more than the {limit} bytes a model file may have") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:       # made a link between the check and the open
            raise ModelError(link) from None
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None


def _parse_json(path: Path, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: damaged model file: not JSON ({exc})") from None


def _parse_npz(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an npz archive, each header checked before its data is read."""
    if data.startswith(b"\x93NUMPY"):
        raise ModelError(f"{path}: damaged model file: a single .npy array, not the npz archive of "
                         f"{', '.join(MODEL_ARRAYS)}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelError(f"{path}: damaged model file: not an npz (zip) archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        members = [i.filename for i in infos]
        for name in members:
            if name.removesuffix(".npy") not in MODEL_ARRAYS + OPTIONAL_ARRAYS or not name.endswith(".npy"):
                raise ModelError(f"{path}: array {name!r} is not a model array "
                                 f"({', '.join(MODEL_ARRAYS + OPTIONAL_ARRAYS)})")
        if len(set(members)) != len(members):
            raise ModelError(f"{path}: damaged model file: an array is stored twice")
        missing = [a for a in MODEL_ARRAYS if f"{a}.npy" not in members]
        if missing:
            raise ModelError(f"{path}: array {missing[0]!r} is missing")
        # compressed members could inflate far beyond the archive (a zip bomb)
        if sum(i.file_size for i in infos) > MAX_NPZ_BYTES:
            raise ModelError(f"{path}: arrays of more than {MAX_NPZ_BYTES} bytes unpacked")
        out = {}
        for info in infos:
            name = info.filename.removesuffix(".npy")
            try:
                raw = archive.read(info)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError,
                    RuntimeError) as exc:
                raise ModelError(f"{path}: damaged model file: array {name!r} cannot be unpacked ({exc})") from None
            out[name] = _read_npy(path, name, raw)
    return out


def _read_npy(path: Path, name: str, raw: bytes) -> np.ndarray:
    fmt = np.lib.format
    buf = io.BytesIO(raw)
    try:
        version = fmt.read_magic(buf)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(buf)
        else:
            raise ValueError(f"npy format version {version} is not read here")
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise ModelError(f"{path}: damaged model file: array {name!r} has no valid header ({exc})") from None
    if dtype.hasobject:
        # allow_pickle=False would refuse it too, with numpy's own words
        raise ModelError(f"{path}: array {name!r} holds Python objects; a model holds only float arrays")
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise ModelError(f"{path}: array {name!r} must be float32 or float64, got {dtype}")
    # the header's shape sizes the allocation: it must not claim more than the data holds
    if math.prod(shape) * dtype.itemsize != len(raw) - buf.tell():
        raise ModelError(f"{path}: damaged model file: array {name!r} of shape {shape} does not match its data")
    buf.seek(0)
    try:
        return np.lib.format.read_array(buf, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ModelError(f"{path}: damaged model file: array {name!r} cannot be read ({exc})") from None


def _check_meta(path: Path, meta) -> tuple[list, dict, dict]:
    """Feature names, settings and report of ``model.json``, each field of the right type."""
    if not isinstance(meta, dict):
        kind = {list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(type(meta), "a number")
        raise ModelError(f"{path}: must hold a JSON object of model fields, got {kind}")
    for key in meta:
        if key not in MODEL_FIELDS:
            raise ModelError(f"{path}: field {key!r} is not a model field ({', '.join(MODEL_FIELDS)})")
    for key in ("format", "feature_names", "settings"):
        if key not in meta:
            raise ModelError(f"{path}: field {key!r} is missing")
    fmt = meta["format"]
    if type(fmt) is not int or fmt != MODEL_FORMAT:
        raise ModelError(f"{path}: field 'format' is {fmt!r}; this bigseg reads model format {MODEL_FORMAT}")
    if "bigseg_version" in meta and not isinstance(meta["bigseg_version"], str):
        raise ModelError(f"{path}: field 'bigseg_version' must be a string")
    if "n_components" in meta and type(meta["n_components"]) is not int:
        raise ModelError(f"{path}: field 'n_components' must be an integer")
    names = meta["feature_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ModelError(f"{path}: field 'feature_names' must be a non-empty list of strings")
    if not isinstance(meta["settings"], dict):
        raise ModelError(f"{path}: field 'settings' must be a mapping of setting: value")
    report = meta.get("report", {})
    if not isinstance(report, dict):
        raise ModelError(f"{path}: field 'report' must be a mapping")
    return names, meta["settings"], report


def _check_arrays(path: Path, arrays: dict, names: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    H, lo, hi = (arrays[a] for a in MODEL_ARRAYS)
    if H.ndim != 2 or not 1 <= H.shape[0] <= nnls.MAX_EXACT_K:
        raise ModelError(f"{path}: array 'H' must be a matrix of 1 to {nnls.MAX_EXACT_K} rows "
                         f"(components), got shape {H.shape}")
    if H.shape[1] != len(names):
        raise ModelError(f"{path}: array 'H' has {H.shape[1]} columns but feature_names lists {len(names)} features")
    for name, a in (("H", H), ("scale_lo", lo), ("scale_hi", hi)):
        if name != "H" and a.shape != (len(names),):
            raise ModelError(f"{path}: array {name!r} must have one value per feature ({len(names)}), "
                             f"got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ModelError(f"{path}: array {name!r} holds NaN or infinite values")
    if (H < 0).any():
        raise ModelError(f"{path}: array 'H' holds negative values; NMF components are non-negative")
    zero = np.flatnonzero(~(H > 0).any(axis=1))
    if zero.size:
        raise ModelError(f"{path}: array 'H' row {zero[0]} is all zero (a component of no feature)")
    bad = np.flatnonzero(~(hi > lo))
    if bad.size:
        raise ModelError(f"{path}: array 'scale_hi' must exceed 'scale_lo' for every feature; "
                         f"not for {names[bad[0]]!r}")
    return H, lo, hi


def _check_transitions(path: Path, value, rows: int) -> list[int]:
    """The transition rows of H: distinct row indices, at least one phase left (absent in older models)."""
    if (not isinstance(value, list) or not all(type(j) is int and 0 <= j < rows for j in value)
            or len(set(value)) != len(value) or len(value) >= rows):
        raise ModelError(f"{path}: field 'transitions' must list distinct rows of H (0 to {rows - 1}), "
                         f"leaving at least one phase; got {value!r}")
    return sorted(value)


def _check_void(path: Path, value, rows: int, transitions: list) -> float | None:
    """The void phase's level threshold (absent: no void phase): a number in (0, 1), a level of the void
    plane (``voids.plane_percentiles``), with row 0 of H its phase and at least one other phase."""
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value)
            or not 0 < value < 1):
        raise ModelError(f"{path}: field 'void_below' must be a number between 0 and 1 (a level of the "
                         f"image normalised before CLAHE); got {value!r}")
    if 0 in transitions or rows - len(transitions) < 2:
        raise ModelError(f"{path}: field 'void_below' makes row 0 of H the void phase; it must be no boundary "
                         f"row and leave another phase")
    return float(value)


def _check_settings(path: Path, settings: dict, names: list, rows: int, n_transitions: int = 0,
                    n_centres: int | None = None) -> dict:
    """The model's settings, normalised: model keys only, values as ``config.validate`` allows,
    computing exactly ``names``, with H's ``rows`` made of the phases asked for (or fewer, where
    boundary components took capacity no refit could give back) and ``n_transitions`` boundaries;
    with ``n_centres`` phase centres, exactly as many as asked for."""
    # facts of one collection's files that older models carried: never applied to new images
    settings = {k: v for k, v in settings.items() if k not in FORMER_MODEL_KEYS}
    for key in settings:
        if key not in MODEL_KEYS:
            raise ModelError(f"{path}: settings.{key} is not a model setting; a model carries only what "
                             f"defines the segmentation")
    given = dict(settings)
    given.setdefault("n_components", rows - n_transitions if n_centres is None else n_centres)
    try:
        full = validate(given)
    except ConfigError as exc:
        # validate's messages start with the key they are about
        where = "settings." if str(exc).split(":", 1)[0] in MODEL_KEYS else "settings: "
        raise ModelError(f"{path}: {where}{exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ModelError(f"{path}: field 'settings' holds an invalid value ({exc})") from None
    phases = rows - n_transitions
    if n_centres is not None:
        if n_centres != full["n_components"]:
            raise ModelError(f"{path}: settings.n_components is {full['n_components']} but model.npz has "
                             f"{n_centres} phase centres")
    elif phases > full["n_components"] or (n_transitions == 0 and phases != full["n_components"]):
        raise ModelError(f"{path}: settings.n_components is {full['n_components']} but H in model.npz has {rows} "
                         f"rows, {n_transitions} of them boundaries")
    from .features import feature_names

    expected = feature_names(full)
    if names != expected:
        raise ModelError(f"{path}: field 'feature_names' must be the features the model's settings compute, "
                         f"{expected}; got {names}")
    return {key: full[key] for key in given}


def _check_centres(arr_path: Path, meta_path: Path, centres, spread, rows: int):
    """The phase centres (absent: phases are H rows) and their spread, checked."""
    if centres is None:
        if spread is not None:
            raise ModelError(f"{meta_path}: field 'spread' belongs to phase centres, and model.npz has none")
        return None, None
    if (centres.ndim != 2 or centres.shape[1] != rows or not 1 <= centres.shape[0] <= nnls.MAX_EXACT_K
            or not np.issubdtype(centres.dtype, np.floating)):
        raise ModelError(f"{arr_path}: 'centres' must be a float array of 1 to {nnls.MAX_EXACT_K} phases by "
                         f"the {rows} components of H; got shape {centres.shape}")
    centres = centres.astype(np.float64)
    if not np.isfinite(centres).all() or (centres < 0).any():
        raise ModelError(f"{arr_path}: 'centres' must be finite and non-negative (activations are)")
    if len({row.tobytes() for row in centres}) != len(centres):
        raise ModelError(f"{arr_path}: 'centres' must be distinct: two phases with one centre label nothing apart")
    if (not isinstance(spread, (int, float)) or isinstance(spread, bool) or not np.isfinite(spread)
            or not spread > 0):
        raise ModelError(f"{meta_path}: field 'spread' must be a positive number with phase centres; got {spread!r}")
    return centres, float(spread)


def _check_constituents(arr_path: Path, meta_path: Path, arrays: dict, meta, settings: dict, n_phases: int):
    """The microconstituent level (absent: none), checked against ``settings.n_constituents`` and the phases."""
    wanted = int(settings.get("n_constituents", 0))
    present = [a for a in CONSTITUENT_ARRAYS if a in arrays]
    if not wanted:
        if present or meta is not None:
            raise ModelError(f"{meta_path}: settings.n_constituents is 0 but the model holds a constituent level")
        return None
    if len(present) != len(CONSTITUENT_ARRAYS) or not isinstance(meta, dict):
        missing = [a for a in CONSTITUENT_ARRAYS if a not in arrays]
        raise ModelError(f"{arr_path if missing else meta_path}: settings.n_constituents is {wanted} but "
                         f"{repr(missing[0]) + ' is missing' if missing else 'field constituents is missing'}")
    sigmas, names = meta.get("sigmas"), meta.get("names")
    if (not isinstance(sigmas, list) or not 1 <= len(sigmas) <= MAX_CONSTITUENT_SCALES
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and 0 < v <= 4096
                       for v in sigmas)):
        raise ModelError(f"{meta_path}: field 'constituents.sigmas' must list 1 to {MAX_CONSTITUENT_SCALES} window "
                         f"scales in (0, 4096] pixels")
    n_features = 2 * n_phases * len(sigmas)
    H = arrays["constituent_H"]
    if H.ndim != 2 or H.shape != (wanted, n_features) or not np.isfinite(H).all() or (H < 0).any() \
            or not (H > 0).any(axis=1).all():
        raise ModelError(f"{arr_path}: 'constituent_H' must be {wanted} non-negative, non-zero rows over "
                         f"{n_features} window features; got shape {H.shape}")
    for name in ("constituent_lo", "constituent_hi"):
        if arrays[name].shape != (n_features,) or not np.isfinite(arrays[name]).all():
            raise ModelError(f"{arr_path}: {name!r} must hold {n_features} finite values")
    if not (arrays["constituent_hi"] > arrays["constituent_lo"]).all():
        raise ModelError(f"{arr_path}: 'constituent_hi' must exceed 'constituent_lo' for every feature")
    centres = arrays["constituent_centres"]
    if centres.shape != (wanted, wanted) or not np.isfinite(centres).all() or (centres < 0).any():
        raise ModelError(f"{arr_path}: 'constituent_centres' must be {wanted} non-negative centres over the "
                         f"{wanted} rows of 'constituent_H'; got shape {centres.shape}")
    profiles = arrays["constituent_profiles"]
    if profiles.shape != (wanted, n_features) or not np.isfinite(profiles).all():
        raise ModelError(f"{arr_path}: 'constituent_profiles' must be {wanted} rows of {n_features} finite values")
    from .phases import check_names

    try:
        names = check_names(names, wanted, "field 'constituents.names'")
    except ValueError as exc:
        raise ModelError(f"{meta_path}: {exc}") from None
    report = meta.get("report", {})
    if not isinstance(report, dict):
        raise ModelError(f"{meta_path}: field 'constituents.report' must be a mapping")
    return {"H": H.astype(np.float64), "centres": centres.astype(np.float64),
            "lo": arrays["constituent_lo"].astype(np.float32),
            "hi": arrays["constituent_hi"].astype(np.float32), "profiles": profiles.astype(np.float64),
            "sigmas": [float(v) for v in sigmas], "names": names, "report": report}


def centre_terms(centres) -> tuple[np.ndarray, np.ndarray]:
    """``2 C`` and ``|c|^2`` per centre, float32: the affine map from W to :meth:`Model.phase_scores`."""
    C = np.asarray(centres, np.float64)
    return (2 * C).astype(np.float32), (C ** 2).sum(axis=1).astype(np.float32)


def nearest_centre(acts: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Label of each pixel of ``(k, ...)`` activations: the nearest row of ``centres`` ``(phases, k)``."""
    a = np.asarray(acts, np.float64).reshape(acts.shape[0], -1)
    C = np.asarray(centres, np.float64)
    return ((C ** 2).sum(axis=1)[:, None] - 2 * C @ a).argmin(axis=0).reshape(acts.shape[1:])


def activation_shares(acts):
    """Each pixel's activations ``(k, y, x)`` divided by their sum, float32; equal shares where all are 0.

    H rows have unit norm, so the shares compare like with like. numpy or dask arrays.
    """
    acts = acts.astype(np.float32)
    total = acts.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, acts / np.maximum(total, np.float32(1e-12)),
                        np.float32(1.0 / acts.shape[0])).astype(np.float32)


def _check_fingerprints(path: Path, prints, names: list, k: int) -> None:
    if prints is None:
        return
    if (not isinstance(prints, list) or len(prints) != k
            or not all(isinstance(p, dict) and sorted(p) == sorted(names)
                       and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p.values())
                       for p in prints)):
        raise ModelError(f"{path}: field 'fingerprints' must list, for each of the {k} components, "
                         f"a number per feature name")


def _check_phase_names(path: Path, value, n_phases: int) -> list[str]:
    """The phases' names: one non-empty, one-line string per phase, no two alike."""
    from .phases import check_names

    try:
        return check_names(value, n_phases, "field 'phase_names'")
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def fingerprints(H: np.ndarray, names) -> list[dict]:
    """Each component's H row over the named features."""
    return [{name: round(float(v), 6) for name, v in zip(names, row)} for row in H]


def normalise_rows(H: np.ndarray) -> np.ndarray:
    """Unit-norm H rows: W H is unchanged if W absorbs the norms, and argmax W compares like with like."""
    norms = np.linalg.norm(H, axis=1, keepdims=True)
    return H / np.where(norms > 0, norms, 1.0)


def reconstruction(X: np.ndarray, H: np.ndarray, settings: dict, W: np.ndarray | None = None) -> dict:
    """Frobenius error of the best W >= 0 for fixed H on the pixels X (already scaled).

    ``W``, when given, is that best W (``nnls.solve``), already computed.
    """
    if W is None:
        W = nnls.solve(X, H, *regularisation(settings, H.shape[1]))
    W = np.asarray(W, dtype=np.float64)
    err = float(np.linalg.norm(X - W @ H))
    return {"reconstruction_error": err, "relative_error": err / max(float(np.linalg.norm(X)), 1e-12),
            "eval_pixels": int(X.shape[0])}


def _nmf_kwargs(settings: dict) -> dict:
    return dict(n_components=settings["n_components"], init=resolved_init(settings), beta_loss=settings["beta_loss"],
                tol=settings["tol"], random_state=settings["random_state"], alpha_W=settings["alpha_W"],
                alpha_H=settings["alpha_H"], l1_ratio=settings["l1_ratio"])


def fit_cd(X: np.ndarray, settings: dict) -> tuple[np.ndarray, dict]:
    """Full-batch coordinate-descent NMF on an in-memory sample."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    nmf = NMF(solver="cd", max_iter=settings["max_iter"], **_nmf_kwargs(settings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        nmf.fit(X)
    return nmf.components_, {"n_iter": int(nmf.n_iter_), "converged": bool(nmf.n_iter_ < settings["max_iter"]),
                             "sklearn_reconstruction_err": float(nmf.reconstruction_err_)}


def overlap(H: np.ndarray) -> float:
    """Mean off-diagonal of the cosine-similarity matrix of H's rows (0 = orthogonal rows)."""
    Hn = normalise_rows(np.asarray(H, dtype=np.float64))
    k = len(Hn)
    if k < 2:
        return 0.0
    S = Hn @ Hn.T
    return float((S.sum() - np.trace(S)) / (k * (k - 1)))


def refine_orthogonal(X: np.ndarray, H: np.ndarray, settings: dict) -> tuple[np.ndarray, dict]:
    """Push H's rows apart: multiplicative updates of ``||X - W H||^2 + beta * sum_{i != j} h_i . h_j``.

    Starts from a fitted H (so it inherits the NNDSVD start), keeps rows at unit
    norm after each step (otherwise shrinking H would pay the penalty for free)
    and runs ``max_iter`` iterations or until the objective changes by less than
    ``tol`` (relative).
    """
    beta = float(settings["orthogonality"])
    X = np.asarray(X, dtype=np.float64)
    H = normalise_rows(np.asarray(H, dtype=np.float64)) + 1e-9
    k = len(H)
    off = np.ones((k, k)) - np.eye(k)
    W = nnls.solve(X, H).astype(np.float64) + 1e-9
    eps = 1e-12
    # beta is per pixel of the data term, so its pull does not fade with the sample size
    b = beta * X.shape[0]
    before, prev, it = overlap(H), np.inf, 0
    for it in range(1, settings["max_iter"] + 1):
        H *= (W.T @ X) / (W.T @ W @ H + b * (off @ H) + eps)
        norms = np.linalg.norm(H, axis=1, keepdims=True)
        H /= np.where(norms > 0, norms, 1.0)
        W *= norms.T
        W *= (X @ H.T) / (W @ (H @ H.T) + eps)
        obj = float(np.linalg.norm(X - W @ H) ** 2 + b * np.sum((H @ H.T) * off))
        if np.isfinite(prev) and abs(prev - obj) <= settings["tol"] * max(prev, eps):
            break
        prev = obj
    return H, {"orthogonality": beta, "overlap_before": round(before, 6), "overlap_after": round(overlap(H), 6),
               "orthogonal_iterations": it}


def fit_minibatch(feature_arrays, lo, hi, settings: dict, eval_X: np.ndarray, compute,
                  log=None, void_below: float | None = None) -> tuple[np.ndarray, dict]:
    """MiniBatchNMF fed with pixels streamed block by block from the store.

    Each pass visits every block of every image in ``feature_arrays`` in a new
    random order, a few blocks per ``compute`` call, so memory holds only those
    blocks (and their graphs), never the store. A pass ends with the objective on
    ``eval_X``. Minibatch updates are noisy, so we keep the best H seen and stop
    after ``max_iter`` passes or once ``PATIENCE`` passes in a row fail to improve
    on the best by more than ``tol`` (relative).
    """
    from sklearn.decomposition import MiniBatchNMF

    rng = np.random.default_rng(settings["random_state"])
    bs = settings["batch_size"]
    nmf = MiniBatchNMF(batch_size=bs, max_iter=1, **_nmf_kwargs(settings))
    history, n_batches, stale = [], 0, 0
    best_H, best = None, np.inf
    pending = np.empty((0, len(lo)), np.float32)
    refs = [r for i, a in enumerate(_each(feature_arrays)) for r in block_refs(a, i)]
    for passes in range(1, settings["max_iter"] + 1):
        order = rng.permutation(len(refs))
        for start in range(0, len(order), BLOCKS_PER_COMPUTE):
            blocks = compute(fetch_blocks(feature_arrays, [refs[i] for i in order[start:start + BLOCKS_PER_COMPUTE]]))
            pix = [_phase_pixels(b.reshape(-1, b.shape[-1]), len(lo), void_below) for b in blocks]
            pix = [p[rng.random(p.shape[0]) < settings["minibatch_fraction"]] for p in pix]
            X = np.concatenate([pending] + pix, axis=0)
            X = apply_scaling(X[rng.permutation(X.shape[0])], lo, hi)
            full = (X.shape[0] // bs) * bs
            for b0 in range(0, full, bs):
                nmf.partial_fit(X[b0:b0 + bs])
                n_batches += 1
            pending = X[full:]
        if n_batches == 0 and pending.shape[0] >= settings["n_components"]:
            nmf.partial_fit(pending)   # smaller than one batch: still fit once
            n_batches += 1
            pending = pending[:0]
        if n_batches == 0:
            raise ValueError("too few pixels for one minibatch; lower batch_size")
        obj = reconstruction(eval_X, normalise_rows(nmf.components_), settings)["reconstruction_error"]
        history.append(obj)
        if log:
            log(f"minibatch pass {passes}: error {obj:.5g}")
        stale = stale + 1 if obj >= best * (1 - settings["tol"]) else 0
        if obj < best:
            best, best_H = obj, nmf.components_.copy()
        if stale >= PATIENCE:
            break
    return best_H, {"n_iter": passes, "converged": stale >= PATIENCE, "n_batches": n_batches,
                    "pass_errors": history}


def _phase_pixels(pix: np.ndarray, n_features: int, void_below: float | None) -> np.ndarray:
    """The NMF features of the stack's pixels ``(pixels, channels)`` that are no void."""
    if void_below is not None:
        pix = pix[pix[:, n_features + 1] >= np.float32(void_below)]
    return pix[:, :n_features]


def scaled_sample(feature_arrays, settings: dict, compute, batch_images: int = 32):
    """The bounded pixel sample across all images, scaled by the per-feature range fitted on it.

    Returns ``(X, lo, hi)``; ``X`` has about ``sample_size`` rows whatever the collection's size:
    the NMF features of the pixels that are no void (:func:`void_split`).
    """
    X, lo, hi, _, _ = void_split(feature_arrays, settings, compute, batch_images)
    return X, lo, hi


def void_split(feature_arrays, settings: dict, compute, batch_images: int = 32):
    """The scaled pixel sample, split by the void test (:mod:`bigseg.voids`).

    Returns
    -------
    X : ndarray, float32, shape (pixels, n_features)
        The scaled NMF features of the sample's pixels that are no void.
    lo, hi : ndarray
        The per-feature range fitted on the whole sample.
    void_below : float or None
        The void level's threshold, when ``void_class`` is on and the sample has a dark mode.
    X_void : ndarray, float32
        The scaled features of the sample's void pixels (no rows without a void phase).
    """
    from .features import feature_names

    parts = sample_parts(feature_arrays, settings["sample_size"], settings["random_state"], compute, batch_images)
    sample = np.concatenate(parts, axis=0)
    n = len(feature_names(settings))
    lo, hi = fit_scaling(sample[:, :n])
    X = apply_scaling(sample[:, :n], lo, hi)
    void_below = None
    if voids.enabled(settings) and sample.shape[1] > n + 1 and settings["n_components"] != 1:
        # the test reads the smoothed level of the images with contrast: a blank frame (one grey level,
        # normalised to zeros) holds no micrograph, and its zeros are no void mode of the collection
        levels = [p[:, n] for p in parts if len(p) and p[:, n + 1].min() < p[:, n + 1].max()]
        void_below = voids.dark_mode_threshold(np.concatenate(levels)) if levels else None
        if void_below is not None:
            dark = sample[:, n + 1] < np.float32(void_below)
            return X[~dark], lo, hi, void_below, X[dark]
    return X, lo, hi, None, X[:0]


def fit(feature_arrays, feature_names, settings: dict, compute, log=None, batch_images: int = 32,
        find_transitions=None, choose_assignment=None, scan_progress=None) -> Model:
    """Fit scaling and NMF on lazy (y, x, f) feature arrays of many images.

    ``feature_arrays`` is a sequence (a list, or one that builds each graph on
    access). ``compute`` evaluates a list of dask objects (threads, processes
    or a cluster). The pixel sample for the scaling (and for ``cd``) is bounded
    by ``sample_size`` whatever the collection's size.

    ``find_transitions(H, lo, hi)`` (see :func:`bigseg.regions.find_transitions`)
    names the components that live on phase boundaries. A boundary is not a
    phase, so when there are some, H is fitted again on the sample with one
    component more per boundary (while the count stays below the number of
    features and within the exact solver's): the phases get back the capacity the edges took, and the new fit's
    rows most like the old boundaries are kept as ``transitions``, explaining
    edge pixels in the solve and never labelling one.

    ``choose_assignment(H, lo, hi, transitions, n_phases)`` (see
    :func:`bigseg.regions.choose_assignment`) decides whether the phases are H's
    rows or centres in activation space, returning ``(centres or None, spread, info)``.

    ``scan_progress(k, seed)``, when given, is told of each fit of the scan
    behind ``n_components: auto`` (:func:`bigseg.selectk.auto_k`), which can
    be the longest part of a fit.

    With ``void_class: auto``, the feature arrays carry the void levels after
    the features (``features.stack_names``) and the sample is tested for a
    void mode first (:func:`void_split`); where there is one, the void is
    phase 0 and everything above runs for the other ``n_components - 1``
    phases on the pixels that are no void.
    """
    t0 = time.perf_counter()
    X, lo, hi, void_below, X_void = void_split(feature_arrays, settings, compute, batch_images)
    if void_below is not None:
        # the void phase is one of the phases asked for; NMF finds the others on the remaining pixels
        if settings["n_components"] != "auto":
            settings = dict(settings, n_components=settings["n_components"] - 1)
        if log:
            log(f"void phase: void level below {void_below:.4f} ({len(X_void)} of {len(X) + len(X_void)} "
                f"sampled pixels)")
    auto = None
    if settings["n_components"] == "auto":
        from .selectk import auto_k     # select-k's scan builds on this module's fit

        k, scan = auto_k(X, settings, scan_progress)
        settings = dict(settings, n_components=k)
        auto = {"chosen": k, "scan": scan}
        if log:
            log(f"n_components auto: k = {k} (stability " + ", ".join(f"{r['k']}: {r['stability']:.3f}"
                                                                   for r in scan) + ")")
    if X.shape[0] < settings["n_components"]:
        raise ValueError(f"only {X.shape[0]} pixels sampled; fewer than n_components={settings['n_components']}")
    t1 = time.perf_counter()
    if settings["solver"] == "cd":
        H, report = fit_cd(X, settings)
    else:
        H, report = fit_minibatch(feature_arrays, lo, hi, settings, X, compute, log, void_below)
    H = _finish_H(X, H, settings, report)
    transitions = []
    if find_transitions is not None and settings["transition_share"] < 1:
        transitions, shares = find_transitions(H, lo, hi)
        report["between_shares"] = shares
        k2 = settings["n_components"] + len(transitions)
        # fewer components than features: with as many, any basis of the data's cone fits it exactly, so
        # the refit's rows would be no parts (auto k stays below the feature count for the same reason)
        if transitions and k2 <= min(X.shape[1] - 1, nnls.MAX_EXACT_K):
            # the refit runs on the in-memory sample whatever the solver: it is the sample cd fits on
            H2, refit = fit_cd(X, dict(settings, n_components=k2))
            H2 = _finish_H(X, H2, settings, report)
            transitions = match_rows(H[transitions], H2)
            H = H2
            report["refit"] = {"n_components": k2, "n_iter": refit["n_iter"], "converged": refit["converged"]}
        report["transitions"] = len(transitions)
        report["phases_asked"] = settings["n_components"]
    if auto:
        report["n_components_auto"] = auto
    W = nnls.solve(X, H, *regularisation(settings, H.shape[1]))
    report.update(reconstruction(X, H, settings, W))
    H, transitions, phase_names = _in_stable_order(X, W, H, transitions, feature_names, report)
    centres = spread = None
    if choose_assignment is not None:
        centres, spread, report["assignment"] = choose_assignment(H, lo, hi, transitions, settings["n_components"])
        if centres is not None:
            W = nnls.solve(X, H, *regularisation(settings, H.shape[1]))
            centres, phase_names = _centres_in_stable_order(X, W, H, centres, feature_names, report)
    if void_below is not None:
        H, transitions, phase_names = _with_void(H, transitions, phase_names, X, X_void, void_below, feature_names,
                                                 report)
        settings = dict(settings, n_components=settings["n_components"] + 1)
        if "phases_asked" in report:
            report["phases_asked"] += 1
    report.update({"solver": settings["solver"], "init": resolved_init(settings),
                   "sample_pixels": int(X.shape[0] + X_void.shape[0]),
                   "sample_seconds": round(t1 - t0, 3), "fit_seconds": round(time.perf_counter() - t1, 3)})
    # a model carries what defines the segmentation and nothing of where or how this run went
    keep = {k: settings[k] for k in MODEL_KEYS}
    return Model(H=H, scale_lo=lo, scale_hi=hi, feature_names=list(feature_names), settings=keep, report=report,
                 transitions=transitions, phase_names=phase_names, centres=centres, spread=spread,
                 void_below=void_below)


def _with_void(H, transitions, phase_names, X, X_void, void_below, feature_names, report):
    """H with the void phase's fingerprint as row 0, the boundary rows moved by one, the void's name first,
    and the void in ``report`` (its threshold and share, and its pixel profile first in ``report["phases"]``)."""
    H = np.vstack([voids.fingerprint(X_void, H.shape[1]), H])
    share = len(X_void) / max(len(X) + len(X_void), 1)
    report["void"] = {"below": round(float(void_below), 6), "sample_share": round(share, 6)}
    profile = X_void.mean(axis=0) if len(X_void) else H[0]
    for entry in report.get("phases", []):
        entry["sample_share"] = round(entry["sample_share"] * (1.0 - share), 6)
    report["phases"] = [{"sample_share": round(share, 6),
                         "pixel_means": {n: round(float(v), 6) for n, v in zip(feature_names, profile)}}] \
        + report.get("phases", [])
    return H, [j + 1 for j in transitions], [voids.VOID_NAME] + list(phase_names)


def _in_stable_order(X, W, H, transitions, feature_names, report):
    """H with its phases darkest first and its boundary rows last, the new boundary indices and the
    phases' names (``phases.order``, ``phases.describe``).

    The fit's own order depends on the seed and the image order; this one only on
    what the phases are, so labels and CSV columns compare between runs. The
    pixel profiles the names come from go into ``report["phases"]``.
    """
    from .phases import describe, order

    rows, profiles, shares = order(X, W, H, transitions, feature_names)
    H = H[rows]
    n_phases = len(rows) - len(transitions)
    report["phases"] = [{"sample_share": round(float(s), 6),
                         "pixel_means": {n: round(float(v), 6) for n, v in zip(feature_names, p)}}
                        for s, p in zip(shares, profiles)]
    return H, list(range(n_phases, len(rows))), describe(profiles, feature_names)


def _centres_in_stable_order(X, W, H, centres, feature_names, report):
    """Phase centres darkest first (by the mean scaled intensity of the sample pixels nearest each) and
    the phases' names; the pixel profiles go into ``report["phases"]`` (as :func:`_in_stable_order`)."""
    from .phases import brightness_column, describe

    near = nearest_centre(np.asarray(W).T, centres)
    fingerprints_ = normalise_rows(centres @ H)
    profiles, shares = [], []
    for j in range(len(centres)):
        mask = near == j
        profiles.append(X[mask].mean(axis=0) if mask.any() else fingerprints_[j])
        shares.append(float(mask.mean()) if len(X) else 0.0)
    profiles = np.asarray(profiles, np.float64)
    col = brightness_column(feature_names)
    rows = sorted(range(len(centres)), key=lambda j: (profiles[j, col], tuple(centres[j])))
    centres, profiles = centres[rows], profiles[rows]
    report["phases"] = [{"sample_share": round(shares[j], 6),
                         "pixel_means": {n: round(float(v), 6) for n, v in zip(feature_names, profiles[i])}}
                        for i, j in enumerate(rows)]
    return centres, describe(profiles, feature_names)


def _finish_H(X, H, settings, report):
    """The orthogonal refinement (when asked for) and unit-norm rows."""
    if settings["orthogonality"] > 0:
        H, extra = refine_orthogonal(X, H, settings)
        report.update(extra)
    return normalise_rows(H)


def match_rows(rows: np.ndarray, H: np.ndarray) -> list[int]:
    """The rows of ``H`` most like ``rows`` (cosine, one each, Hungarian), sorted.

    After a refit with one component more per boundary these are the new fit's
    boundary components: the fingerprint of an edge does not change when the
    phases gain capacity.
    """
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(-(normalise_rows(rows) @ normalise_rows(H).T))
    return sorted(int(c) for c in cols)


__all__ = ["Model", "ModelError", "ConfigError", "fit", "scaled_sample", "apply_scaling", "fit_scaling"]
