"""Per-image preprocessing: resize, normalise to [0, 1], CLAHE.

Pure functions of one image and explicit settings, so they run unchanged on a
thread, a process or a cluster worker.
"""

from __future__ import annotations

import numpy as np


def target_shape(shape, resize, pixel_size=None, target_pixel_size=None, name: str = "image") -> tuple[int, int]:
    """The processing grid for an image of ``shape`` under the ``resize`` setting.

    An integer N is the longer side, the aspect ratio kept: squashing a 1024x703
    frame to 512x512 scaled x by 2.0 and y by 1.37, so every filter saw another
    microstructure along x than along y, and another in each frame size.
    ``physical`` resamples to ``target_pixel_size`` micrometres per pixel, so one
    phase has one size in pixels whatever the magnification it was taken at.
    A scale ``{factor, um_per_pixel}`` (what a fit makes of the others,
    :func:`collection_scale`) resamples by :func:`image_scale`.
    """
    if isinstance(resize, dict):
        return _scaled(shape, image_scale(resize, pixel_size, name))
    if resize == "native":
        return int(shape[0]), int(shape[1])
    if isinstance(resize, int):
        return _scaled(shape, resize / max(int(shape[0]), int(shape[1])))
    if resize == "physical":
        if not pixel_size:
            raise ValueError(f"{name}: resize is 'physical' but the pixel size is unknown; give it in the TIFF "
                             f"tags, pixel_size_csv or pixel_size")
        return _scaled(shape, float(pixel_size) / float(target_pixel_size))
    return int(resize[0]), int(resize[1])


def _scaled(shape, scale: float) -> tuple[int, int]:
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def image_scale(scale: dict, pixel_size=None, name: str = "image") -> float:
    """Processing pixels per native pixel of one image under a scale ``{factor, um_per_pixel}``.

    With both the image's pixel size and ``um_per_pixel``: their ratio, so the
    image is sampled as the fit's images were in micrometres. Otherwise the
    fit's ``factor`` (:func:`scale_mismatch` says why it cannot be matched).
    The ratio is rounded to 12 significant digits: an image at the fit's own
    pixel size gets exactly the fit's factor, not one an ulp off (which
    would move a grid side that falls on a half pixel).
    """
    um, factor = scale.get("um_per_pixel"), scale.get("factor")
    if um and pixel_size:
        return float(f"{float(pixel_size) / float(um):.12g}")
    if factor is None:
        raise ValueError(f"{name}: the pixel size is unknown, and the scale to segment at is given only in "
                         f"micrometres ({um} per processing pixel); give it in the TIFF tags, pixel_size_csv "
                         f"or pixel_size")
    return float(factor)


def scale_mismatch(scale, pixel_size, name: str = "image") -> str | None:
    """Why an image cannot be brought to a model's scale, in one line naming it; None when it can.

    An image without a pixel size under a scale in micrometres, or one with a
    pixel size under a scale fitted without any, is resampled by the fit's
    native-to-processing factor: right only if its pixels are as large as the
    fit's images' were.
    """
    if not isinstance(scale, dict) or scale.get("factor") is None:
        return None
    um, factor = scale.get("um_per_pixel"), scale["factor"]
    if um and not pixel_size:
        return (f"{name}: its pixel size is unknown, while the model's scale is {um:.4g} um per processing pixel; "
                f"resampled by the fit's factor {factor:.4g}, right only if its pixels are as large as the fit's "
                f"images' (give pixel_size_csv or pixel_size)")
    if pixel_size and not um:
        return (f"{name}: its pixel size is {float(pixel_size):.4g} um, while the model was fitted on images of "
                f"unknown pixel size; resampled by the fit's factor {factor:.4g}, right only if its pixels are "
                f"as large as the fit's images' were")
    return None


