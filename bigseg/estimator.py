"""The per-image path as a scikit-learn style estimator: :class:`PhaseSegmenter`.

One image goes through the same steps as in ``bigseg run``: read, grey and crop
(:func:`read_grey`, :func:`grey_array`), the processing grid
(:func:`processing_shape`), preprocessing and features (:func:`lazy_features`
for a fit, the same arrays computed in one block when the image is one chunk),
the coupled W solve against the model's H (:func:`image_activations`), and the
label map at the image's own size (:func:`segment_image`). The CLI's labels and
:meth:`PhaseSegmenter.predict` on the same model agree bit for bit.

Nothing here touches an output folder: no store, no records, no PNGs. A run
over a folder (``bigseg.pipeline``) adds those around the same functions.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from . import config, constituents, features, io, preprocess, regions, voids
from .cluster import threaded_get
from .model import Model, activation_shares, fit as fit_model, regularisation
from .segment import activations_graph, labels_at, resample_linear, spatial_block

log = logging.getLogger("bigseg")

__all__ = ["PhaseSegmenter", "NotFittedError", "segment_image", "image_activations", "memberships",
           "read_grey", "grey_array", "processing_shape", "lazy_features", "image_features",
           "transition_windows", "fit_constituents", "constituent_activations"]

#: what a model keeps of the settings that :meth:`PhaseSegmenter.predict` reads from the estimator at call
#: time (the segment stage's coupling); :meth:`PhaseSegmenter.save` writes their current values, so a saved
#: estimator predicts what it predicted before
_CALL_TIME_KEYS = tuple(k for k in config.MODEL_KEYS if config.OPTIONS[k].role == "segment")


def __getattr__(name):
    # NotFittedError derives from scikit-learn's, made on first use: importing scikit-learn costs about a
    # second a process, which 'bigseg run' and 'bigseg segment' (importing this module for its per-image
    # functions) never need to pay
    if name == "NotFittedError":
        return _not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _not_fitted_error() -> type:
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    class NotFittedError(SklearnNotFittedError):
        """The estimator is used before :meth:`PhaseSegmenter.fit` or :meth:`PhaseSegmenter.load`.

        A subclass of ``sklearn.exceptions.NotFittedError`` (so also of
        ``ValueError`` and ``AttributeError``): code catching scikit-learn's
        catches it.
        """

    NotFittedError.__module__, NotFittedError.__qualname__ = __name__, "NotFittedError"    # as pickle finds it
    return NotFittedError


# --- one image, from file or memory, to its grey pixels -----------------------------------

def read_grey(path, settings: dict, table: dict | None = None) -> tuple[np.ndarray, float | None, int]:
    """One file as ``bigseg ingest`` stores it: grey, the bottom rows cropped; and its pixel size.

    Parameters
    ----------
    path : str or Path
        An image file (TIFF, PNG, JPEG, BMP) or a Zarr / OME-Zarr array.
    settings : dict
        Validated settings: ``crop_bottom``, ``max_image_pixels``, ``pixel_size``.
    table : dict, optional
        ``{file stem: micrometres per pixel}`` from ``io.read_pixel_sizes``
        (the ``pixel_size_csv`` setting); it wins over the file's metadata.

    Returns
    -------
    grey : ndarray, 2-D
        uint8, uint16 or float32, as the store would hold it.
    pixel_size : float or None
        Micrometres per pixel: the table, then the file, then ``pixel_size``.
    crop : int
        The rows removed at the bottom (``crop_bottom: auto`` resolved).
    """
    path = Path(path)
    crop_setting = settings["crop_bottom"]
    if io.is_chunked_input(path):
        # a tiled TIFF or a Zarr array: ingest copies it a band at a time; here it is held whole
        with io.ChunkedImage(path, max_pixels=settings["max_image_pixels"]) as img:
            crop = io.detect_data_bar_banded(img) if crop_setting == "auto" else int(crop_setting)
            rows = img.shape[0] - crop
            if rows <= 0:
                raise io.ImageReadError(f"{path}: crop_bottom={crop} removes the whole image ({img.shape[0]} rows)")
            grey, file_pixel_size = img.rows(0, rows), img.pixel_size
    else:
        img = io.read_image(path, max_pixels=settings["max_image_pixels"])
        grey, crop = io.crop_rows(img.data, crop_setting, img.source)
        file_pixel_size = img.pixel_size
    pixel_size, _ = io.choose_pixel_size((table or {}).get(path.stem), file_pixel_size, None,
                                         settings["pixel_size"])
    return np.ascontiguousarray(grey), pixel_size, int(crop)


def grey_array(image, settings: dict, name: str = "image", channel_axis: int | None = None) -> np.ndarray:
    """An in-memory image as the store would hold it: grey (Rec. 601 luma of RGB), uint8/uint16 kept,
    other types as float32.

    An array is taken to be the picture as it should be segmented: it is cropped
    only when ``crop_bottom`` is an integer. ``crop_bottom: auto`` (the default)
    looks for an SEM data bar in files only; crop arrays yourself, or set the
    number of rows.

    Parameters
    ----------
    image : array_like
        A 2-D grey image, or with ``channel_axis`` a 3-D colour image.
    settings : dict
        Validated settings: ``crop_bottom``.
    name : str
        What error messages call the image.
    channel_axis : int, optional
        The colour axis (3 or 4 long: RGB, RGBA) of a 3-D array, as scikit-image
        takes it. A 3-D array without it is refused: it could as well be a
        stack of grey images, which a list of 2-D arrays says unambiguously.

    Raises
    ------
    ValueError
        One line naming the image and its shape, when the array is not a 2-D
        image or a 3-D one with the colour axis named.
    """
    arr = np.asarray(image)
    if channel_axis is not None:
        arr = _channels_last(arr, channel_axis, name)
    elif arr.ndim == 3:
        raise ValueError(f"{name}: a 3-D array of shape {arr.shape} is a stack or a colour image; pass a stack as "
                         f"a list of 2-D images (list(stack)), a colour image with channel_axis=-1")
    elif arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D grey image (a list of them for several), got an array of "
                         f"shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got an array of dtype {arr.dtype}")
    grey = io._grey_values(io._to_grey(arr, name))
    if grey.size == 0:
        raise ValueError(f"{name}: image is empty")
    io._refuse_non_finite(grey, name)
    if isinstance(settings["crop_bottom"], int) and settings["crop_bottom"]:
        grey, _ = io.crop_rows(grey, settings["crop_bottom"], name)
    return np.ascontiguousarray(grey)


def _channels_last(arr: np.ndarray, channel_axis, name: str) -> np.ndarray:
    """A 3-D colour array with its named colour axis (3 or 4 long) moved last."""
    if arr.ndim != 3:
        raise ValueError(f"{name}: channel_axis={channel_axis} needs a 3-D colour image, got an array of "
                         f"shape {arr.shape}")
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)) \
            or not -3 <= channel_axis < 3:
        raise ValueError(f"{name}: channel_axis must be an axis of the 3-D image (-1 for the last), "
                         f"got {channel_axis!r}")
    if arr.shape[channel_axis] not in (3, 4):
        raise ValueError(f"{name}: channel_axis={channel_axis} has {arr.shape[channel_axis]} entries in an array of "
                         f"shape {arr.shape}; a colour axis has 3 (RGB) or 4 (RGBA)")
    return np.moveaxis(arr, channel_axis, -1)


def processing_shape(native_shape, settings: dict, pixel_size: float | None = None,
                     name: str = "image") -> tuple[int, int]:
    """The processing grid of an image of ``native_shape`` (rows, columns), both checked to hold the halo.

    Raises ``features.ImageTooSmallError``, or ``ValueError`` when ``resize`` is
    'physical' and the pixel size is unknown (``pipeline.checked_shape``).
    """
    shape = preprocess.target_shape(native_shape[:2], settings["resize"], pixel_size,
                                    settings["target_pixel_size"], name)
    features.check_size(native_shape[:2], settings, name)
    features.check_size(shape, settings, name)
    return shape


# --- features ------------------------------------------------------------------------------

def lazy_features(grey, settings: dict, pixel_size: float | None = None, name: str = "image"):
    """Lazy ``(y, x, f)`` float32 features of a 2-D numpy or dask image, as ``pipeline.lazy_features``
    builds them.

    The image is preprocessed as one block (resize and CLAHE see the whole
    frame), then cut into ``features.chunk_side`` chunks with exact halos, so
    the values do not depend on the chunking. (``pipeline`` preprocesses large
    native-size images tile by tile instead; ``clahe.preprocess_graph`` equals
    this bit for bit.)
    """
    import dask.array as da
    from dask.base import tokenize

    shape = processing_shape(grey.shape, settings, pixel_size, name)
    if not isinstance(grey, da.Array):
        # name=False: a random key instead of hashing every pixel of the image
        grey = da.from_array(np.asarray(grey), chunks=grey.shape, name=False)
    pp = {k: settings[k] for k in ("resize", "normalize_percentiles", "clahe", "clahe_clip_limit",
                                   "clahe_kernel_size", "void_class")}
    whole = tuple((s,) for s in shape)
    side = features.chunk_side(shape, settings)
    grey = grey.rechunk(grey.shape)
    if voids.enabled(settings):
        # one task resizes once for both planes
        both = grey.map_blocks(preprocess.stacked_planes, settings=pp, shape=shape, new_axis=0,
                               chunks=((2,),) + whole, dtype=np.float32,
                               name=f"bigseg-planes-{tokenize(grey, pp, shape)}")
        norm, plane = both[0], both[1].rechunk(side)
    else:
        norm = grey.map_blocks(preprocess.normalised_image, settings=pp, shape=shape, chunks=whole,
                               dtype=np.float32, name=f"bigseg-normalise-{tokenize(grey, pp, shape)}")
        plane = None
    pre = norm.map_blocks(preprocess.equalise, settings=pp, dtype=np.float32,
                          name=f"bigseg-preprocess-{tokenize(grey, pp, shape)}")
    return features.stack_features(pre.rechunk(side), plane, settings, name)


def image_features(grey: np.ndarray, settings: dict, pixel_size: float | None = None,
                   name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """The preprocessed image and its ``(y, x, f)`` features, computed in memory as one block.

    The in-memory twin of :func:`lazy_features`: the same numbers (the chunked
    features have exact halos), without a dask graph, for an image whose
    features fit in memory. :func:`image_activations` takes this path for an
    image of one chunk; ``bigseg compare``'s baselines take it for every image.

    Parameters
    ----------
    grey : ndarray, 2-D
        The image as stored: grey and cropped (:func:`read_grey`, :func:`grey_array`).
    settings : dict
        Validated settings: the preprocessing, feature and size settings.
    pixel_size : float, optional
        Micrometres per pixel; needed only when ``resize`` is 'physical'.
    name : str
        What error messages call the image.

    Returns
    -------
    pre : ndarray, float32, shape (y, x)
        The image resized to the processing grid (:func:`processing_shape`),
        normalised and equalised, in [0, 1].
    feats : ndarray, float32, shape (y, x, channels)
        The feature stack (``features.stack_names``): the features of
        ``settings["features"]``, then the two void levels when ``void_class`` is on,
        as float32, not rounded to the store's precision.
    """
    norm, plane = preprocess.planes(grey, settings, processing_shape(grey.shape, settings, pixel_size, name))
    pre = preprocess.equalise(norm, settings)
    return pre, features.stack_block(pre, plane, features.feature_params(settings))


def _as_stored(feats, settings: dict):
    """The features as a run reads them back: rounded to the store's precision when it stores them.

    ``bigseg run`` fits and segments from ``store.zarr`` when ``store_features``
    resolves to true (the minibatch solver, by default), so its numbers are the
    rounded ones; computed on the fly they are the float32 ones.
    """
    if not config.resolved_store_features(settings):
        return feats
    from .store import round_significand

    dtype, bits = settings["feature_dtype"], settings["feature_keep_bits"]
    if isinstance(feats, np.ndarray):
        return round_significand(feats, dtype, bits)
    return feats.map_blocks(round_significand, dtype, bits, dtype=dtype)


# --- the per-image path ------------------------------------------------------------------------

def image_activations(grey: np.ndarray, model: Model, settings: dict, pixel_size: float | None = None,
                      name: str = "image") -> np.ndarray:
    """Activations ``(k, y, x)`` float32 of every component of ``model`` (phases and boundaries) on the
    image's processing grid: what ``bigseg run`` stores in ``store.zarr/activations``.

    ``grey`` is the image as stored (:func:`read_grey`, :func:`grey_array`).
    The regularisation comes from the model's settings and the spatial coupling
    (``spatial_weight``, ``spatial_sweeps``) from ``settings``, as in the
    segment stage. An image that fits one chunk is computed in one numpy block,
    without dask; a larger one as a chunked dask graph on threads (exact halos:
    the same numbers either way). Either way the activations are held whole.
    """
    shape = processing_shape(grey.shape, settings, pixel_size, name)
    if one_chunk(shape, settings):
        # one chunk: the fused feature kernel and the solve see exactly the block a dask task would
        return block_activations(_as_stored(image_features(grey, settings, pixel_size, name)[1], settings),
                                 model, settings)
    l1, l2 = regularisation(model.settings, model.H.shape[1])
    feats = _as_stored(lazy_features(grey, settings, pixel_size, name), settings)
    acts = activations_graph(feats, model.H, model.scale_lo, model.scale_hi, l1, l2, float(settings["spatial_weight"]),
                             int(settings["spatial_sweeps"]), model.void_below).compute(scheduler=threaded_get)
    return np.ascontiguousarray(np.moveaxis(acts, 2, 0), dtype=np.float32)


def one_chunk(shape, settings: dict) -> bool:
    """Whether a processing grid of ``shape`` is one chunk: computed as one numpy block, without dask."""
    return features.chunk_side(shape, settings) >= max(shape)


def block_activations(feats: np.ndarray, model: Model, settings: dict) -> np.ndarray:
    """Activations ``(k, y, x)`` float32 of a whole image's ``(y, x, f)`` features, as one block."""
    l1, l2 = regularisation(model.settings, model.H.shape[1])
    weight, sweeps = float(settings["spatial_weight"]), int(settings["spatial_sweeps"])
    acts = spatial_block(feats, model.H, model.scale_lo, model.scale_hi, l1, l2, weight, sweeps if weight > 0 else 0,
                         model.void_below)
    return np.ascontiguousarray(np.moveaxis(acts, 2, 0), dtype=np.float32)


