"""Find input images, read any common format to a grey array, crop the SEM data bar."""

from __future__ import annotations

import glob
import logging
import math
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .safety import (MAX_TEXT_BYTES, UnsafeFileError, check_regular, excerpt, foreign_entry, read_text, short_name,
                     temp_prefix)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: a folder with this suffix is one image (a Zarr array or an OME-Zarr image), not a folder of images
ZARR_SUFFIX = ".zarr"
#: rows read at a time from a chunked input
BAND_ROWS = 1024
#: images declaring more pixels are refused before anything is decoded (decompression bombs);
#: about 1.07 Gpx, where a 20,000 x 20,000 montage is 0.4 Gpx
MAX_IMAGE_PIXELS = 2**30
#: a TIFF whose declared image is this many times larger than the file is refused: deflate cannot pass
#: about 1030:1 and LZW, PackBits and JPEG stay below that, so only a crafted or broken file gets here
MAX_TIFF_COMPRESSION_RATIO = 5000

log = logging.getLogger("bigseg")


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
    pixel_size_source: str | None = None  # which metadata said so: see pixel_size_from_tiff


def find_images(inputs) -> list[Path]:
    """Expand files, folders and glob patterns to a sorted, de-duplicated list of images."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        if not text.strip():      # Path("") is the current folder: an empty --input is a slip, not a choice
            raise FileNotFoundError("an input is empty (--input ''); give a file, a folder or a quoted glob")
        p = Path(text)
        if p.is_dir() and p.suffix.lower() != ZARR_SUFFIX:
            found += sorted(q for q in p.iterdir() if _is_image(q))
        elif p.is_file() or p.is_dir() or os.path.lexists(p):
            # lexists: a broken link or an entry we may not stat is kept, and reading it says what is wrong
            found.append(p)
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            found += [m for m in matches if _is_image(m)]
            if not matches:
                raise FileNotFoundError(f"input pattern {excerpt(text)} matches no file")
        else:
            raise FileNotFoundError(f"input {excerpt(text)} is neither a file, a folder nor a glob")
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


def _is_image(p: Path) -> bool:
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES and suffix != ZARR_SUFFIX:
        return False
    try:
        mode = p.stat().st_mode
    except OSError:
        # a broken link, a link loop or an entry we may not stat must not vanish from the batch unseen:
        # it is kept, and reading it reports why it failed
        return os.path.lexists(p)
    return stat.S_ISDIR(mode) if suffix == ZARR_SUFFIX else stat.S_ISREG(mode)


def _refuse_broken_link(path: Path, source: str) -> None:
    if path.is_symlink() and not path.exists():
        raise ImageReadError(f"{source}: broken symbolic link to {short_name(os.readlink(path), 240)}")


def max_file_bytes(max_pixels: int) -> int:
    """Largest image file read for a limit of ``max_pixels``: four 32-bit channels a pixel, and room for
    metadata; anything larger is no image bigseg would decode."""
    return int(max_pixels) * 16 + 2**26


def check_image_file(path, source: str, max_pixels: int = MAX_IMAGE_PIXELS, what: str = "image") -> None:
    """Refuse, before it is opened, an image that is no regular file (a device such as ``/dev/urandom``,
    a FIFO, which would block) or larger than any image of ``max_pixels`` pixels; the message names it."""
    _refuse_broken_link(Path(path), source)
    try:
        check_regular(path, what, max_file_bytes(max_pixels))
    except UnsafeFileError as exc:
        raise ImageReadError(str(exc)) from None
    except OSError as exc:
        raise ImageReadError(f"{source}: cannot read ({exc.strerror or exc})") from None


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of a library's exception on one line, for an error that is reported as one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _unreadable(source: str, exc: BaseException) -> str:
    """Why a reader library failed on a file, as one line: an error inside the decoder (an index, a key, a
    division by zero) means the file is damaged or is not what its name says; the library's words follow."""
    why = "unreadable image" if isinstance(exc, (OSError, ValueError)) else \
        "unreadable image: damaged, truncated, or not the format its name says"
    text = _one_line(exc)
    return f"{source}: {why} ({text if len(text) <= 200 else text[:200] + '...'})"


def _too_many_pixels(source: str, declared: str, max_pixels: int) -> ImageReadError:
    return ImageReadError(f"{source}: declares {declared}, more than the limit of {max_pixels} pixels "
                          f"({max_pixels / 1e9:.2f} Gpx) that guards against decompression bombs; "
                          f"if the image is genuine, set max_image_pixels higher")