def collection_scale(shapes, pixel_sizes, resize, target_pixel_size=None, clahe_kernel_size=None):
    """The one scale a fit brings its images to, and the CLAHE tile on it: ``(resize, clahe_kernel_size)``.

    ``resize`` N and ``native`` become a scale ``{factor, um_per_pixel}``:
    ``factor`` is the median of the images' native-to-processing factors (N
    over the longer side, or 1), ``um_per_pixel`` the median of their
    micrometres per processing pixel where their pixel sizes are known (None
    where none is). ``physical`` becomes ``{factor: None, um_per_pixel:
    target_pixel_size}``: asked in micrometres, an image of unknown pixel size
    is refused by name, as before, rather than guessed. Images of
    one size and no pixel size keep today's grid exactly; frames at other
    pixel sizes come to one size in micrometres. ``clahe_kernel_size`` null
    becomes the median of the images' default tiles (1/8 of each side of the
    processing grid), so a montage and its frames see the same tile. An
    exact grid ``[H, W]``, and a scale already made, are returned as they are.

    Parameters
    ----------
    shapes : sequence of (rows, columns)
        The images' native (cropped) sizes.
    pixel_sizes : sequence of float or None
        Their micrometres per native pixel, None where unknown.
    """
    if isinstance(resize, (dict, list, tuple)) or not len(shapes):
        return resize, clahe_kernel_size
    factors, ums = [], []
    for shape, px in zip(shapes, pixel_sizes):
        if resize != "physical":
            factors.append(1.0 if resize == "native" else resize / max(int(shape[0]), int(shape[1])))
            if px:
                ums.append(float(px) / factors[-1])
    if resize == "physical":
        # asked in micrometres: an image of unknown pixel size stays one that cannot be resampled (skipped by name)
        scale = {"factor": None, "um_per_pixel": float(target_pixel_size)}
    else:
        scale = {"factor": float(np.median(factors)), "um_per_pixel": float(np.median(ums)) if ums else None}
    if clahe_kernel_size is None:
        grids = [_scaled(shape, image_scale(scale, px)) for shape, px in zip(shapes, pixel_sizes)
                 if px or scale["factor"] is not None]
        if grids:       # scikit-image's default tile of each grid (1/8 of a side, at least 1), their median
            clahe_kernel_size = [int(np.median([max(g[axis] // 8, 1) for g in grids])) for axis in (0, 1)]
    return scale, clahe_kernel_size


#: the settings a fit turns into its images' one scale (:func:`scaled_settings`)
SCALE_SETTINGS = ("resize", "clahe_kernel_size")


def scale_settings(settings) -> dict:
    """The scale settings of ``settings`` (:data:`SCALE_SETTINGS`), lists normalised, for comparing two."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items() if k in SCALE_SETTINGS}


def scaled_settings(settings, shapes, pixel_sizes) -> dict:
    """``settings`` with ``resize`` and ``clahe_kernel_size`` as the one scale of a collection of images
    (:func:`collection_scale`); settings that already hold a scale come back unchanged."""
    resize, kernel = collection_scale(shapes, pixel_sizes, settings["resize"], settings["target_pixel_size"],
                                      settings["clahe_kernel_size"])
    return dict(settings, resize=resize, clahe_kernel_size=kernel)


def resize_image(image: np.ndarray, shape) -> np.ndarray:
    """Area-aware resize (anti-aliased when shrinking) to ``shape``, float32."""
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if image.shape == shape:
        return image
    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return resize(image, shape, order=1, mode="reflect", anti_aliasing=shrinking,
                  preserve_range=True).astype(np.float32)


def normalize(image: np.ndarray, percentiles=(0.0, 100.0)) -> np.ndarray:
    """Map the given intensity percentiles to 0 and 1 and clip.

    A constant image has no contrast to stretch; it maps to all zeros instead of
    dividing by zero.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, percentiles) if tuple(percentiles) != (0.0, 100.0) else (image.min(), image.max())
    span = float(hi) - float(lo)
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(image)
    return np.clip((image - np.float32(lo)) / np.float32(span), 0.0, 1.0)


def clahe(image: np.ndarray, clip_limit: float = 0.01, kernel_size=None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of an image in [0, 1]."""
    from skimage.exposure import equalize_adapthist

    if float(image.max()) <= float(image.min()):
        return np.asarray(image, dtype=np.float32)
    return equalize_adapthist(image, kernel_size=kernel_size, clip_limit=clip_limit).astype(np.float32)


def normalised_image(image: np.ndarray, settings: dict, shape=None) -> np.ndarray:
    """Grey image as stored -> float32 image in [0, 1] on the processing grid, before CLAHE."""
    out = resize_image(image, shape if shape is not None else target_shape(image.shape, settings["resize"]))
    return normalize(out, settings["normalize_percentiles"])


def planes(image: np.ndarray, settings: dict, shape=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The normalised image before CLAHE and the void plane (``voids.plane_percentiles``; None when
    ``void_class`` is off), from one resize to the processing grid."""
    from . import voids

    out = resize_image(image, shape if shape is not None else target_shape(image.shape, settings["resize"]))
    plane = normalize(out, voids.plane_percentiles(settings)) if voids.enabled(settings) else None
    return normalize(out, settings["normalize_percentiles"]), plane


def stacked_planes(image: np.ndarray, settings: dict, shape=None) -> np.ndarray:
    """:func:`planes` as one ``(2, y, x)`` array (one task makes both)."""
    norm, plane = planes(image, settings, shape)
    return np.stack([norm, plane])


def equalise(normalised: np.ndarray, settings: dict) -> np.ndarray:
    """CLAHE of a normalised image when ``settings["clahe"]``, else the image itself."""
    if settings["clahe"]:
        return clahe(normalised, settings["clahe_clip_limit"], settings["clahe_kernel_size"])
    return normalised


def preprocess_image(image: np.ndarray, settings: dict, shape=None) -> np.ndarray:
    """Grey image as stored -> float32 image in [0, 1] on the processing grid (``shape`` if given)."""
    return equalise(normalised_image(image, settings, shape), settings)