def segment_image(grey: np.ndarray, model: Model, settings: dict, pixel_size: float | None = None,
                  name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """One image segmented with a fitted model: the per-image path of ``bigseg run`` and ``bigseg segment``.

    Parameters
    ----------
    grey : ndarray, 2-D
        The image as stored: grey and cropped (:func:`read_grey`, :func:`grey_array`).
    model : bigseg.model.Model
        A fitted model; its model-bound settings must equal ``settings``'.
    settings : dict
        Validated settings (``config.validate``).
    pixel_size : float, optional
        Micrometres per pixel; needed only when ``resize`` is 'physical'.
    name : str
        What error messages call the image.

    Returns
    -------
    acts : ndarray, float32, shape (n_components, y, x)
        Every component's activation on the processing grid (:func:`image_activations`).
    labels : ndarray, uint8, shape grey.shape
        Phase labels at the image's own size: the phases' scores
        (``Model.phase_scores``: the phase rows of ``acts``, or the affine
        nearest-centre scores) with boundary pixels settled on the processing
        grid (``regions.settled_maps``), resampled bilinearly, then argmax
        (``export.export_image``); boundary components label no pixel.
    """
    acts = image_activations(grey, model, settings, pixel_size, name)
    scores = regions.settled_maps(model, acts, settings, memberships=False)[0]
    return acts, labels_at(scores, grey.shape[:2])


def memberships(acts: np.ndarray) -> np.ndarray:
    """Soft labels of ``(component, y, x)`` activations: each pixel's W divided by its sum, float32
    (:func:`bigseg.model.activation_shares`; equal shares where W is all zero)."""
    return activation_shares(np.asarray(acts, dtype=np.float32))


def transition_windows(sources, compute, images: int = regions.TRANSITION_IMAGES) -> list[np.ndarray]:
    """In-memory features of a few images spread over the collection, each at most a window
    of ``regions.TRANSITION_WINDOW`` pixels a side (its centre): what decides which components are boundaries
    (``images`` of them), and what the microconstituents are fitted on (:func:`fit_constituents`).

    ``compute`` evaluates a list of dask objects (``cluster.Runner.compute``);
    ``bigseg run`` and :meth:`PhaseSegmenter.fit` both decide with it.
    """
    n = len(sources)
    picks = sorted(set(np.linspace(0, n - 1, min(n, images)).round().astype(int).tolist()))
    windows = []
    for i in picks:
        arr = sources[i]
        arr = getattr(arr, "data", arr)          # a stored xarray DataArray, or a dask array
        cuts = [slice(max(0, (s - regions.TRANSITION_WINDOW) // 2), max(0, (s - regions.TRANSITION_WINDOW) // 2)
                      + regions.TRANSITION_WINDOW) for s in arr.shape[:2]]
        windows.append(arr[cuts[0], cuts[1]])
    return [np.asarray(w, dtype=np.float32) for w in compute(windows)]


def fit_constituents(model: Model, sources, compute, settings: dict) -> Model:
    """``model`` with its microconstituent level fitted (``n_constituents`` > 0; else unchanged).

    The level is fitted on the settled phase memberships and labels of a few
    images spread over the collection (:func:`transition_windows`,
    ``constituents.FIT_IMAGES`` of them), computed with ``model`` exactly as
    segmenting computes them; the phases themselves are not touched.
    ``bigseg run`` and :meth:`PhaseSegmenter.fit` both call it after the phases' fit.
    """
    n = int(settings.get("n_constituents", 0))
    model.constituents = None
    if not n:
        return model
    memberships_, labels = [], []
    for feats in transition_windows(sources, compute, constituents.FIT_IMAGES):
        _, probs, _, after = regions.settled_maps(model, block_activations(feats, model, settings), settings)
        memberships_.append(probs)
        labels.append(after)
    model.constituents = constituents.fit(memberships_, labels, n, settings, list(model.phase_names))
    model.report["constituents"] = model.constituents["report"]
    level = model.constituents["report"]
    log.info("constituents: %d at window scales %s px (mean intercept of the phases %.2f px): %s",
             n, level["sigmas"], level["mean_intercept"], ", ".join(model.constituents["names"]))
    if level["adds_nothing"]:
        log.warning("constituents: every constituent is one smooth phase: the collection has no region that "
                    "mixes phases at the scales measured, so the level adds nothing to the phases")
    return model


def constituent_activations(probs, model: Model, settings: dict):
    """Constituent activations ``(n_constituents, y, x)`` of settled phase memberships ``(n_phases, y, x)``
    (numpy, or dask chunk by chunk with exact halos: ``constituents.lazy_activations``)."""
    if isinstance(probs, np.ndarray):
        return constituents.activations(probs, model.constituents, settings["truncate"])
    return constituents.lazy_activations(probs, model.constituents, settings["truncate"])


# --- the images of a fit, streamed -----------------------------------------------------------

class _Input:
    """One image of a fit: an array held by reference, or a file read again whenever its pixels are needed."""

    def __init__(self, item, index: int, settings: dict, table, channel_axis=None):
        self.settings = settings
        if isinstance(item, (str, os.PathLike)):
            self.path, self.name = Path(item), str(item)
            grey, self.pixel_size, crop = read_grey(self.path, settings, table)
            # a re-read crops the rows found now: 'auto' is not detected again for every pass
            self.read_settings = dict(settings, crop_bottom=crop)
            self.array = None
        else:
            self.path, self.name = None, f"image {index}"
            grey = self.array = grey_array(item, settings, self.name, channel_axis)
            self.pixel_size = settings["pixel_size"]
        self.shape, self.dtype = grey.shape, grey.dtype
        processing_shape(self.shape, settings, self.pixel_size, self.name)    # fail before any fitting

    def grey(self) -> np.ndarray:
        return self.array if self.array is not None else read_grey(self.path, self.read_settings)[0]

    def features(self):
        import dask
        import dask.array as da

        grey = self.array
        if grey is None:
            grey = da.from_delayed(dask.delayed(self.grey, pure=False)(), self.shape, self.dtype)
        return _as_stored(lazy_features(grey, self.settings, self.pixel_size, self.name), self.settings)


class _FeatureSources:
    """The lazy feature arrays of a fit's images as a sequence, each graph built when asked for
    (``pipeline.FeatureSources`` without the store): a fit holds one batch of graphs at a time."""

    def __init__(self, inputs):
        self.inputs = inputs

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i].features()


def _expand(images) -> list:
    """The fit's images in order; a path may be a folder or a glob, expanded as ``--input`` is."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    elif isinstance(images, np.ndarray):
        raise TypeError("fit takes a sequence of images (arrays or paths); put a single image in a list")
    out = []
    for item in images:
        out += io.find_images([item]) if isinstance(item, (str, os.PathLike)) else [item]
    return out


# --- the estimator -------------------------------------------------------------------------------

class PhaseSegmenter:
    """Unsupervised phase segmentation of micrographs with NMF, as ``bigseg run`` does it.

    Every key of the settings schema (``bigseg.config.OPTIONS``, described in
    ``configs/default.yaml`` and ``bigseg config --help``) is a keyword
    parameter of the same name and default (a list default is a tuple here),
    stored as given and checked by :meth:`fit`, :meth:`transform` and
    :meth:`predict` (``config.validate``), as scikit-learn checks parameters
    in ``fit``. ``PhaseSegmenter(**bigseg.load_settings(path))`` takes a
    settings file.

    Parameters
    ----------
    n_components : int or 'auto', default=5
        Phases to find (components of the NMF); at most the number of features.
    resize : int, 'native', 'physical' or (int, int), default=512
        The processing grid: the longer side at this many pixels.
    features : str or list of str, default='method'
        The feature preset or list of feature kinds.
    spatial_weight : float, default=2.0
        Coupling of neighbouring pixels in the segmentation solve.
    crop_bottom : 'auto' or int, default='auto'
        Rows of an SEM data bar removed from files ('auto' detects it);
        arrays are cropped only by a number of rows.
    sample_size : int, default=200000
        Pixels drawn across all images for the fit.
    random_state : int, default=0
        Seed of sampling and initialisation.
    n_constituents : int, default=0
        Microconstituents fitted after the phases (0 = off): regions made of
        several phases at scales measured on the collection
        (:mod:`bigseg.constituents`); :meth:`predict_constituents` labels
        them. The phases and their labels do not depend on it.
    **other settings
        Every other key of ``bigseg.config.OPTIONS``, each an explicit keyword
        (``inspect.signature(PhaseSegmenter)`` lists them). Settings only a run
        over a folder uses (``cluster``, ``store_features``,
        ``chunk_memory``) are accepted so that settings files load unchanged;
        the estimator always computes in this process, on threads.

    Attributes
    ----------
    model_ : bigseg.model.Model
        The fitted model: H, the feature scaling, settings and fit report.
        ``model_.save`` writes the folder ``bigseg segment`` reads.
    components_ : ndarray of shape (n_phases_, n_features_in_)
        The phases' H rows (unit norm): label ``i`` is ``components_[i]``.
        With a void phase (``void_class``; ``model_.void_below`` is its
        threshold) it is label 0, and its row is the mean of its pixels'
        features: it labels by the level before CLAHE, not by the solve.
    boundary_components_ : ndarray of shape (n_boundaries, n_features_in_)
        H rows that live on phase boundaries: they explain edge pixels in the
        solve and never label a pixel.
    n_phases_ : int
        Phases found; fewer than ``n_components`` when boundary components
        took capacity a refit could not give back (a warning says so).
    n_features_in_ : int
        Feature channels NMF sees per pixel.
    feature_names_in_ : ndarray of str
        Their names (``features.feature_names``; the void levels after them in
        the stored stack are no NMF feature).
    constituent_names_ : list of str or None
        The microconstituents' names (from their fingerprints, e.g. "fine
        particles of <phase> in <phase>"), or None with ``n_constituents=0``.

    Notes
    -----
    An image is a 2-D grey array, a 3-D colour array with its colour axis
    named (``channel_axis=-1``, as scikit-image takes it; Rec. 601 luma is
    used), or the path of an image file, read, greyed and cropped as
    ``bigseg ingest`` does (``crop_bottom: auto`` finds an SEM data bar).
    Arrays are used as given: they are cropped only when ``crop_bottom`` is an
    integer. :meth:`predict`, :meth:`predict_proba` and :meth:`transform` take
    one image and return one array, or take a list (or any iterable) of images
    and return a list, one array per image. A 3-D array without
    ``channel_axis`` is refused: a stack of images is a list of 2-D arrays.

    :meth:`predict` and :meth:`predict_proba` answer on the image's own
    (cropped) grid, as ``bigseg run`` writes ``labels/<image>.png``: the
    activations, or the memberships, interpolated bilinearly from the
    *processing grid* (the image at the model's scale, from ``resize``: by
    default the scale that brings the fit's images to 512 pixels on the longer
    side). :meth:`transform` returns the activations on the processing grid,
    as ``store.zarr`` holds them.

    scikit-learn's conventions hold and its own checks run in the tests:
    ``get_params``/``set_params``/``sklearn.base.clone``,
    ``sklearn.utils.validation.check_is_fitted``, ``__sklearn_tags__``
    (images in, so no 2-D ``(samples, features)`` input), and
    :class:`NotFittedError` derives from scikit-learn's. The class does not
    derive from ``sklearn.base.BaseEstimator``: that would import scikit-learn
    (a second a process) wherever bigseg's per-image functions are used.

    Examples
    --------
    >>> import numpy as np
    >>> from bigseg import PhaseSegmenter, synth
    >>> images = [img for img, _ in synth.family("islands", 2, shape=(192, 256))]
    >>> seg = PhaseSegmenter(n_components=3, resize="native", sample_size=6000).fit(images)
    >>> seg.n_phases_, seg.components_.shape
    (3, (3, 6))
    >>> labels = seg.predict(images[0])
    >>> labels.shape, labels.dtype
    ((192, 256), dtype('uint8'))
    >>> seg.predict_proba(images[0]).shape
    (3, 192, 256)
    >>> [m.shape for m in seg.predict(images)]
    [(192, 256), (192, 256)]
    """

    def __init__(self, n_components=5, *, crop_bottom="auto", pixel_size=None, pixel_size_csv=None,
                 max_image_pixels=2 ** 30, resize=512, target_pixel_size=None, normalize_percentiles=(0.0, 100.0),
                 clahe=True, clahe_clip_limit=0.01, clahe_kernel_size=None, features="method", gradient_sigma=1.0,
                 laplacian_sigma=1.0, variance_size=7, blur_sigmas=(2.0, 8.0), hessian_sigmas=(2.0,),
                 structure_sigmas=(1.0, 4.0), local_std_sigmas=(8.0,), closing_sizes=(9, 17, 33),
                 opening_sizes=(9, 17, 33), void_class="auto", truncate=4.0, chunk_size="auto",
                 chunk_memory="auto", store_features="auto", feature_dtype="float16", feature_keep_bits=8,
                 solver="cd", beta_loss="frobenius", alpha_W=0.0, alpha_H="same", l1_ratio=0.0, max_iter=400,
                 tol=1e-4, init="auto", sample_size=200_000, batch_size=4096, minibatch_fraction=0.25,
                 random_state=0, orthogonality=0.0, transition_share=0.75, assignment="auto", n_constituents=0,
                 spatial_weight=2.0, spatial_sweeps=5, boundary_radius="auto", phase_names=None, cluster=None):
        # one keyword per key of config.OPTIONS, with its default (tests/test_estimator.py checks the two agree),
        # so get_params, clone and tab completion see every setting; stored as given, checked when used
        given = locals()
        for key in config.OPTIONS:
            setattr(self, key, given[key])

    # --- parameters, as scikit-learn's BaseEstimator has them ---
    @classmethod
    def _get_param_names(cls) -> list[str]:
        return list(inspect.signature(cls.__init__).parameters)[1:]

    def get_params(self, deep=True):
        """Every setting of this estimator, by name (the same object as given, as ``sklearn.base.clone`` needs).

        Parameters
        ----------
        deep : bool, default=True
            Ignored: no setting is an estimator itself.

        Returns
        -------
        dict
        """
        return {key: getattr(self, key) for key in self._get_param_names()}

    def set_params(self, **params):
        """Set settings by name; returns ``self``. Values are checked when next used, as in scikit-learn."""
        names = self._get_param_names()
        for key in params:
            if key not in names:
                raise ValueError(f"Invalid parameter {key!r} for estimator {type(self).__name__}"
                                 f"{_did_you_mean(key)}. Valid parameters are: {', '.join(names)}.")
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def __repr__(self):
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        params = self.get_params()
        # n_components first, as the signature has it; then the other settings that differ from their default
        changed = [f"n_components={self.n_components!r}"] + [
            f"{k}={v!r}" for k, v in params.items() if k != "n_components" and not _same(v, defaults[k])]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        """scikit-learn's tags: fitted before use, deterministic (seeded), no target; its input is images
        (``two_d_array`` False: a 2-D array is one picture, not ``(samples, features)``)."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False), transformer_tags=TransformerTags(),
                    input_tags=InputTags(two_d_array=False), requires_fit=True, non_deterministic=False)

    def __sklearn_is_fitted__(self) -> bool:
        """Whether :meth:`fit` or :meth:`load` gave this estimator a model
        (``sklearn.utils.validation.check_is_fitted`` asks)."""
        return getattr(self, "model_", None) is not None

    def _settings(self) -> dict:
        settings = config.validate(self.get_params())
        if settings["cluster"] is not None:
            warnings.warn("cluster: PhaseSegmenter computes in this process; the setting is used by "
                          "'bigseg run' only", UserWarning, stacklevel=3)
        return settings

    # --- fit ---
    def fit(self, images, y=None, *, channel_axis=None):
        """Fit the feature scaling and the NMF on a collection of images, as ``bigseg run`` does.

        Parameters
        ----------
        images : iterable of ndarray or path
            2-D grey or 3-D colour arrays, image files, folders or glob
            patterns (expanded in ``bigseg run --input`` order). Streamed:
            features are computed a batch of images at a time and only the
            fit's pixel sample is kept; a file is read again whenever a pass
            needs its pixels, and arrays are kept by reference.
        y : None
            Ignored.
        channel_axis : int, optional
            The colour axis of 3-D arrays (``-1``: RGB or RGBA last); without
            it a 3-D array is refused (:func:`grey_array`).

        Returns
        -------
        self : PhaseSegmenter
        """
        settings = self._settings()
        table = io.read_pixel_sizes(settings["pixel_size_csv"]) if settings["pixel_size_csv"] else None
        inputs = [_Input(item, i, settings, table, channel_axis) for i, item in enumerate(_expand(images))]
        if not inputs:
            raise ValueError("no image to fit on")
        # every image at the images' one scale, which the model carries to the images it segments
        settings = preprocess.scaled_settings(settings, [inp.shape for inp in inputs],
                                              [inp.pixel_size for inp in inputs])
        for inp in inputs:
            inp.settings = settings
            _warn_scale(settings, inp.pixel_size, inp.name)
        from .cluster import Runner

        runner = Runner(None, quiet=True)
        compute = runner.compute
        sources = _FeatureSources(inputs)
        model = fit_model(sources, features.feature_names(settings), settings, compute, log=log.info,
                          batch_images=runner.batch_images,
                          **regions.fit_hooks(lambda: transition_windows(sources, compute), settings))
        model.report["images"] = len(inputs)
        fit_constituents(model, sources, compute, settings)
        if settings["phase_names"] is not None:    # names only: the fit is the same without them
            from .rename import set_names

            set_names(model, settings["phase_names"])
        asked = model.settings["n_components"]     # the k fitted, also where the setting is auto
        if model.n_phases < asked:
            from .diagnose import BOUNDARY_SUGGESTION

            warnings.warn(f"{len(model.transitions)} of the {asked} components live on phase "
                          f"boundaries and the features allow no refit with more components: "
                          f"{model.n_phases} phases; {BOUNDARY_SUGGESTION}", UserWarning, stacklevel=2)
        return self._adopt(model)

    def _adopt(self, model: Model) -> "PhaseSegmenter":
        self.model_ = model
        self.components_ = np.array(model.phase_H)
        self.boundary_components_ = np.array(model.H[model.transitions]).reshape(-1, model.H.shape[1])
        self.n_phases_ = model.n_phases
        self.n_features_in_ = len(model.feature_names)
        self.feature_names_in_ = np.asarray(model.feature_names, dtype=object)
        self.constituent_names_ = None if model.constituents is None else list(model.constituents["names"])
        return self

    # --- one image ---
    def _checked(self) -> tuple[Model, dict]:
        model = getattr(self, "model_", None)
        if model is None:
            raise _not_fitted_error()(f"this {type(self).__name__} is not fitted yet: call fit(images) or "
                                 f"{type(self).__name__}.load(path) first")
        settings = self._settings()
        if isinstance(model.settings["resize"], dict):
            # resize (N, native, physical) chose the scale of the fit's images: every image is segmented at it
            settings = dict(settings, **preprocess.scale_settings(model.settings))
        model.check_settings(settings)   # a feature setting changed since the fit would compute other numbers
        return model, settings

    def _grey(self, image, settings, channel_axis=None, name="image") -> tuple[np.ndarray, float | None, str]:
        if isinstance(image, (str, os.PathLike)):
            table = io.read_pixel_sizes(settings["pixel_size_csv"]) if settings["pixel_size_csv"] else None
            grey, pixel_size, _ = read_grey(image, settings, table)
            name = str(image)
        else:
            grey, pixel_size = grey_array(image, settings, name, channel_axis), settings["pixel_size"]
        _warn_scale(settings, pixel_size, name)
        return grey, pixel_size, name

    def _per_image(self, images, channel_axis, answer):
        """``answer(model, settings, grey, pixel_size, name)`` of one image, or the list of answers of a list
        or iterable of images (arrays or paths), in order."""
        model, settings = self._checked()
        if _one_image(images):
            return answer(model, settings, *self._grey(images, settings, channel_axis))
        return [answer(model, settings, *self._grey(item, settings, channel_axis, f"image {i}"))
                for i, item in enumerate(images)]

    def transform(self, images, *, channel_axis=None):
        """The phases' activations (the NMF's W) of an image, on the processing grid.

        Parameters
        ----------
        images : ndarray, path, or list or iterable of them
            One image (a 2-D grey array, a 3-D colour array with
            ``channel_axis``, or an image file), or several.
        channel_axis : int, optional
            The colour axis of 3-D arrays (``-1``: RGB or RGBA last).

        Returns
        -------
        ndarray, float32, shape (components, y, x); a list of them for several images
            One row per non-boundary component of H; with phases as H rows
            (``model_.centres`` is None) row ``i`` is phase ``i`` and belongs to
            ``components_[i]``; with phases as centres, the phases come from all
            of W (:meth:`predict_proba`). With a void phase (``model_.void_below``)
            row 0 is its test, 1 where the pixel is a void and 0 elsewhere.
            ``(y, x)`` is the processing grid (``resize``), as ``store.zarr``
            holds it, not necessarily the image's size.
        """
        return self._per_image(images, channel_axis, _activations)

    def predict(self, images, *, channel_axis=None):
        """Phase labels of an image at its own (cropped) size, equal to ``bigseg run``'s ``labels/`` PNG.

        Parameters
        ----------
        images : ndarray, path, or list or iterable of them
            One image (a 2-D grey array, a 3-D colour array with
            ``channel_axis``, or an image file), or several.
        channel_axis : int, optional
            The colour axis of 3-D arrays (``-1``: RGB or RGBA last).

        Returns
        -------
        ndarray, uint8, shape (rows, columns); a list of them for several images
            Labels in ``range(n_phases_)``.
        """
        return self._per_image(images, channel_axis, _labels)

    def predict_proba(self, images, *, channel_axis=None):
        """Phase memberships of an image at its own (cropped) size, the grid of :meth:`predict`.

        With phases as H rows: W / sum(W) over the phase rows (equal shares
        where W is all zero). With phases as centres in activation space: the
        posterior of a Gaussian mixture about the centres
        (``Model.phase_memberships``). They are computed on the processing
        grid and interpolated bilinearly to the image's size, as the labels'
        scores are; interpolation keeps them non-negative and summing to 1.

        A pixel of a thin band between two regions (``boundary_radius``) has
        its memberships of its band's phase and of the region it went to
        exchanged, as its label was (``regions.settled_maps``).

        Parameters
        ----------
        images : ndarray, path, or list or iterable of them
            One image (a 2-D grey array, a 3-D colour array with
            ``channel_axis``, or an image file), or several.
        channel_axis : int, optional
            The colour axis of 3-D arrays (``-1``: RGB or RGBA last).

        Returns
        -------
        ndarray, float32, shape (n_phases_, rows, columns); a list of them for several images
            Non-negative, summing to 1 over the first axis; where one phase
            clearly leads, it is the label :meth:`predict` gives.
        """
        return self._per_image(images, channel_axis, _memberships)

    def predict_constituents(self, images, *, channel_axis=None):
        """Microconstituent labels of an image at its own (cropped) size, equal to ``bigseg run``'s
        ``constituents/`` PNG (``n_constituents`` > 0 at the fit).

        Each pixel's settled phase memberships on the processing grid averaged
        in windows at the level's scales, solved against the constituents' H
        and scored against their centres (:mod:`bigseg.constituents`),
        resampled bilinearly, then arg max. The phase labels (:meth:`predict`)
        do not depend on it.

        Parameters
        ----------
        images : ndarray, path, or list or iterable of them
            One image (a 2-D grey array, a 3-D colour array with
            ``channel_axis``, or an image file), or several.
        channel_axis : int, optional
            The colour axis of 3-D arrays (``-1``: RGB or RGBA last).

        Returns
        -------
        ndarray, uint8, shape (rows, columns); a list of them for several images
            Labels in ``range(n_constituents)``; ``constituent_names_`` names them.
        """
        model, _ = self._checked()
        if model.constituents is None:
            raise _not_fitted_error()(f"this {type(self).__name__} has no constituents: fit it with n_constituents > 0")
        return self._per_image(images, channel_axis, _constituents)

    # --- persistence ---
    def save(self, path) -> None:
        """Write the model folder (``model.json``, ``model.npz``, ``fingerprints.png``) that
        ``bigseg segment`` and :meth:`load` read.

        The segment settings (``spatial_weight``, ``spatial_sweeps``) are saved
        as they are now, so the loaded estimator predicts what this one does;
        the scale of the fit's images (``resize``, ``clahe_kernel_size``) goes
        with them. How files are cropped (``crop_bottom``) is a fact of the
        files, not of the model: the loaded estimator crops as it is told.
        """
        model, settings = self._checked()
        kept = dict(model.settings, **{k: settings[k] for k in _CALL_TIME_KEYS})
        dataclasses.replace(model, settings=kept).save(path)

    @classmethod
    def load(cls, path) -> "PhaseSegmenter":
        """A fitted estimator from a model folder (:meth:`save`, or ``<out>/model`` of ``bigseg run``).

        Its parameters are the model's settings (lists as tuples), every other one at its default.
        Raises ``bigseg.model.ModelError`` naming the file and field of a
        missing or damaged model.
        """
        model = Model.load(path)
        # lists as tuples, as the signature's defaults are: a loaded estimator's parameters equal a new one's
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.settings.items()})._adopt(model)


