"""Find input images, read any common format to a grey array, crop the SEM data bar."""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class ImageReadError(RuntimeError):
    """An input image could not be read; the message names the file."""


@dataclass(frozen=True)
class GreyImage:
    """A grey micrograph as stored, before any preprocessing."""

    data: np.ndarray          # 2-D, uint8/uint16/float32
    source: str
    original_shape: tuple     # shape of the file as read (H, W[, C])
    original_dtype: str
    pixel_size: float | None  # micrometres per pixel when the file says so


def find_images(inputs) -> list[Path]:
    """Expand files, folders and glob patterns to a sorted, de-duplicated list of images."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            found.append(p)
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            found += [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise FileNotFoundError(f"input pattern {text!r} matches no file")
        else:
            raise FileNotFoundError(f"input {text!r} is neither a file, a folder nor a glob")
    unique, seen = [], set()
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def image_ids(paths: list[Path]) -> list[str]:
    """File stems as ids; two files with one stem would overwrite each other, so refuse."""
    ids: dict[str, Path] = {}
    for p in paths:
        if p.stem in ids:
            raise ValueError(f"two inputs share the id {p.stem!r}: {ids[p.stem]} and {p}; rename one")
        ids[p.stem] = p
    return list(ids)


def _to_grey(arr: np.ndarray, source: str) -> np.ndarray:
    """Colour to grey with Rec. 601 luma, keeping integer dtypes."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        # channels-last, or a small leading channel axis as some TIFFs store it
        if arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (1, 2, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        c = arr.shape[-1]
        if c in (1, 2):              # grey (+ alpha)
            return arr[..., 0]
        if c in (3, 4):              # RGB (+ alpha)
            rgb = arr[..., :3].astype(np.float32)
            grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
            if np.issubdtype(arr.dtype, np.integer):
                return np.clip(np.rint(grey), 0, np.iinfo(arr.dtype).max).astype(arr.dtype)
            return grey
    raise ImageReadError(f"{source}: cannot interpret an array of shape {arr.shape} as a 2-D image")


def _tiff_pixel_size(tif) -> float | None:
    """Micrometres per pixel from standard TIFF resolution tags, when present."""
    try:
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags or "ResolutionUnit" not in tags:
            return None
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        per_unit = num / den if den else 0
        if per_unit <= 0:
            return None
        um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
        return um_per_unit / per_unit if um_per_unit else None
    except Exception:  # metadata is a bonus; a strange tag must not reject the image
        return None


def read_image(path) -> GreyImage:
    """Read TIFF (8/16-bit, multi-channel), PNG, JPEG or BMP as a 2-D grey array."""
    path = Path(path)
    source = str(path)
    pixel_size = None
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                arr = tif.asarray()
                pixel_size = _tiff_pixel_size(tif)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                elif im.mode == "I;16B" or im.mode == "I;16L":
                    im = im.convert("I;16")
                arr = np.asarray(im)
                if arr.dtype == np.int32:  # 16-bit PNG opened as mode I
                    arr = np.clip(arr, 0, 65535).astype(np.uint16)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{source}: unreadable image ({type(exc).__name__}: {exc})") from exc
    original_shape = tuple(int(s) for s in arr.shape)
    original_dtype = str(arr.dtype)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim > 3:
        raise ImageReadError(f"{source}: image stacks ({arr.shape}) are not supported; give one plane per file")
    grey = _to_grey(arr, source)
    if grey.dtype == np.bool_:
        grey = grey.astype(np.uint8) * 255
    elif grey.dtype not in (np.uint8, np.uint16):
        grey = grey.astype(np.float32)
    if grey.size == 0:
        raise ImageReadError(f"{source}: image is empty")
    return GreyImage(np.ascontiguousarray(grey), source, original_shape, original_dtype, pixel_size)


def detect_data_bar(grey: np.ndarray, search_fraction: float = 0.25, flat_std: float = 4.0) -> int:
    """Rows of the SEM information band at the bottom, 0 if there is none.

    The data bar of SEM micrographs is a flat-coloured panel with text, framed
    by uniform lines; a natural micrograph row is never flat. We look for the
    highest near-uniform row in the bottom ``search_fraction`` of the frame
    that sits right under a textured row: that edge is the bar's top.
    """
    g = np.asarray(grey, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] < 8:
        return 0
    scale = 255.0 / max(float(np.max(g)), 1.0) if g.dtype != np.uint8 else 1.0
    std = g.std(axis=1) * scale
    h = g.shape[0]
    start = max(1, int(h * (1 - search_fraction)))
    for r in range(start, h):
        if std[r] < flat_std and std[r - 1] >= flat_std:
            return h - r
    return 0


def crop_rows(grey: np.ndarray, crop_bottom, source: str = "") -> tuple[np.ndarray, int]:
    """Apply ``crop_bottom`` ('auto' or N rows); return the cropped image and N."""
    n = detect_data_bar(grey) if crop_bottom == "auto" else int(crop_bottom)
    if n >= grey.shape[0]:
        raise ImageReadError(f"{source}: crop_bottom={n} removes the whole image ({grey.shape[0]} rows)")
    return (grey[: grey.shape[0] - n] if n else grey), n


def read_pixel_sizes(path) -> dict[str, float]:
    """A sidecar table ``image,pixel_size_um`` (image = file stem) as {stem: micrometres per pixel}."""
    import csv

    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except OSError as exc:
        raise FileNotFoundError(f"pixel_size_csv {path}: {exc}") from None
    if not rows or not {"image", "pixel_size_um"} <= set(rows[0]):
        raise ValueError(f"pixel_size_csv {path}: needs the columns image,pixel_size_um")
    out = {}
    for n, row in enumerate(rows, start=2):
        try:
            value = float(row["pixel_size_um"])
        except (TypeError, ValueError):
            value = -1.0
        if not value > 0:
            raise ValueError(f"pixel_size_csv {path}, line {n}: pixel_size_um {row['pixel_size_um']!r} "
                             f"is not a positive number")
        out[Path(row["image"]).stem] = value
    return out


def read_label_mask(path) -> np.ndarray:
    """A class-index mask (any channel count with identical channels) as uint8/uint16 2-D."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_png(path, array: np.ndarray) -> None:
    """Save an 8-bit grey or RGB PNG atomically."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    # level 1: label maps compress almost as well as at level 6, several times faster
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(path, buf.getvalue())