def _check_pixels(source: str, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise _too_many_pixels(source, f"{width} x {height} pixels ({height * width / 1e9:.2f} Gpx)", max_pixels)


def _refuse_non_finite(grey: np.ndarray, source: str, where: str = "") -> None:
    """NaN or infinite pixels would make one phase of the whole image: refuse them by name."""
    if grey.dtype.kind != "f":
        return
    bad = grey.size - int(np.count_nonzero(np.isfinite(grey)))
    if bad:
        raise ImageReadError(f"{source}: {bad} of {grey.size} pixels{where} are NaN or infinite; bigseg needs "
                             f"finite values (export the image again or mask them)")


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


#: micrometres per unit for the length units TIFF metadata uses (OME UnitsLength, ImageJ, Zeiss SEM)
_LENGTH_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0,
              "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
              "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6}
_INCH_UM = 25400.0
#: a pixel size from any source outside this range (10 pm .. 1 mm per pixel) is a broken tag, not a microscope
PIXEL_SIZE_RANGE_UM = (1e-5, 1e3)
#: every image program writes resolution tags at a screen or print default (72, 96, 300 .. 2400 dpi are
#: 352.8, 264.6, 84.7 .. 10.6 um/px, and GIMP & co. store the same in px/cm); no microscope pixel is that
#: coarse where only resolution tags record it, so above this they say nothing about the specimen
MAX_RESOLUTION_TAG_UM = 10.0
#: dpi defaults that converters (ImageJ, Bio-Formats) copy into OME or ImageJ calibration as micrometres
_DPI_DEFAULTS = (72, 96, 120, 150, 200, 240, 300, 400, 600, 1200, 2400)


def _length_um(value, unit) -> tuple[float | None, bool]:
    """``value`` in ``unit`` as micrometres, and whether the unit is the inch (a dpi default, likely)."""
    unit = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()  # ImageJ escapes the µ
    if unit in ("in", "inch", "inches"):
        return float(value) * _INCH_UM, True
    return (float(value) * _LENGTH_UM[unit], False) if unit in _LENGTH_UM else (None, False)


def _looks_like_dpi(um: float) -> bool:
    return any(abs(um * dpi / _INCH_UM - 1) < 1e-3 for dpi in _DPI_DEFAULTS)


def _fei_um(tif):
    meta = tif.fei_metadata
    if not meta:
        return None, False
    # PixelWidth is in metres; Scan is the beam in use, EScan / IScan the electron / ion column's own
    for section in ("Scan", "EScan", "IScan"):
        value = (meta.get(section) or {}).get("PixelWidth")
        if value is not None:
            return float(value) * 1e6, False
    return None, False


def _zeiss_um(tif):
    meta = tif.sem_metadata
    if not meta:
        return None, False
    # ('Image Pixel Size', 2.5, 'nm'): tifffile splits "2.5 nm" into number and unit
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = meta.get(key)
        if isinstance(entry, tuple) and len(entry) == 3:
            return _length_um(entry[1], entry[2])
    return None, False


def _ome_um(tif):
    xml = tif.ome_metadata
    if not xml:
        return None, False
    from xml.etree import ElementTree

    for el in ElementTree.fromstring(xml).iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":  # the first image's, which is the one read
            if el.get("PhysicalSizeX") is None:
                return None, False
            return _length_um(el.get("PhysicalSizeX"), el.get("PhysicalSizeXUnit", "µm"))  # the schema's default
    return None, False


def _x_per_unit(tags) -> float | None:
    num, den = tags["XResolution"].value
    return num / den if den else None


def _imagej_um(tif):
    meta = tif.imagej_metadata
    tags = tif.pages.first.tags
    if not meta or "unit" not in meta or "XResolution" not in tags:
        return None, False
    per_unit = _x_per_unit(tags)    # ImageJ stores pixels per `unit` whatever ResolutionUnit says
    return _length_um(1.0 / per_unit, meta["unit"]) if per_unit else (None, False)


def _resolution_um(tif):
    tags = tif.pages.first.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None, False
    unit = int(tags["ResolutionUnit"].value)
    per_unit = _x_per_unit(tags)
    if unit not in (2, 3) or not per_unit:   # NONE (1) gives an aspect ratio, no length
        return None, False
    return (_INCH_UM if unit == 2 else 1e4) / per_unit, True


_PIXEL_SIZE_READERS = (("fei", _fei_um), ("zeiss", _zeiss_um), ("ome", _ome_um), ("imagej", _imagej_um),
                       ("tiff-resolution", _resolution_um))


def _plausible_pixel_size(um, source: str, where: str, dpi_like: bool = False) -> float | None:
    """``um`` if a microscope could have that pixel size, else None (logged)."""
    try:
        um = float(um)
    except (TypeError, ValueError):
        return None
    lo, hi = PIXEL_SIZE_RANGE_UM
    if not lo <= um <= hi:   # also NaN
        why = "outside %g..%g um" % (lo, hi)
    elif dpi_like and um > MAX_RESOLUTION_TAG_UM:
        why = "a screen or print resolution, no microscope's"
    elif source in ("ome", "imagej") and um > MAX_RESOLUTION_TAG_UM and _looks_like_dpi(um):
        why = "a dpi default copied into the calibration"
    else:
        return um
    # resolution tags at 72 dpi are in most files and nothing is wrong: only a stated calibration is worth a warning
    level = logging.DEBUG if source == "tiff-resolution" else logging.WARNING
    log.log(level, "%s: pixel size %g um from %s metadata ignored (%s); give it with pixel_size_csv or "
            "pixel_size", where, um, source, why)
    return None


def pixel_size_from_tiff(tif) -> tuple[float | None, str | None]:
    """Micrometres per pixel of a TIFF's first image, and which metadata said so.

    Sources, the first plausible one wins: SEM vendor tags (``"fei"`` for
    FEI/Thermo, ``"zeiss"``), OME-XML (``"ome"``), ImageJ calibration
    (``"imagej"``), then resolution tags in centimetres or inches
    (``"tiff-resolution"``) up to ``MAX_RESOLUTION_TAG_UM``. Values outside
    ``PIXEL_SIZE_RANGE_UM``, NaN or zero are ignored.

    Returns
    -------
    tuple
        ``(um_per_pixel, source)``, or ``(None, None)`` when no source says.
    """
    where = str(getattr(tif.filehandle, "path", "") or getattr(tif, "filename", "TIFF"))
    for source, read in _PIXEL_SIZE_READERS:
        try:
            um, dpi_like = read(tif)
        except Exception as exc:  # metadata is a bonus; a strange tag must not reject the image
            log.debug("%s: %s pixel size unreadable (%s)", where, source, _one_line(exc))
            continue
        if um is not None and (um := _plausible_pixel_size(um, source, where, dpi_like)) is not None:
            return um, source
    return None, None


# TIFF codes (TIFF 6.0): photometric interpretations and compressions
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_CIELAB, _ICCLAB, _ITULAB = 8, 9, 10
_OJPEG, _JPEG = 6, 7
#: codecs whose best ratio is known (none, LZW, old and new JPEG, Adobe and old deflate, PackBits): only for
#: these is a huge declared size in a small file proof of a broken or crafted file. zstd, LZMA, CCITT and the
#: wavelet codecs pack a constant image far tighter, so for them only the pixel limit applies.
_BOUNDED_TIFF_CODECS = {1, 5, _OJPEG, _JPEG, 8, 32946, 32773}


@dataclass(frozen=True)
class _TiffPlane:
    """What reading the first image of a TIFF needs from its header, kept after the file is closed."""

    axes: str                 # of level 0 of the first series, none squeezed
    page_axes: str            # of one page of it
    height: int
    width: int
    photometric: int
    compression: int
    bits: int
    samples: int
    colormap: np.ndarray | None


def _tiff_first_image(tif, source: str, max_pixels: int) -> _TiffPlane:
    """Check the first image of a TIFF against the size limits from its header alone; warn of the others.

    Only level 0 of the first plane of the first series is read: a TIFF with
    several pages or planes (detectors, a stack, a hyperstack) is not mixed into one image.
    """
    if not tif.series or not len(tif.pages):
        raise ImageReadError(f"{source}: a TIFF with no image in it (no readable page); the file is truncated "
                             f"or damaged")
    series = tif.series[0].levels[0]
    page = series.keyframe
    height, width = int(page.imagelength), int(page.imagewidth)
    _check_pixels(source, height, width, max_pixels)
    compression = int(page.compression)
    declared_bytes = page.size * page.bitspersample / 8
    file_bytes = tif.filehandle.size
    if compression in _BOUNDED_TIFF_CODECS and declared_bytes > MAX_TIFF_COMPRESSION_RATIO * max(file_bytes, 1):
        raise ImageReadError(f"{source}: declares {width} x {height} pixels ({declared_bytes / 1e6:.0f} MB) in a "
                             f"file of {file_bytes} bytes, more than {MAX_TIFF_COMPRESSION_RATIO} times its "
                             f"size, which its compression cannot reach; the file is truncated or crafted "
                             f"(export the image again)")
    images = sum(math.prod(s.get_shape(False)) // max(s.keyframe.size, 1) for s in tif.series)
    if images > 1:
        noun = "pages" if images == len(tif.pages) else "planes"
        log.warning("%s: %d %s; using the first (one image per file)", source, images, noun)
    photometric = int(page.photometric)
    if photometric == _SEPARATED and (page.tags.valueof("InkSet", 1) != 1 or page.samplesperpixel < 4):
        raise ImageReadError(f"{source}: separated colour with inks other than CMYK is not supported; "
                             f"export the image as grey or RGB")
    extras = [int(e) for e in page.extrasamples]
    if photometric in (_MINISBLACK, _MINISWHITE) and page.samplesperpixel > 1 and 0 in extras:
        # unspecified extra samples may be other detectors: say that only the first is used
        log.warning("%s: %d samples per pixel in a grey image; using the first", source, page.samplesperpixel)
    colormap = np.asarray(page.colormap) if photometric == _PALETTE and page.colormap is not None else None
    return _TiffPlane(series.get_axes(False), page.axes, height, width, photometric, compression,
                      int(page.bitspersample), int(page.samplesperpixel), colormap)


def _as_yxs(arr, axes: str, rows: slice = slice(None)) -> np.ndarray:
    """Rows of the first plane of an array with TIFF ``axes``, ordered Y, X[, S]; only those rows are read."""
    index = tuple(rows if ax == "Y" else slice(None) if ax in "XS" else 0 for ax in axes)
    kept = [ax for ax in axes if ax in "YXS"]
    return np.transpose(np.asarray(arr[index]), [kept.index(ax) for ax in "YXS" if ax in kept])


def _tiff_to_grey(arr: np.ndarray, plane: _TiffPlane, source: str) -> np.ndarray:
    """Y, X[, S] values of a TIFF as grey or RGB, as its photometric interpretation says."""
    photometric = plane.photometric
    if arr.ndim == 2:
        arr = arr[..., None]
    if photometric in (_MINISBLACK, _MINISWHITE):
        grey = arr[..., 0]
        if photometric == _MINISWHITE:   # 0 is white: invert so that bright stays bright
            if grey.dtype == np.bool_:
                grey = ~grey
            elif grey.dtype.kind == "u":
                grey = (np.array(2 ** min(plane.bits, grey.dtype.itemsize * 8) - 1, grey.dtype) - grey)
        return grey
    if photometric == _RGB or (photometric == _YCBCR and plane.compression in (_OJPEG, _JPEG)):
        return arr[..., :3]            # the JPEG codec already gives RGB
    if photometric in (_YCBCR, _CIELAB, _ICCLAB, _ITULAB):
        return arr[..., 0]             # luma Y or lightness L is the grey
    if photometric == _PALETTE and plane.colormap is not None:
        rgb = np.moveaxis(plane.colormap[:, arr[..., 0]], 0, -1)
        # 16-bit palette entries that are 8-bit values times 257 are 8-bit colours
        return (rgb // 257).astype(np.uint8) if not np.any(plane.colormap % 257) else rgb
    if photometric == _SEPARATED:      # CMYK, checked by _tiff_first_image
        top = 2 ** min(plane.bits, arr.dtype.itemsize * 8) - 1 if arr.dtype.kind == "u" else 1.0
        cmyk = arr[..., :4].astype(np.float32)
        rgb = (top - cmyk[..., :3]) * (top - cmyk[..., 3:]) / top
        return np.rint(rgb).astype(arr.dtype) if arr.dtype.kind == "u" else rgb
    raise ImageReadError(f"{source}: TIFF photometric interpretation {photometric} with {arr.shape[-1]} "
                         f"samples is not supported; export the image as grey or RGB")


def read_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> GreyImage:
    """Read TIFF (8/16-bit, multi-channel), PNG, JPEG or BMP as a 2-D grey array.

    A TIFF gives its first image (a warning names the others); a PNG or JPEG is
    turned as its EXIF orientation says. Images declaring more than
    ``max_pixels`` pixels, and float images with NaN or infinite pixels, are
    refused with an :class:`ImageReadError` naming the file.
    """
    path = Path(path)
    source = str(path)
    pixel_size = pixel_size_source = None
    check_image_file(path, source, max_pixels)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                plane = _tiff_first_image(tif, source, max_pixels)
                arr = _as_yxs(tif.series[0].levels[0].keyframe.asarray(), plane.page_axes)
                pixel_size, pixel_size_source = pixel_size_from_tiff(tif)
            original_shape, original_dtype = arr.shape, arr.dtype
            arr = _tiff_to_grey(arr, plane, source)
        else:
            arr = _read_pil(path, source, max_pixels)
            original_shape, original_dtype = arr.shape, arr.dtype
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(_unreadable(source, exc)) from exc
    original_shape = tuple(int(s) for s in original_shape)
    grey = _grey_values(_to_grey(arr, source))
    if grey.size == 0:
        raise ImageReadError(f"{source}: image is empty")
    _refuse_non_finite(grey, source)
    return GreyImage(np.ascontiguousarray(grey), source, original_shape, str(original_dtype), pixel_size,
                     pixel_size_source)


#: PIL modes that np.asarray turns into values _to_grey reads right: grey, grey + alpha, RGB(A/X), 16-bit, float
_PIL_DIRECT_MODES = {"1", "L", "LA", "RGB", "RGBA", "RGBX", "I;16", "F"}


def _read_pil(path: Path, source: str, max_pixels: int) -> np.ndarray:
    """A PNG, JPEG or BMP as grey, grey + alpha or RGB(A) values, turned upright."""
    from PIL import Image, ImageOps

    # PIL refuses images over twice its limit as it opens them (89 Mpx by default, under a legitimate montage):
    # raise it to ours, never lower it for other readers in the process; max_pixels is checked right after
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(source, f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels", max_pixels) from exc
    with im:
        width, height = im.size
        _check_pixels(source, height, width, max_pixels)
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and im.format != "MPO":  # an MPO JPEG's extra frames are previews of the same picture
            log.warning("%s: %d frames; using the first (one image per file)", source, frames)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        mode = im.mode
        if mode in ("P", "PA"):
            im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
        elif mode in ("I;16B", "I;16L", "I;16N"):
            im = im.convert("I;16")
        elif mode in ("La", "RGBa"):      # premultiplied alpha would darken the grey
            im = im.convert(mode.upper())
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            # as stored these are no grey or RGB values; PIL also undoes the inverted CMYK of Adobe JPEGs
            im = im.convert("RGB")
        elif mode != "I" and mode not in _PIL_DIRECT_MODES:
            raise ImageReadError(f"{source}: PIL image mode {mode!r} is not supported; save the image as "
                                 f"grey or RGB")
        arr = np.asarray(im)
    if mode == "I":  # 16-bit PNGs may open as 32-bit integers; values outside 16 bits stay exact as float
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        arr = arr.astype(np.uint16) if 0 <= lo and hi <= 65535 else arr.astype(np.float32)
    return arr


# --- chunked inputs: tiled TIFF, Zarr and OME-Zarr, read a band of rows at a time ------------

#: above this many pixels an image is never held whole: a TIFF is read band by band (even in strips),
#: preprocessing goes tile by tile and labels are written as tiled TIFFs. Whole-frame CLAHE on a
#: 4096x4096 frame peaked at 1.4 GiB; at this size whole frames stay within a few hundred MiB.
LARGE_IMAGE_PIXELS = 2048 * 2048
_UNIT_TO_UM = {"micrometer": 1.0, "micron": 1.0, "nanometer": 1e-3, "millimeter": 1e3}


def is_chunked_input(path) -> bool:
    """Zarr folders, tiled TIFFs and TIFF pages over ``LARGE_IMAGE_PIXELS`` pixels are read band by band."""
    path = Path(path)
    if path.is_dir():
        return path.suffix.lower() == ZARR_SUFFIX
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():   # a FIFO would block the open
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return bool(page.is_tiled) or page.imagelength * page.imagewidth > LARGE_IMAGE_PIXELS
    except Exception:   # unreadable or a broken link: the ordinary reader reports it by name
        return False


class ChunkedImage:
    """A 2-D grey image read a band of rows at a time from a tiled TIFF or a Zarr / OME-Zarr array.

    Use as a context manager; :meth:`rows` returns grey rows as :func:`read_image`
    would (Rec. 601 luma for colour, uint8/uint16 kept, other types as float32),
    and the same first image of a TIFF. Images declaring more than ``max_pixels``
    pixels are refused before anything is read; a band with NaN or infinite
    pixels raises :class:`ImageReadError`.
    """

    def __init__(self, path, max_pixels: int = MAX_IMAGE_PIXELS):
        import zarr

        self.source = str(path)
        self.pixel_size = self.pixel_size_source = None
        self._store = None
        self._tiff = None
        path = Path(path)
        if not path.is_dir():
            check_image_file(path, self.source, max_pixels)
        _refuse_broken_link(path, self.source)
        try:
            if path.is_dir():
                _refuse_linked_zarr(path, self.source)
                node = zarr.open(str(path), mode="r")
                node, pixel_size = _zarr_image(node, self.source)
                self.pixel_size = _plausible_pixel_size(pixel_size, "ome-zarr", self.source) if pixel_size else None
                self.pixel_size_source = "ome-zarr" if self.pixel_size else None
            else:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    self._tiff = _tiff_first_image(tif, self.source, max_pixels)
                    self.pixel_size, self.pixel_size_source = pixel_size_from_tiff(tif)
                    # the store reopens the file itself when read, like tifffile.imread(aszarr=True)
                    self._store = tif.aszarr(series=0, level=0, squeeze=False)
                node = zarr.open(self._store, mode="r")
        except ImageReadError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ImageReadError(_unreadable(self.source, exc)) from exc
        self._arr = node
        self.dtype = _grey_dtype(node.dtype)
        if self._tiff is not None:
            plane = self._tiff
            self.shape = (plane.height, plane.width)
            self.original_shape = (plane.height, plane.width) + ((plane.samples,) if plane.samples > 1 else ())
            self.original_dtype = str(node.dtype)
            if plane.colormap is not None:   # palette indices become the colours' type
                self.dtype = np.dtype(np.uint16 if np.any(plane.colormap % 257) else np.uint8)
            return
        self.original_shape = tuple(int(s) for s in node.shape)
        self.original_dtype = str(node.dtype)
        shape = list(node.shape)
        self._lead = 0
        while len(shape) > 2 and shape[0] == 1 and not (len(shape) == 3 and shape[-1] > 4):
            shape.pop(0)
            self._lead += 1
        if len(shape) == 2:
            self._layout = "yx"
        elif len(shape) == 3 and shape[-1] <= 4:
            self._layout = "yxc"
        elif len(shape) == 3 and shape[0] <= 4:
            self._layout = "cyx"
        else:
            raise ImageReadError(f"{self.source}: cannot interpret an array of shape {self.original_shape} "
                                 f"as a 2-D image")
        self.shape = tuple(shape[1:]) if self._layout == "cyx" else tuple(shape[:2])
        try:
            _check_pixels(self.source, self.shape[0], self.shape[1], max_pixels)
            _refuse_missing_chunks(node, self.source)
        except ImageReadError:
            self.close()
            raise

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Grey rows ``r0:r1``."""
        if self._tiff is not None:
            band = _tiff_to_grey(_as_yxs(self._arr, self._tiff.axes, slice(r0, r1)), self._tiff, self.source)
        else:
            lead = (0,) * self._lead
            if self._layout == "cyx":
                band = np.moveaxis(np.asarray(self._arr[lead + (slice(None), slice(r0, r1))]), 0, -1)
            else:
                band = np.asarray(self._arr[lead + (slice(r0, r1),)])
        grey = _grey_values(_to_grey(band, self.source) if band.ndim == 3 else band)
        _refuse_non_finite(grey, self.source, f" in rows {r0}-{r0 + grey.shape[0] - 1}")
        return grey

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _grey_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.uint8, np.uint16) else (np.dtype(np.uint8) if dtype == np.bool_ else np.dtype(np.float32))


def _grey_values(grey: np.ndarray) -> np.ndarray:
    """uint8/uint16 kept, bool to 0/255, anything else to float32: the dtypes bigseg stores."""
    if grey.dtype == np.bool_:
        return grey.astype(np.uint8) * 255
    if grey.dtype not in (np.uint8, np.uint16):
        return grey.astype(np.float32)
    return grey


def _refuse_linked_zarr(path: Path, source: str) -> None:
    """A Zarr input holding a link, a FIFO or a device is refused: a link may lead anywhere (a device,
    another image's chunk), and a FIFO or device would block or never end the read."""
    found = foreign_entry(path)
    if found:
        raise ImageReadError(f"{source}: {found[0]} is {found[1]}; bigseg reads a Zarr image only from its own "
                             f"files (copy the data into the folder)")


def _refuse_missing_chunks(arr, source: str) -> None:
    """A Zarr input with a chunk missing is refused: it would read as the fill value, a blank square nobody
    can tell from the specimen."""
    missing = int(arr.nchunks) - int(arr.nchunks_initialized)
    if missing:
        raise ImageReadError(f"{source}: {missing} of {arr.nchunks} chunks of the image are missing and would "
                             f"read as {arr.fill_value} (a blank square); copy the folder again, or write it with "
                             f"every chunk stored (write_empty_chunks=True)")


def _zarr_image(node, source: str):
    """The full-resolution array of a Zarr array or OME-Zarr image group, and its pixel size (um) if stated."""
    if not hasattr(node, "groups"):
        return node, None
    attrs = dict(node.attrs)
    ome = attrs.get("ome")
    ms = (ome.get("multiscales") if isinstance(ome, dict) else None) or attrs.get("multiscales")
    if not ms:
        if "0" in node:
            return node["0"], None
        raise ImageReadError(f"{source}: a Zarr group without OME multiscales metadata or an array '0'")
    try:
        level = ms[0]["datasets"][0]
        axes = ms[0].get("axes") or []
        path = str(level["path"])
    except (KeyError, IndexError, TypeError, AttributeError):
        # the reason, not "KeyError: 0": the metadata is what is wrong
        raise ImageReadError(f"{source}: OME-Zarr metadata without multiscales[0].datasets[0].path (the "
                             f"multiscales list is malformed); write it as OME-NGFF says") from None
    if path not in node:
        raise ImageReadError(f"{source}: OME-Zarr metadata names the array {excerpt(path)}, which the group "
                             f"does not hold")
    pixel_size = None
    for t in level.get("coordinateTransformations", []):
        if t.get("type") == "scale" and len(axes) == len(t["scale"]):
            names = [a.get("name") if isinstance(a, dict) else a for a in axes]
            units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
            if "x" in names and units[names.index("x")] in _UNIT_TO_UM:
                pixel_size = float(t["scale"][names.index("x")]) * _UNIT_TO_UM[units[names.index("x")]]
    return node[path], pixel_size


def detect_data_bar_banded(image: "ChunkedImage", search_fraction: float = 0.25, flat_std: float = 4.0) -> int:
    """:func:`detect_data_bar` on a chunked image, reading a band of rows at a time."""
    h = image.shape[0]
    if h < 8:
        return 0
    scale = 1.0
    if image.dtype != np.uint8:
        bands = (image.rows(r, r + BAND_ROWS) for r in range(0, h, BAND_ROWS))
        bounds = [(float(np.min(b)), float(np.max(b))) for b in bands]
        scale = _level_scale(min(lo for lo, _ in bounds), max(hi for _, hi in bounds))
    start = max(1, int(h * (1 - search_fraction)))
    std = np.concatenate([_row_texture(image.rows(r, min(r + BAND_ROWS, h)))
                          for r in range(start - 1, h, BAND_ROWS)]) * scale
    return _bar_top(std, start - 1, h, flat_std)


def _level_scale(lo: float, hi: float) -> float:
    """Factor that maps the value range ``lo..hi`` of a non-8-bit image onto 255 grey levels (a signed or
    offset 16-bit image, a float image: what matters is the contrast, not the largest value)."""
    return 255.0 / max(hi - lo, 1e-6) if hi > lo else 1.0


#: width of the median taken along each row before its texture is measured
ROW_MEDIAN = 5


def _row_texture(rows: np.ndarray) -> np.ndarray:
    """Standard deviation of each row after a median of ``ROW_MEDIAN`` pixels along it: JPEG ringing on the
    one-pixel line framing a data bar (a re-saved or CMYK JPEG) is no texture, a micrograph's rows keep theirs."""
    from scipy.ndimage import median_filter

    rows = np.asarray(rows, dtype=np.float32)
    return median_filter(rows, size=(1, ROW_MEDIAN), mode="nearest").std(axis=1)


def _bar_top(std: np.ndarray, first: int, h: int, flat_std: float) -> int:
    """Rows below the first flat row (``std`` covers rows ``first:h``) that sits under a textured one."""
    for r in range(first + 1, h):
        if std[r - first] < flat_std and std[r - first - 1] >= flat_std:
            return h - r
    return 0


def detect_data_bar(grey: np.ndarray, search_fraction: float = 0.25, flat_std: float = 4.0) -> int:
    """Rows of the SEM information band at the bottom, 0 if there is none.

    The data bar of SEM micrographs is a flat-coloured panel with text, framed
    by uniform lines; a natural micrograph row is never flat. We look for the
    highest near-uniform row in the bottom ``search_fraction`` of the frame
    that sits right under a textured row: that edge is the bar's top.
    """
    grey = np.asarray(grey)
    if grey.ndim != 2 or grey.shape[0] < 8:
        return 0
    # flat_std is in 8-bit grey levels: other types are scaled so that their value range spans 255
    scale = _level_scale(float(np.min(grey)), float(np.max(grey))) if grey.dtype != np.uint8 else 1.0
    h = grey.shape[0]
    start = max(1, int(h * (1 - search_fraction)))
    return _bar_top(_row_texture(grey[start - 1:]) * scale, start - 1, h, flat_std)


def crop_rows(grey: np.ndarray, crop_bottom, source: str = "") -> tuple[np.ndarray, int]:
    """Apply ``crop_bottom`` ('auto' or N rows); return the cropped image and N."""
    n = detect_data_bar(grey) if crop_bottom == "auto" else int(crop_bottom)
    if n >= grey.shape[0]:
        raise ImageReadError(f"{source}: crop_bottom={n} removes the whole image ({grey.shape[0]} rows)")
    return (grey[: grey.shape[0] - n] if n else grey), n


def choose_pixel_size(sidecar, from_file, file_source, setting) -> tuple[float | None, str | None]:
    """Micrometres per pixel and where it came from: the ``pixel_size_csv`` table first, then the file's own
    metadata (``file_source`` names it), then the ``pixel_size`` setting; ``(None, None)`` when none says."""
    for value, source in ((sidecar, "pixel_size_csv"), (from_file, file_source or "file"), (setting, "pixel_size")):
        if value:
            return float(value), source
    return None, None


def read_pixel_sizes(path) -> dict[str, float]:
    """A sidecar table ``image,pixel_size_um`` (image = file stem) as {stem: micrometres per pixel}."""
    import csv

    path = Path(path)
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark, which would hide the first column's name
        text = read_text(path, "pixel_size_csv", MAX_TEXT_BYTES)
    except OSError as exc:
        raise FileNotFoundError(f"pixel_size_csv {path}: {exc.strerror or exc}") from None
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise ValueError(f"pixel_size_csv {path}: not a readable CSV table ({exc})") from None
    if not rows or not {"image", "pixel_size_um"} <= set(rows[0]):
        raise ValueError(f"pixel_size_csv {path}: needs the columns image,pixel_size_um")
    out, lines = {}, {}
    for n, row in enumerate(rows, start=2):
        try:
            value = float(row["pixel_size_um"])
        except (TypeError, ValueError):
            value = -1.0
        if not 0 < value < math.inf:
            raise ValueError(f"pixel_size_csv {path}, line {n}: pixel_size_um {excerpt(row['pixel_size_um'])} "
                             f"is not a positive number")
        if not row["image"]:
            raise ValueError(f"pixel_size_csv {path}, line {n}: no image name")
        stem = Path(row["image"]).stem
        if stem in out and out[stem] != value:
            raise ValueError(f"pixel_size_csv {path}, lines {lines[stem]} and {n}: image {excerpt(stem)} has two "
                             f"pixel sizes ({out[stem]:g} and {value:g} um); keep one row")
        out[stem] = value
        lines.setdefault(stem, n)
    return out


def read_label_mask(path) -> np.ndarray:
    """A class-index mask (any channel count with identical channels) as uint8/uint16 2-D."""
    check_image_file(path, str(path), what="mask")
    if Path(path).suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:     # the size is checked from the header before anything is decoded
            plane = _tiff_first_image(tif, str(path), MAX_IMAGE_PIXELS)
            arr = _as_yxs(tif.series[0].levels[0].keyframe.asarray(), plane.page_axes)
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    if arr.ndim == 3:
        colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        if np.any(colour != colour[..., :1]):
            raise ValueError(f"{path}: a colour picture ({arr.shape[-1]} channels that differ), not a map of "
                             f"class indices (one channel: 0, 1, ... per class); coloured masks show classes, "
                             f"index masks store them")
        arr = arr[..., 0]
    return arr


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give the finished temporary file the permissions a plain ``open`` would, then rename it into place."""
    # mkstemp makes files only their owner can read; colleagues on a shared file system must read outputs too
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def staged_bytes(path, data: bytes) -> str:
    """Write ``data`` to a temporary file beside ``path`` (a short name: a hash of ``path``'s, so any file name
    has one) and return its name; :func:`publish` puts it in place. A full disk names ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
            # a write error (ENOSPC) names no file, or the temporary one: the file being written is what to name
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return tmp


def publish(tmp: str, path) -> None:
    """Put a file written by :func:`staged_bytes` in place (with the permissions a plain ``open`` gives)."""
    try:
        _publish(tmp, Path(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers never see half a file."""
    publish(staged_bytes(path, data), path)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_palette_png(path, labels: np.ndarray, palette: np.ndarray) -> None:
    """Save a label map as a palette PNG atomically: it shows in colour, at a third of an RGB PNG's size and
    a tenth of its encoding time."""
    atomic_write_bytes(path, encode_png(np.asarray(labels).astype(np.uint8, copy=False), palette=palette))


def write_png(path, array: np.ndarray) -> None:
    """Save an 8-bit grey or RGB PNG atomically (any other array as Pillow's ``Image.fromarray`` makes it)."""
    array = np.asarray(array)
    if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        atomic_write_bytes(path, encode_png(array))
        return
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=PNG_LEVEL)
    atomic_write_bytes(path, buf.getvalue())


#: the deflate level of the PNGs bigseg writes. PNG is lossless at every level: the level trades file size
#: against encoding time only, never a decoded pixel
PNG_LEVEL = 1


def png_data(array: np.ndarray) -> bytes:
    """The compressed image data (``IDAT``) of an 8-bit ``(y, x)`` or ``(y, x, channels)`` array.

    Every row gets PNG filter 0 (none) and the rows go through deflate at
    ``PNG_LEVEL``, with libdeflate (imagecodecs) where it is there, else zlib.
    Pillow's adaptive filters cost more time than its deflate; on MetalDAM's
    overlays and label maps no filter and libdeflate's level 1 encode 5x faster
    than Pillow at level 1, into smaller files. The decoded pixels are the
    same whatever the filter, level or deflate implementation.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"PNG data is 8-bit here, got {array.dtype}")
    h, row = array.shape[0], int(np.prod(array.shape[1:]))
    rows = np.empty((h, 1 + row), np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = array.reshape(h, row)
    try:
        from imagecodecs import deflate_encode
    except ImportError:        # an imagecodecs built without libdeflate
        deflate_encode = None
    if deflate_encode is not None:
        try:
            return bytes(deflate_encode(rows, level=PNG_LEVEL))
        except Exception:      # imagecodecs' DeflateError, or a build whose codec is a stub
            pass
    import zlib

    return zlib.compress(rows, PNG_LEVEL)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png(array: np.ndarray, palette: np.ndarray | None = None, text: dict | None = None,
               data: bytes | None = None) -> bytes:
    """An 8-bit PNG of ``array``: grey ``(y, x)``, RGB ``(y, x, 3)``, or with ``palette`` (``(n, 3)``, at most
    256 entries) an indexed ``(y, x)`` map.

    ``text`` (``{key: str}``) goes into iTXt chunks as Pillow's
    ``PngInfo.add_itxt`` writes them (``Image.open(...).text`` reads them).
    ``data``: the compressed rows (:func:`png_data`) where the caller has
    them already: a label map and its palette picture hold the same bytes.
    """
    import struct

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3) \
            or (palette is not None and array.ndim != 2):
        raise ValueError(f"encode_png takes uint8 (y, x) or (y, x, 3) arrays (a palette: (y, x)), "
                         f"got {array.dtype} {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"a PNG has at least one pixel, got shape {array.shape}")
    h, w = array.shape[:2]
    colour_type = 3 if palette is not None else (2 if array.ndim == 3 else 0)
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + str(value).encode("utf-8")))
    if palette is not None:
        out.append(_png_chunk(b"PLTE", np.asarray(palette, dtype=np.uint8)[:256].reshape(-1, 3).tobytes()))
    out.append(_png_chunk(b"IDAT", png_data(array) if data is None else data))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def write_tiled_tiff(path, tiles, shape, dtype, tile: int = 256) -> None:
    """Write a tiled, zlib-compressed TIFF from an iterator of tiles (row-major), atomically.

    ``tiles`` yields arrays of at most ``(tile, tile[, 3])``; edge tiles are padded.
    Only one tile is held at a time, so a label map larger than memory can be written.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = tuple(shape[2:])

    def padded():
        for t in tiles:
            if t.shape[:2] != (tile, tile):
                full = np.zeros((tile, tile) + extra, dtype=dtype)
                full[: t.shape[0], : t.shape[1]] = t
                t = full
            yield np.ascontiguousarray(t, dtype=dtype)

    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, padded(), shape=tuple(shape), dtype=dtype, tile=(tile, tile), compression="zlib",
                         photometric="rgb" if extra else "minisblack")
        _publish(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from None      # the file meant, not its temporary name
        raise