def _one_image(images) -> bool:
    """Whether ``images`` is one image (a path, or an array or anything numpy reads as one) rather than a
    list or iterable of images."""
    if isinstance(images, (str, os.PathLike)):
        return True
    if isinstance(images, (list, tuple)):
        return False
    return hasattr(images, "__array__") or hasattr(images, "__array_interface__")


def _activations(model: Model, settings: dict, grey, pixel_size, name) -> np.ndarray:
    return image_activations(grey, model, settings, pixel_size, name)[model.phases]


def _labels(model: Model, settings: dict, grey, pixel_size, name) -> np.ndarray:
    return segment_image(grey, model, settings, pixel_size, name)[1]


def _memberships(model: Model, settings: dict, grey, pixel_size, name) -> np.ndarray:
    proba = regions.settled_maps(model, image_activations(grey, model, settings, pixel_size, name), settings)[1]
    return np.ascontiguousarray(resample_linear(proba, grey.shape[:2]), dtype=np.float32)


def _constituents(model: Model, settings: dict, grey, pixel_size, name) -> np.ndarray:
    probs = regions.settled_maps(model, image_activations(grey, model, settings, pixel_size, name), settings)[1]
    return labels_at(constituent_activations(probs, model, settings), grey.shape[:2])


def _warn_scale(settings: dict, pixel_size, name: str) -> None:
    """A warning naming an image that cannot be brought to the scale of the fit (``preprocess.scale_mismatch``)."""
    why = preprocess.scale_mismatch(settings["resize"], pixel_size, name)
    if why:
        warnings.warn(why, UserWarning, stacklevel=3)


def _did_you_mean(key: str) -> str:
    near = difflib.get_close_matches(str(key), config.OPTIONS, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):    # a loaded list, a default tuple
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:          # an array given as a value compares element-wise
        return False
