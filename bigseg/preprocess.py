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
    """
    if resize == "native":
        return int(shape[0]), int(shape[1])
    if isinstance(resize, int):
        scale = resize / max(int(shape[0]), int(shape[1]))
        return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))
    if resize == "physical":
        if not pixel_size:
            raise ValueError(f"{name}: resize is 'physical' but the pixel size is unknown; give it in the TIFF "
                             f"tags, pixel_size_csv or pixel_size")
        scale = float(pixel_size) / float(target_pixel_size)
        return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))
    return int(resize[0]), int(resize[1])


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
