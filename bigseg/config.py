"""Settings: one flat schema, YAML files, ``--set key=value`` overrides.

Every hyperparameter of the method is a key here. Validation happens before any
work starts and names the offending key together with what is allowed, so a
typo in a config never costs a long run.

:class:`Settings` holds checked settings as one read-only object (by attribute
or by key); the per-stage key lists (``FIT_KEYS``, ``Settings.stage("fit")``, ...) are all
derived from each option's ``role``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .nnls import MAX_EXACT_K
from .safety import excerpt, read_text, short_name


class ConfigError(ValueError):
    """A setting is unknown or has a value that is not allowed."""


#: what a key is to a saved model (``Option.role``): "features" keys change the numbers a model
#: was fitted on, "fit" and "segment" keys are the method's; a key with no role is a run setting or a
#: fact of one collection's files (``crop_bottom``: a data bar's height), which a model never carries
ROLES = ("features", "fit", "segment")


@dataclass(frozen=True)
class Option:
    default: Any
    check: Callable[[str, Any], Any]
    help: str
    stage: str
    role: str | None = None


# --- value checkers: each returns the normalised value or raises ConfigError ---

def _int(lo=None, hi=None):
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: expected an integer, got {excerpt(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}: expected a finite integer, got {v}")
        if int(v) != v:
            raise ConfigError(f"{key}: expected an integer, got {excerpt(v)}")
        v = int(v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{key}: must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
        return v
    return check


def _float(lo=None, hi=None, lo_open=False):
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {excerpt(v)}")
        try:
            v = float(v)
        except OverflowError:      # an int beyond float's range
            v = math.inf
        # NaN passes every comparison below and would run into the results; inf overflows later
        if not math.isfinite(v):
            raise ConfigError(f"{key}: expected a finite number, got {v}")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise ConfigError(f"{key}: must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            raise ConfigError(f"{key}: must be <= {hi}, got {v}")
        return v
    return check


def _choice(*choices):
    def check(key, v):
        if v not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {excerpt(v)}")
        return v
    return check


def _text(key, v):
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: expected a non-empty string, got {excerpt(v)}")
    return v


def _texts(key, v):
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{key}: expected a list of strings, got {excerpt(v)}")
    return list(v)


def _phase_names(key, v):
    """Names of the phases in label order: one-line strings, no two alike (the count is checked against
    the model once the fit has found its phases)."""
    from .phases import check_names

    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{key}: expected a list of names, one per phase in label order, got {excerpt(v)}")
    try:
        return check_names(v, len(v), key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _memory(key, v):
    import re

    if not isinstance(v, str) or not re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGT]i?B\s*", v, re.IGNORECASE):
        raise ConfigError(f"{key}: expected a size such as '16GiB' or '64GB', got {excerpt(v)}")
    return v.strip()


#: largest size in bytes (1 EiB): far beyond any machine, so a larger one is a typo
MAX_BYTES = 2 ** 60


def _bytes(key, v):
    """A size in bytes: a positive integer, or a string such as '512MiB'."""
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        n = v
    else:
        from dask.utils import parse_bytes

        try:
            n = int(parse_bytes(_memory(key, v)))
        except OverflowError:          # hundreds of digits read as a float overflow to inf
            raise ConfigError(f"{key}: size {excerpt(v)} is not a finite number of bytes") from None
    if n > MAX_BYTES:
        raise ConfigError(f"{key}: at most {MAX_BYTES} bytes (1 EiB), got {excerpt(v)}")
    return n


def _walltime(key, v):
    import re

    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        # YAML 1.1 reads an unquoted 01:30:00 as sexagesimal seconds (5400); give it back as written
        return f"{v // 3600:02d}:{v // 60 % 60:02d}:{v % 60:02d}"
    if not isinstance(v, str) or not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", v):
        raise ConfigError(f"{key}: expected a SLURM time such as '02:00:00' or '1-00:00:00', got {excerpt(v)}")
    return v


def _script_line(check):
    """``check``, and then no control character (a newline would start a line of the job script of its
    own) and no ``#SBATCH`` (a directive of its own inside a value)."""
    def inner(key, v):
        v = check(key, v)
        for text in ([v] if isinstance(v, str) else v):
            if any(ord(c) < 32 or ord(c) == 127 for c in text) or "#SBATCH" in text.upper():
                raise ConfigError(f"{key}: {excerpt(text)} holds a control character or '#SBATCH'; each value "
                                  f"is one line of the job script, written as given")
        return v
    return inner


#: keys of the ``cluster`` section, each with its checker; passed to dask-jobqueue's SLURMCluster
CLUSTER_KEYS = {
    "type": _choice("slurm"),
    "queue": _script_line(_text),
    "account": _script_line(_text),
    "cores": _int(1),
    "processes": _int(1),
    "memory": _memory,
    "walltime": _walltime,
    "jobs": _int(1),
    "interface": _script_line(_text),
    "local_directory": _script_line(_text),
    "log_directory": _script_line(_text),
    "job_extra_directives": _script_line(_texts),
    "job_script_prologue": _script_line(_texts),
}
CLUSTER_REQUIRED = ("type", "cores", "memory")


def _cluster(key, v):
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: expected a mapping (type: slurm, queue, cores, memory, walltime, jobs, ...) "
                          f"or null, got {excerpt(v)}")
    out = {"jobs": 1, "walltime": "01:00:00"}
    for sub, value in v.items():
        if sub not in CLUSTER_KEYS:
            near = difflib.get_close_matches(str(sub), CLUSTER_KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown setting {key}.{short_name(str(sub))}{hint}; allowed: {', '.join(CLUSTER_KEYS)}")
        out[sub] = CLUSTER_KEYS[sub](f"{key}.{sub}", value)
    missing = [k for k in CLUSTER_REQUIRED if k not in out]
    if missing:
        raise ConfigError(f"{key}: missing {', '.join(missing)} (a SLURM cluster needs type, cores and memory)")
    return out


def _auto_or(check):
    """``check``, with ``auto`` allowed as well."""
    def inner(key, v):
        if v == "auto":
            return v
        try:
            return check(key, v)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (or auto)") from None
    return inner


def _bool(key, v):
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {excerpt(v)}")
    return v


def _crop(key, v):
    if v == "auto":
        return v
    # a data bar is a few percent of a frame: more rows than any image has is a typo
    return _int(0, 2 ** 20)(key, v)


#: largest side of the processing grid: a typo (an extra digit) must not allocate a giant grid
MAX_RESIZE_SIDE = 32768
#: largest Gaussian sigma (px): the halo each chunk reads is truncate * sigma, beyond a chunk's side
MAX_SIGMA = 256.0
#: largest window side (px) of local variance and granulometry, for the same reason
MAX_WINDOW = 1025
#: most entries of a list of scales or windows: each is a feature channel held for every pixel
MAX_SCALES = 32


#: keys of the scale form of ``resize`` (:func:`bigseg.preprocess.collection_scale` writes it into a model)
SCALE_KEYS = ("factor", "um_per_pixel")


def _resize(key, v):
    """``native``, ``physical``, an int (the longer side, aspect ratio kept), ``[height, width]``, or a
    scale ``{factor, um_per_pixel}``: processing pixels per native pixel, and micrometres per processing
    pixel for images whose pixel size is known (either may be null, not both)."""
    if isinstance(v, dict):
        bad = [k for k in v if k not in SCALE_KEYS]
        if bad:
            raise ConfigError(f"{key}: the scale form takes {', '.join(SCALE_KEYS)}; got {bad[0]!r}")
        # a factor beyond a side's own limits would be a typo: at most 64x up (and 1/MAX_RESIZE_SIDE down)
        out = {"factor": _optional(_float(1.0 / MAX_RESIZE_SIDE, 64.0))(f"{key}.factor", v.get("factor")),
               "um_per_pixel": _optional(_float(0, lo_open=True))(f"{key}.um_per_pixel", v.get("um_per_pixel"))}
        if out["factor"] is None and out["um_per_pixel"] is None:
            raise ConfigError(f"{key}: the scale form needs factor, um_per_pixel or both")
        return out
    if v in ("native", "physical"):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return _int(8, MAX_RESIZE_SIDE)(key, v)
    if isinstance(v, str) and "x" in v:
        try:
            v = [int(p) for p in v.lower().split("x")]
        except ValueError:
            raise ConfigError(f"{key}: expected 'native', 'physical', N, HxW or [H, W]; got {excerpt(v)}") from None
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ConfigError(f"{key}: expected 'native', 'physical', N, HxW or [H, W]; got {excerpt(v)}")
    return [_int(8, MAX_RESIZE_SIDE)(key, p) for p in v]


def _path(key, v):
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: expected a file path, got {excerpt(v)}")
    return v


def _percentiles(key, v):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ConfigError(f"{key}: expected [low, high] percentiles, got {excerpt(v)}")
    lo, hi = (_float(0, 100)(key, p) for p in v)
    if lo >= hi:
        raise ConfigError(f"{key}: low percentile must be below high, got {excerpt(v)}")
    return [lo, hi]


def _clahe_kernel(key, v):
    """A CLAHE tile side, or ``[rows, columns]`` (scikit-image's default tile of a grid is 1/8 of each side,
    at least 1)."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ConfigError(f"{key}: expected a tile side N or [rows, columns], got {v!r}")
        return [_int(1, 8192)(key, p) for p in v]
    return _int(2, 8192)(key, v)


def _optional(check):
    def wrapped(key, v):
        return None if v is None else check(key, v)
    return wrapped


def _alpha_h(key, v):
    return v if v == "same" else _float(0)(key, v)


def _too_many(key, v):
    if len(v) > MAX_SCALES:
        raise ConfigError(f"{key}: expected a non-empty list of at most {MAX_SCALES} entries, got {len(v)}")


def _sigmas(key, v):
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{key}: expected a non-empty list of positive numbers, got {excerpt(v)}")
    _too_many(key, v)
    return [_float(0, MAX_SIGMA, lo_open=True)(key, s) for s in v]


def _odd_sizes(key, v):
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{key}: expected a non-empty list of odd window sides >= 3, got {excerpt(v)}")
    _too_many(key, v)
    sizes = [_int(3, MAX_WINDOW)(key, s) for s in v]
    even = [s for s in sizes if s % 2 == 0]
    if even:
        raise ConfigError(f"{key}: window sides must be odd (centred on the pixel), got {even[0]}")
    return sizes


#: the feature kinds a setting may list; each is implemented by an entry of ``features.FEATURES`` (which
#: checks it has one per name, in this order); named here, as every other setting's choices are, because
#: features imports this module and the schema must not import scipy's kernels
FEATURE_NAMES = ("intensity", "gradient", "laplacian", "variance", "blur", "hessian", "structure", "local_std",
                 "closing", "opening")
#: named feature sets: "method" is the method's six features
FEATURE_PRESETS = {
    "method": ["intensity", "gradient", "laplacian", "variance", "blur"],
    "extended": ["intensity", "gradient", "laplacian", "variance", "blur", "hessian", "structure", "local_std"],
}

OPTIONS: dict[str, Option] = {
    # ingest
    # no role: a data bar's height is a fact of one collection's files, so a model never carries it
    "crop_bottom": Option("auto", _crop, "rows of SEM information band to remove: 'auto' detects the data bar, or N",
                          "ingest"),
    "pixel_size": Option(None, _optional(_float(0, lo_open=True)),
                         "micrometres per pixel of images whose file does not say (TIFF tags, pixel_size_csv)", "ingest"),
    "pixel_size_csv": Option(None, _optional(_path), "CSV with columns image,pixel_size_um (image = file stem)", "ingest"),
    "max_image_pixels": Option(2 ** 30, _int(1, 2 ** 48),
                               "largest image (pixels) read; a file claiming more is refused as a likely "
                               "decompression bomb; raise it for larger montages", "ingest"),
    # preprocess
    "resize": Option(512, _resize,
                     f"the processing grid: N = the longer side at N pixels, aspect ratio kept (so every filter "
                     f"sees the microstructure alike along x and y); 'native'; 'physical' (to "
                     f"target_pixel_size); an exact HxW / [H, W] (sides at most {MAX_RESIZE_SIDE}); or a scale "
                     f"{{factor: F, um_per_pixel: U}}. A fit turns N, native and physical into the scale of its "
                     f"images (the median of theirs: micrometres per processing pixel where pixel sizes are "
                     f"known, the native-to-processing factor always), resamples every image to it, and its "
                     f"model carries it, so a montage is segmented at its frames' scale",
                     "preprocess", role="features"),
    "target_pixel_size": Option(None, _optional(_float(0, lo_open=True)),
                                "micrometres per pixel of the processing grid when resize is 'physical'", "preprocess",
                                role="features"),
    "normalize_percentiles": Option([0.0, 100.0], _percentiles, "per-image intensity percentiles mapped to 0 and 1",
                                    "preprocess", role="features"),
    "clahe": Option(True, _bool, "apply CLAHE after normalisation", "preprocess", role="features"),
    "clahe_clip_limit": Option(0.01, _float(0, 1, lo_open=True), "CLAHE clip limit (skimage convention, 0-1]",
                               "preprocess", role="features"),
    # scikit-image pads the image by about a tile on each side, so a tile far beyond any image costs memory
    "clahe_kernel_size": Option(None, _optional(_clahe_kernel), "CLAHE tile side in pixels (at most 8192), or "
                                "[rows, columns] of it; null = 1/8 of the image's processing grid, which a fit "
                                "turns into its images' tile (the median) so that a montage and its frames see "
                                "the same tile", "preprocess", role="features"),
    # features
    "features": Option("method", None, "a preset (" + ", ".join(FEATURE_PRESETS) + ") or a list of kinds from "
                       + ", ".join(FEATURE_NAMES), "features", role="features"),
    "gradient_sigma": Option(1.0, _float(0, MAX_SIGMA, lo_open=True), "Gaussian sigma of the gradient magnitude",
                             "features", role="features"),
    "laplacian_sigma": Option(1.0, _float(0, MAX_SIGMA, lo_open=True), "Gaussian sigma of the Laplacian",
                              "features", role="features"),
    "variance_size": Option(7, _int(3, MAX_WINDOW), "window side of the local variance (odd)", "features",
                            role="features"),
    "blur_sigmas": Option([2.0, 8.0], _sigmas, "Gaussian blur sigmas, one feature each", "features", role="features"),
    "hessian_sigmas": Option([2.0], _sigmas, "scales of the Hessian eigenvalues (ridges and blobs)", "features",
                             role="features"),
    "structure_sigmas": Option([1.0, 4.0], _sigmas,
                               "[gradient, integration] scales of the structure-tensor eigenvalues (edges, "
                               "orientation)", "features", role="features"),
    "local_std_sigmas": Option([8.0], _sigmas, "scales of the local standard deviation (texture at phase size)",
                               "features", role="features"),
    "closing_sizes": Option([9, 17, 33], _odd_sizes,
                            "window sides of grey closings (granulometry: a dark region keeps its level only if "
                            "wider than the window, so phases of different size separate)", "features",
                            role="features"),
    "opening_sizes": Option([9, 17, 33], _odd_sizes,
                            "window sides of grey openings (the same for bright regions)", "features",
                            role="features"),
    "void_class": Option("auto", _choice("auto", "off"),
                         "auto: when the collection's darkest pixels, before CLAHE, form an intensity mode of their "
                         "own (pores, cracks: no signal), they become one phase (label 0, 'voids') and NMF fits "
                         "the other n_components - 1 on the remaining pixels; found by a Tukey fence and a dip "
                         "beyond the sample's noise, so a collection without voids is segmented as with off. "
                         "Adds two channels (void_level, void_pixel) to the feature stack", "features", role="features"),
    # scipy's default is 4; past 16 the tails add nothing but halo
    "truncate": Option(4.0, _float(1, 16), "Gaussian kernels are cut at truncate * sigma (sets the halo)",
                       "features", role="features"),
    # one task holds its chunk with halo and every feature channel
    "chunk_size": Option("auto", _auto_or(_int(32, 16384)),
                         "spatial chunk side of features, activations and labels; auto = the image's longer side "
                         "rounded up to 256, at most 1024 (a micrograph is one chunk, with no halo computed twice)",
                         "features"),
    "chunk_memory": Option("auto", _auto_or(_bytes),
                           "memory one task may hold for its chunk (bytes or a size such as '256MiB'); caps "
                           "chunk_size auto: auto = a quarter of each worker thread's share of memory. Results do "
                           "not depend on it", "features"),
    "store_features": Option("auto", _auto_or(_bool),
                             "write features to store.zarr: true, false, or auto = only for solver 'minibatch', "
                             "which streams them many times (cd samples once; segment computes them on the fly)",
                             "features"),
    "feature_dtype": Option("float16", _choice("float16", "float32"), "dtype of stored features", "features"),
    "feature_keep_bits": Option(8, _int(1, 23),
                                "significand bits kept in stored features (bit rounding, so they compress): "
                                "8 of float16's 10 is a relative step of 2^-9, finer than an 8-bit grey level",
                                "features"),
    # fit
    "n_components": Option(5, _auto_or(_int(1, MAX_EXACT_K)),
                           f"number of NMF components (phases), at most {MAX_EXACT_K} (the exact segmentation "
                           f"solve enumerates all 2^k supports) and at most the number of features; auto = "
                           f"the largest k, 2 to 8 and below the feature count, whose fits on resampled halves "
                           f"of the pixel sample agree (select-k's stability)", "fit", role="fit"),
    "solver": Option("cd", _choice("cd", "minibatch"), "cd: full batch on a sample; minibatch: streamed", "fit",
                     role="fit"),
    "beta_loss": Option("frobenius", _choice("frobenius"), "NMF loss (segmentation solves least squares)", "fit",
                        role="fit"),
    "alpha_W": Option(0.0, _float(0), "regularisation of W", "fit", role="fit"),
    "alpha_H": Option("same", _alpha_h, "regularisation of H, or 'same' as alpha_W", "fit", role="fit"),
    "l1_ratio": Option(0.0, _float(0, 1), "L1 share of the regularisation (0 = L2, 1 = L1)", "fit", role="fit"),
    "max_iter": Option(400, _int(1, 100_000), "cd: iterations; minibatch: passes over the streamed data", "fit",
                       role="fit"),
    "tol": Option(1e-4, _float(0), "convergence tolerance", "fit", role="fit"),
    "init": Option("auto", _choice("auto", "nndsvd", "nndsvda", "nndsvdar"),
                   "NNDSVD-family initialisation; auto: nndsvd for cd, nndsvda for minibatch", "fit", role="fit"),
    # the sample is held in memory, in float32 and again in float64 by the fit
    "sample_size": Option(200_000, _int(100, 100_000_000),
                          "pixels drawn across all images for cd and for scaling (held in memory; at most 10^8)",
                          "fit", role="fit"),
    "batch_size": Option(4096, _int(16, 2 ** 20), "pixels per minibatch", "fit", role="fit"),
    "minibatch_fraction": Option(0.25, _float(0, 1, lo_open=True), "share of each streamed block used per pass", "fit",
                                 role="fit"),
    # scikit-learn seeds numpy's RandomState, whose seeds are 32-bit
    "random_state": Option(0, _int(0, 2 ** 32 - 1), "seed of sampling and initialisation", "fit", role="fit"),
    "orthogonality": Option(0.0, _float(0), "penalty on overlap between H rows (orthogonal NMF; 0 = off)", "fit",
                            role="fit"),
    "transition_share": Option(0.75, _float(0, 1, lo_open=True),
                               "a component is a boundary, not a phase, when more than this share of its pixels "
                               "lies between two other labels (within twice the derivative sigma): it is refitted "
                               "with one component more per boundary where the features allow, keeps explaining "
                               "edge pixels, and never labels a pixel; 1 = off. Rims scored 0.88-0.996 on every set "
                               "we have, real phases (thin films and small pores included) at most 0.67",
                               "fit", role="fit"),
    "assignment": Option("auto", _choice("auto", "components", "centres"),
                         "how pixels become phases. components: the phase component with the largest activation "
                         "(parts-based: a phase is one H row); centres: the nearest of n_components centres in "
                         "the space of all activations (k-means over W: phases that share their parts but differ "
                         "in how much of each); auto: on a few images of the fit, the one whose maps are clearly "
                         "more coherent regions (at most 0.9 of the other's ragged pixels: a phase is a region), "
                         "within that the one whose phases are better separated in the features "
                         "(Calinski-Harabasz: a phase has its own texture); never centres of which one lives on "
                         "boundaries",
                         "fit", role="fit"),
    "n_constituents": Option(0, _int(0, MAX_EXACT_K),
                             "microconstituents fitted after the phases (0 = off): regions made of several phases "
                             "at a scale (fine particles of one phase in another, a smooth region of one phase), "
                             "found by NMF on each pixel's phase memberships averaged in windows whose scales come "
                             "from the collection's own phase regions (mean intercept length); written to "
                             "constituents/ beside labels/, which it never changes", "fit", role="fit"),
    # segment
    "spatial_weight": Option(2.0, _float(0), "graph-Laplacian coupling of neighbouring pixels' activations (0 = off)",
                             "segment", role="segment"),
    "spatial_sweeps": Option(5, _int(0, 50), "Jacobi sweeps of the coupled solve (also the tile halo)", "segment",
                             role="segment"),
    "boundary_radius": Option("auto", _auto_or(_int(0, 50)),
                              "half width (pixels, processing grid) of the bands the boundary-pixel step gives "
                              "to the regions they part: a pixel on a part of its phase thinner than twice this, "
                              "whose nearest other phase has a third phase beyond it (a rim between an island "
                              "and its matrix), takes the nearest; a film between two "
                              "grains of one phase or a precipitate in a matrix stays; voids never move. auto = "
                              "twice the larger derivative sigma (the reach of the filters' answer to an edge); "
                              "0 = off", "segment", role="segment"),
    # no role: names label the outputs and never change a label, so a model neither carries nor checks them
    "phase_names": Option(None, _optional(_phase_names),
                          "names of the phases in label order (darkest first), e.g. [matrix, austenite, pores], "
                          "for the CSV header, legends and summary; null = descriptive names from the fit "
                          "('bigseg rename' changes them afterwards)", "segment"),
    # --- where it runs ---
    "cluster": Option(None, _cluster,
                      "null = this machine; or a SLURM cluster built with dask-jobqueue: {type: slurm, queue, "
                      "account, cores, processes, memory, walltime, jobs, interface, local_directory, "
                      "log_directory, job_extra_directives, job_script_prologue}; --workers/--scheduler win",
                      "cluster"),
}


def _features_check(key, v):
    if isinstance(v, str) and v in FEATURE_PRESETS:
        return v
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{key}: expected a preset ({', '.join(FEATURE_PRESETS)}) or a non-empty list from "
                          f"{', '.join(FEATURE_NAMES)}; got {excerpt(v)}")
    bad = [f for f in v if f not in FEATURE_NAMES]
    if bad:
        raise ConfigError(f"{key}: unknown feature {excerpt(bad[0])}; allowed: {', '.join(FEATURE_NAMES)}")
    if len(set(v)) != len(v):
        raise ConfigError(f"{key}: features listed twice in {excerpt(v)}")
    return list(v)


OPTIONS["features"] = dataclasses.replace(OPTIONS["features"], check=_features_check)


def _keys(role: str) -> tuple[str, ...]:
    return tuple(k for k, o in OPTIONS.items() if o.role == role)


#: the keys of each role, in the schema's order (``Settings.stage``), and "model": every key a saved model carries
_STAGES = {role: _keys(role) for role in ROLES}
_STAGES["model"] = _STAGES["features"] + _STAGES["fit"] + _STAGES["segment"]

#: settings that change the numbers a model was fitted on; a model only applies
#: to features computed with the same values.
MODEL_BOUND_KEYS = _STAGES["features"]
#: settings of the fit: changing them refits
FIT_KEYS = _STAGES["fit"]
#: settings of the segment stage alone: changing them redoes the labels, not the fit
SEGMENT_KEYS = _STAGES["segment"]
#: everything a saved model carries: what defines the segmentation, never where or how a run goes
MODEL_KEYS = _STAGES["model"]


def defaults() -> dict[str, Any]:
    return {k: (list(o.default) if isinstance(o.default, list) else o.default) for k, o in OPTIONS.items()}


def _unknown(key) -> ConfigError:
    # YAML reads unquoted yes, no, on, off and numbers as other types than strings
    near = difflib.get_close_matches(key, OPTIONS, n=1) if isinstance(key, str) else []
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    if not isinstance(key, str):
        hint = f" (YAML reads this key as a {type(key).__name__}, not as text: setting names are words)"
    return ConfigError(f"unknown setting {excerpt(key)}{hint}; allowed: {', '.join(OPTIONS)}")


def validate(settings: dict[str, Any]) -> dict[str, Any]:
    """Check every key and value; return a complete, normalised copy."""
    out = defaults()
    for key, value in settings.items():
        if key not in OPTIONS:
            raise _unknown(key)
        out[key] = OPTIONS[key].check(key, value)
    if out["resize"] == "physical" and out["target_pixel_size"] is None:
        raise ConfigError("target_pixel_size: required when resize is 'physical' (micrometres per pixel)")
    if out["solver"] == "minibatch" and out["init"] == "nndsvd":
        raise ConfigError("init: 'nndsvd' leaves zeros that multiplicative updates never leave; "
                          "use 'nndsvda' or 'nndsvdar' with solver 'minibatch'")
    if len(out["structure_sigmas"]) != 2:
        raise ConfigError(f"structure_sigmas: expected [gradient sigma, integration sigma], got {out['structure_sigmas']}")
    max_bits = {"float16": 10, "float32": 23}[out["feature_dtype"]]
    if out["feature_keep_bits"] > max_bits:
        raise ConfigError(f"feature_keep_bits: {out['feature_dtype']} has {max_bits} significand bits, "
                          f"got {out['feature_keep_bits']}")
    if (out["phase_names"] is not None and out["n_components"] != "auto"
            and len(out["phase_names"]) > out["n_components"]):
        raise ConfigError(f"phase_names: {len(out['phase_names'])} names for n_components={out['n_components']}; "
                          f"give one name per phase")
    if out["variance_size"] % 2 == 0:
        raise ConfigError(f"variance_size: must be odd, got {out['variance_size']}")
    from .features import feature_names    # here, not at the top: features imports this module

    n_features = len(feature_names(out))
    if out["n_components"] != "auto" and out["n_components"] > n_features:
        # NNDSVD and the exact solve both need at least as many features as components
        raise ConfigError(f"n_components: {out['n_components']} components but features {excerpt(out['features'])} "
                          f"compute only {n_features}; lower n_components or add features")
    return out


def resolved_init(settings: dict) -> str:
    """The NNDSVD variant ``init`` stands for with this solver.

    ``auto`` picks nndsvd for coordinate descent, which can leave the SVD's
    zeros and so keeps components sparse and distinct, and nndsvda for the
    multiplicative minibatch updates, which never leave a zero.
    """
    if settings["init"] != "auto":
        return settings["init"]
    return "nndsvd" if settings["solver"] == "cd" else "nndsvda"


def default_yaml() -> str:
    """The text of ``configs/default.yaml``: every key, grouped by stage, its help as a comment."""
    lines = ["# bigseg default settings: every key of the method, with its default.",
             "# Override with a file of your own (bigseg run my.yaml ...), -k, or --set key=value.", ""]
    stage = None
    for key, opt in OPTIONS.items():
        if opt.stage != stage:
            stage = opt.stage
            lines.append(f"# --- {stage} ---")
        lines.append(f"# {opt.help}")
        lines.append(f"{key}: {yaml.safe_dump(opt.default, default_flow_style=True).splitlines()[0]}")
    return "\n".join(lines) + "\n"


def resolved_store_features(settings: dict) -> bool:
    """Whether a run writes the feature store: ``auto`` stores only what the minibatch solver re-reads."""
    v = settings["store_features"]
    return settings["solver"] == "minibatch" if v == "auto" else bool(v)


def _one_line(exc) -> str:
    """A YAML error as one line: the problem and where (PyYAML's own text spans several, with a caret)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return " ".join(f"{problem}{where}".split())


#: deepest nesting of lists and mappings a settings value may have (the schema's deepest is 3)
MAX_YAML_DEPTH = 32
#: most values a settings file or ``--set`` value may stand for once every alias is expanded: a file of
#: aliases of aliases ("billion laughs") stands for 10^9 from a few lines
MAX_YAML_VALUES = 100_000
#: largest settings file read
MAX_CONFIG_BYTES = 2**20


class _Refused(yaml.MarkedYAMLError):
    """A YAML document bigseg will not read (too deep, too large once expanded, a key given twice)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with its nesting bounded and every mapping's keys checked to differ."""

    _depth = 0

    def compose_node(self, parent, index):
        # the composer recurses per level: bounded here, a 50,000-deep list is one line, not a RecursionError
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    again = key in seen
                    seen.add(key)
                except TypeError:        # an unhashable key: PyYAML's own error names it
                    continue
                if again:
                    raise _Refused(None, None, f"the key {excerpt(key)} is given twice (which one holds?)",
                                   key_node.start_mark)
        return super().construct_mapping(node, deep)


def _expanded(node, memo: dict) -> tuple[int, int]:
    """How many values ``node`` stands for with every alias expanded (shared nodes counted each time), and
    how deep it nests then."""
    key = id(node)
    if key not in memo:
        memo[key] = (1, 1)     # a node that holds itself counts once here; the depth bound stops it anyway
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        sizes = [_expanded(child, memo) for child in children]
        memo[key] = (1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0))
    return memo[key]


def read_yaml(text: str):
    """``text`` read as YAML by the safe loader, bounded: at most ``MAX_YAML_DEPTH`` levels deep, at most
    ``MAX_YAML_VALUES`` values with aliases expanded, no key twice in one mapping. Raises ``yaml.YAMLError``
    (one line by :func:`_one_line`) otherwise."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size, depth = _expanded(node, {})
        except RecursionError:         # aliases of deep values nested in each other
            size, depth = 0, MAX_YAML_DEPTH + 1
        if depth > MAX_YAML_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep once its aliases are "
                           f"expanded", node.start_mark)
        if size > MAX_YAML_VALUES:
            raise _Refused(None, None, f"stands for {size} values once its aliases are expanded, more than the "
                           f"{MAX_YAML_VALUES} settings may have (aliases of aliases?)", node.start_mark)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_config_file(path) -> dict:
    """The mapping a settings file holds, unchecked: read bounded (a regular file of at most
    ``MAX_CONFIG_BYTES``, UTF-8) and by :func:`read_yaml`. Raises ``ConfigError`` in one line naming it."""
    try:
        text = read_text(path, "config", MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:          # not a regular file, too large, not UTF-8
        raise ConfigError(str(exc)) from None
    try:
        raw = read_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {_one_line(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of key: value")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (so numbers, lists and null work)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {excerpt(text)}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in OPTIONS:
        raise _unknown(key)
    try:
        value = read_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot read value {excerpt(raw)}: {_one_line(exc)}") from None
    return key, value


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
         sets: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Settings from a YAML file (optional), then ``overrides``, then ``key=value`` strings."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_config_file(path)
        for key in raw:
            if key not in OPTIONS:
                err = _unknown(key)
                raise ConfigError(f"{path}: {err}") from None
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for text in sets:
        key, value = parse_override(text)
        raw[key] = value
    return validate(raw)


def feature_kinds(settings: dict) -> list[str]:
    """The feature kinds a ``features`` setting (preset name or list) stands for."""
    v = settings["features"]
    return list(FEATURE_PRESETS[v]) if isinstance(v, str) else list(v)


def model_bound(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in MODEL_BOUND_KEYS}


def check_same(expected: dict[str, Any], found: dict[str, Any], what: str) -> None:
    """Raise naming the first model-bound setting whose values differ."""
    for key in MODEL_BOUND_KEYS:
        if key in expected and key in found and _norm(expected[key]) != _norm(found[key]):
            raise ConfigError(
                f"{what} was made with {key}={found[key]!r} but this run asks for {key}={expected[key]!r}; "
                f"use the same {key} (or refit into a new output folder)")


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def config_path(value: str | Path) -> Path:
    """``value`` as a path, or the settings file shipped with bigseg it names (``default``, ``metaldam``).

    A name counts only where no such file exists here and it has no folder
    part, as for the CLI's CONFIG argument.
    """
    path = Path(value)
    if not path.exists() and path.parent == Path("."):
        from importlib.resources import files

        shipped = files("bigseg.configs") / f"{path.stem}.yaml"
        if shipped.is_file():
            return Path(str(shipped))
    return path


class _Pairs(tuple):
    """A dict frozen inside :class:`Settings`: its ``(key, value)`` pairs, told apart from a frozen list."""

    __slots__ = ()


def _freeze(v):
    if isinstance(v, dict):
        return _Pairs((k, _freeze(x)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v):
    # validated values hold lists and dicts, never tuples, so a tuple always was a list
    if isinstance(v, _Pairs):
        return {k: _thaw(x) for k, x in v}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _hashable(v):
    # equality of Settings is that of plain dicts, where a dict's key order does not count
    if isinstance(v, _Pairs):
        return frozenset((k, _hashable(x)) for k, x in v)
    if isinstance(v, tuple):
        return tuple(_hashable(x) for x in v)
    return v


class Settings(Mapping):
    """Validated, read-only settings: every key of :data:`OPTIONS`, by attribute or by key.

    A :class:`~collections.abc.Mapping`, so code written for the plain dicts
    :func:`validate` returns keeps working: ``s["n_components"]``,
    ``PhaseSegmenter(**s)``, ``dict(s)``, and ``s == d`` against such a dict.
    Values come out as fresh lists and dicts, so nothing read from a
    Settings can change it.

    Parameters
    ----------
    mapping : mapping, optional
        Settings to start from; keys left out take their defaults.
    **kw
        More settings; they win over ``mapping``.

    Raises
    ------
    ConfigError
        A key is unknown or a value not allowed; the message is
        :func:`validate`'s one line.

    Examples
    --------
    >>> s = Settings(n_components=3, resize="native")
    >>> s.n_components, s["resize"]
    (3, 'native')
    >>> s.replace(spatial_weight=0.0).spatial_weight
    0.0
    >>> Settings.stage("segment")
    ('spatial_weight', 'spatial_sweeps')
    """

    __slots__ = ("_items",)

    def __init__(self, mapping=None, /, **kw):
        given = dict({} if mapping is None else mapping, **kw)
        object.__setattr__(self, "_items", {k: _freeze(v) for k, v in validate(given).items()})

    @classmethod
    def _trusted(cls, validated: dict) -> Settings:
        # for what validate has already checked (load) or a pickle of a Settings: checking again costs a
        # feature-name computation and can only agree
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_items", {k: _freeze(v) for k, v in validated.items()})
        return obj

    @classmethod
    def from_dict(cls, d) -> Settings:
        """Settings from a mapping of key: value, checked by :func:`validate`.

        Parameters
        ----------
        d : mapping
            Any subset of the keys of :data:`OPTIONS`; the rest take their defaults.

        Returns
        -------
        Settings
        """
        return cls(d)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None,
             sets: tuple[str, ...] | list[str] = ()) -> Settings:
        """Settings from a YAML file or the name of a shipped one, then ``overrides``, then ``key=value`` strings.

        Parameters
        ----------
        path : str or Path, optional
            A YAML settings file, or the name of one shipped with bigseg
            (``default``, ``metaldam``; see :func:`config_path`). None: the defaults.
        overrides : dict, optional
            Settings that win over the file; None values are ignored.
        sets : sequence of str
            ``key=value`` strings (values read as YAML), applied last.

        Returns
        -------
        Settings
        """
        return cls._trusted(load(None if path is None else config_path(path), overrides, sets))

    @classmethod
    def stage(cls, role: str) -> tuple[str, ...]:
        """The keys of one role, in the schema's order, derived from each option's ``role``.

        Parameters
        ----------
        role : {"features", "fit", "segment", "model"}
            ``features``: the settings a model's numbers depend on
            (:data:`MODEL_BOUND_KEYS`, preprocessing included); ``fit``
            (:data:`FIT_KEYS`); ``segment`` (:data:`SEGMENT_KEYS`);
            ``model``: everything a saved model carries (:data:`MODEL_KEYS`).
            Roles, not ``Option.stage``, which only groups the YAML file.

        Returns
        -------
        tuple of str
            The very tuple of the module constant named above.
        """
        try:
            return _STAGES[role]
        except KeyError:
            raise ValueError(f"unknown stage {role!r}; allowed: {', '.join(_STAGES)}") from None

    def replace(self, **changes) -> Settings:
        """A copy with ``changes`` applied, checked as a whole by :func:`validate`.

        Parameters
        ----------
        **changes
            New values of keys of :data:`OPTIONS`.

        Returns
        -------
        Settings

        Raises
        ------
        ConfigError
            A key is unknown, a value not allowed, or the changed settings do
            not fit together (e.g. more components than features).
        """
        return type(self)(self.to_dict(), **changes)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict the rest of bigseg passes around, as :func:`validate` returns it (a fresh copy)."""
        return {k: _thaw(v) for k, v in self._items.items()}

    def __getitem__(self, key):
        return _thaw(self._items[key])

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __getattr__(self, name):
        # only reached where ordinary look-up fails; private and dunder names must not recurse into _items
        if name.startswith("_"):
            raise AttributeError(name)
        items = object.__getattribute__(self, "_items")
        if name not in items:
            raise AttributeError(str(_unknown(name)))
        return _thaw(items[name])

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"Settings are read-only; s.replace({name}=...) gives a changed copy")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError("Settings are read-only")

    def __hash__(self):
        return hash(frozenset((k, _hashable(v)) for k, v in self._items.items()))

    def __reduce__(self):
        return type(self)._trusted, (self.to_dict(),)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._items))

    def __repr__(self):
        changed = ", ".join(f"{k}={excerpt(v)}" for k, v in self.to_dict().items() if _norm(v) != _norm(OPTIONS[k].default))
        return f"{type(self).__name__}({changed})"


# a key named like a method would be reachable only as s[key]
if set(OPTIONS) & set(dir(Settings)):
    raise ImportError(f"settings named like Settings methods: {sorted(set(OPTIONS) & set(dir(Settings)))}")


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  sets: tuple[str, ...] | list[str] = ()) -> Settings:
    """Checked :class:`Settings` from a YAML file (or a shipped one's name); see :meth:`Settings.load`.

    Parameters
    ----------
    path : str or Path, optional
        A YAML settings file, or ``default`` / ``metaldam``. None: the defaults.
    overrides : dict, optional
        Settings that win over the file; None values are ignored.
    sets : sequence of str
        ``key=value`` strings, applied last.

    Returns
    -------
    Settings
        Read-only; indexes like the dict :func:`load` returns and compares equal to it.
    """
    return Settings.load(path, overrides, sets)


if __name__ == "__main__":   # python -m bigseg.config > configs/default.yaml
    print(default_yaml(), end="")
