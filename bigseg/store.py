"""The Zarr v3 store of a run, its xarray views, completion records and atomic files.

Layout of ``store.zarr``: an OME-NGFF 0.5 collection in the ``bioformats2raw.layout``
convention (NGFF 0.5 has no other collection of images; 0.6's "scene" is a draft),
so napari-ome-zarr opens the root whole (every image with its phase labels) and
each image also opens alone in any OME-Zarr reader (ome-zarr-py's ``Reader``, which
does not follow the layout, opens them one by one). The metadata is written here as
plain attributes, validated by the tests with ome-zarr-models: the writers of
ome-zarr-py/-models would add runtime dependencies and write whole arrays, not a
band of rows of every level at once::

    zarr.json                        attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    OME/zarr.json                    attrs["ome"]["series"] = ["images/<id>", ...]: the index
    OME/METADATA.ome.xml             one <Image ID="Image:images/<id>"> per image, in series order
    images/<id>/                     OME multiscales group (omero: grey, window = the image's range),
                                     attrs["bigseg"] = provenance
    images/<id>/0, 1, ...            (y, x) grey image as read, cropped, native size; 1, 2, ... the
                                     pyramid (2x2 means) of an image over PYRAMID_MIN_SIDE on a side
    images/<id>/labels/phases/0, ... (y, x) uint8 OME image-label, same size and levels as the image:
                                     1..k = phase 0..k-1, 0 = unassigned (labels/*.png keep 0..k-1)
    features/<id>/                   xarray Dataset: features (y, x, feature), float16 bit-rounded by default
    activations/<id>/0, ...          (component, y, x) float32 on the processing grid: W, an OME
                                     multiscales group whose scale places it on the image
    memberships/<id>/0, ...          (component, y, x) float16: W normalised to sum 1 per pixel (soft
                                     labels), likewise; one channel per phase, named

One array per image, not a padded stack: micrographs of one archive come in
several sizes, and padding MetalDAM's 1024x703 and 1280x895 frames to one shape
would store 35% zeros.

Pyramid levels halve both sides (``ceil``) until the longer side is at most
``PYRAMID_TOP_SIDE``. The grey image's levels are 2x2 means (their centres, so
their translations, move by half a coarse pixel); labels, activations and
memberships are strided (every other pixel, no translation): a label is never
averaged, and a stride level of a band of rows needs no row of its neighbours,
so every level is written in the same pass (and the same dask graph) as level 0.
Axes carry ``unit: micrometer`` only when the image's pixel size is known.

Completion records live beside the store in ``<out>/records/<stage>/<id>.json``,
each written last and atomically, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
from math import gcd
from pathlib import Path

import numpy as np

from .io import atomic_write_text
from .safety import read_regular, refuse_links

OME_VERSION = "0.5"
#: images (and their labels, activations, memberships) over this many pixels on a side get a pyramid
PYRAMID_MIN_SIDE = 2048
#: a pyramid halves until the longer side is at most this
PYRAMID_TOP_SIDE = 1024
#: the name of the OME image-label of the phases, under ``images/<id>/labels``
LABELS_NAME = "phases"
#: the image-label value of a pixel no phase was assigned to (phase i is stored as i + 1)
UNASSIGNED = 0


def open_root(path, mode: str = "a"):
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=3)


# --- OME metadata ------------------------------------------------------------------

def pyramid_levels(shape) -> int:
    """How many resolution levels an array of ``shape`` (last two axes y, x) is stored with."""
    side = max(int(s) for s in tuple(shape)[-2:])
    if side <= PYRAMID_MIN_SIDE:
        return 1
    n = 1
    while -(-side // 2 ** (n - 1)) > PYRAMID_TOP_SIDE:
        n += 1
    return n


def level_shape(shape, level: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    f = 2 ** level
    return shape[:-2] + tuple(-(-s // f) for s in shape[-2:])


def _yx_axes(pixel_size):
    unit = {"unit": "micrometer"} if pixel_size else {}
    return [dict(name="y", type="space", **unit), dict(name="x", type="space", **unit)]


def _multiscales(name: str, axes, scale, levels: int = 1, method: str = "stride", translation=None) -> dict:
    """OME ``multiscales`` of ``levels`` datasets ``"0", "1", ...``, each halving the last two axes.

    ``scale`` and ``translation`` are level 0's (physical units per pixel and the
    position of pixel 0's centre); ``method`` ``"mean"`` moves each coarser level's
    pixel centres to the middle of the block it averages.
    """
    translation = list(translation) if translation is not None else [0.0] * len(scale)
    datasets = []
    for level in range(levels):
        f = 2 ** level
        s = [float(v) for v in scale[:-2]] + [float(v) * f for v in scale[-2:]]
        t = list(translation)
        if method == "mean":
            t = t[:-2] + [t[i] + (f - 1) / 2 * float(scale[i]) for i in (-2, -1)]
        transforms = [{"type": "scale", "scale": s}]
        if any(t):
            transforms.append({"type": "translation", "translation": [float(v) for v in t]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    ms = {"name": name, "axes": axes, "datasets": datasets}
    if levels > 1:
        ms["type"] = method
    return {"version": OME_VERSION, "multiscales": [ms]}


def float_codec():
    """The compressor of activations and memberships: Blosc lz4 over shuffled bytes. On MetalDAM's
    activations it writes five times faster than zarr's default zstd and stores fewer bytes (0.80 of
    the raw size against 0.86); labels keep zstd, which packs them four times smaller than lz4 at the
    same speed."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")


def _level_arrays(grp, shape, dtype, chunks, levels: int, dims, fill_value=None, compressors="auto") -> list:
    return [grp.create_array(str(level), shape=level_shape(shape, level), dtype=dtype,
                             chunks=tuple(min(c, s) for c, s in zip(chunks, level_shape(shape, level))),
                             dimension_names=dims, fill_value=fill_value, compressors=compressors)
            for level in range(levels)]


# --- images -------------------------------------------------------------------------

def mean2(block: np.ndarray) -> np.ndarray:
    """2x2 means over the last two axes (an odd last row or column averages with itself), in ``block``'s dtype."""
    h, w = block.shape[-2:]
    if h % 2 or w % 2:
        block = np.pad(block, [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)], mode="edge")
    f = block.astype(np.result_type(block.dtype, np.float32))
    m = (f[..., ::2, ::2] + f[..., 1::2, ::2] + f[..., ::2, 1::2] + f[..., 1::2, 1::2]) * 0.25
    return np.rint(m).astype(block.dtype) if block.dtype.kind in "uib" else m.astype(block.dtype)


def write_image(root, image_id: str, grey: np.ndarray, provenance: dict, chunk: int = 1024) -> None:
    """Store one cropped grey image with its provenance (source, shapes, dtype, crop, pixel size)."""
    window = (grey.min(), grey.max()) if grey.size else (0, 0)
    arrays = _image_arrays(root, image_id, grey.shape, grey.dtype, provenance, chunk, window)
    level = grey
    for n, arr in enumerate(arrays):
        level = mean2(level) if n else level
        arr[...] = level


def write_image_bands(root, image_id: str, read_rows, shape, dtype, provenance: dict, chunk: int = 1024) -> None:
    """Store an image too large to hold: ``read_rows(r0, r1)`` gives grey rows, one band at a time.

    Each band also gives its rows of every pyramid level, so the image is read
    once: bands are a multiple of the chunk rows and of ``2 ** (levels - 1)``
    rows, so no 2x2 block of any level straddles two bands.
    """
    arrays = _image_arrays(root, image_id, shape, dtype, provenance, chunk)
    step = 2 ** (len(arrays) - 1)
    band = arrays[0].chunks[0] * step // gcd(arrays[0].chunks[0], step)
    lo, hi = [], []
    for r0 in range(0, shape[0], band):
        rows = read_rows(r0, min(r0 + band, shape[0]))
        lo.append(rows.min())
        hi.append(rows.max())
        for level, arr in enumerate(arrays):
            rows = mean2(rows) if level else rows
            top = r0 // 2 ** level
            arr[top:top + rows.shape[0]] = rows
    _set_window(root, image_id, min(lo, default=0), max(hi, default=0))


def _set_window(root, image_id, lo, hi) -> None:
    grp = root[f"images/{image_id}"]
    ome = dict(grp.attrs["ome"])
    ome["omero"] = _omero_grey(grp["0"].dtype, lo, hi)
    grp.attrs.update({"ome": ome})


def _omero_grey(dtype, lo, hi) -> dict:
    """The image's display settings (OME ``omero``): grey, from its darkest to its brightest value,
    named ``<id>: micrograph`` in napari."""
    dtype = np.dtype(dtype)
    full = (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "ui" else (float(lo), float(hi))
    return {"rdefs": {"model": "greyscale"}, "channels": [
        {"label": "micrograph", "color": "FFFFFF", "active": True,
         "window": {"min": float(full[0]), "max": float(full[1]), "start": float(lo), "end": float(hi)}}]}


def _image_arrays(root, image_id, shape, dtype, provenance, chunk, window=None) -> list:
    """The image's group and its level arrays; with its ``window`` (darkest, brightest) known now, the group's
    metadata is written once, as it is created (each later change of it is a read and a write)."""
    px = provenance.get("pixel_size")
    levels = pyramid_levels(shape)
    ome = _multiscales(image_id, _yx_axes(px), [px or 1.0, px or 1.0], levels, "mean")
    if window is not None:
        ome["omero"] = _omero_grey(dtype, *window)
    grp = root.require_group("images").create_group(image_id, overwrite=True,
                                                     attributes={"ome": ome, "bigseg": provenance})
    return _level_arrays(grp, shape, dtype, (chunk, chunk), levels, ("y", "x"))


def image_info(root, image_id: str) -> dict:
    return dict(root[f"images/{image_id}"].attrs["bigseg"])


def image_ids(root) -> list[str]:
    if "images" not in root:
        return []
    return sorted(name for name, _ in root["images"].groups())


def lazy_image(root, image_id: str):
    import dask.array as da

    arr = root[f"images/{image_id}/0"]
    return da.from_zarr(arr)


# --- the collection index -------------------------------------------------------------

_OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
_OME_PIXEL_TYPES = {"uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "int8": "int8", "int16": "int16",
                    "int32": "int32", "float32": "float", "float64": "double", "bool": "bit"}


def write_index(root, out_dir=None) -> list[str]:
    """Make the store root an OME-Zarr collection of its images (``bioformats2raw.layout``); returns the series.

    The series are the stored images (with an ``ingest`` record in ``out_dir``,
    the store's folder by default), listed both as ``OME``'s ``series`` attribute
    (NGFF 0.5) and as ``OME/METADATA.ome.xml`` images whose IDs are their paths
    (what napari-ome-zarr follows). Write it from one process only: it is the
    driver's, after a stage, never a task's.
    """
    import xml.etree.ElementTree as ET

    from . import __version__

    folder = Path(str(root.store.root)) / root.path
    out_dir = Path(out_dir) if out_dir is not None else folder.parent
    ids = [i for i in image_ids(root) if "0" in root[f"images/{i}"] and is_done(out_dir, "ingest", i)]
    series = [f"images/{i}" for i in ids]
    ET.register_namespace("", _OME_NS)
    ome = ET.Element(f"{{{_OME_NS}}}OME", {"Creator": f"bigseg {__version__}"})
    for n, image_id in enumerate(ids):
        arr = root[f"images/{image_id}/0"]
        px = image_info(root, image_id).get("pixel_size")
        image = ET.SubElement(ome, f"{{{_OME_NS}}}Image", {"ID": f"Image:{series[n]}", "Name": image_id})
        pixels = {"ID": f"Pixels:{n}", "DimensionOrder": "XYZCT",
                  "Type": _OME_PIXEL_TYPES.get(str(arr.dtype), "float"), "SizeX": str(arr.shape[1]),
                  "SizeY": str(arr.shape[0]), "SizeZ": "1", "SizeC": "1", "SizeT": "1"}
        if px:
            pixels.update({"PhysicalSizeX": repr(float(px)), "PhysicalSizeXUnit": "µm",
                           "PhysicalSizeY": repr(float(px)), "PhysicalSizeYUnit": "µm"})
        node = ET.SubElement(image, f"{{{_OME_NS}}}Pixels", pixels)
        ET.SubElement(node, f"{{{_OME_NS}}}Channel", {"ID": f"Channel:{n}:0", "SamplesPerPixel": "1"})
        ET.SubElement(node, f"{{{_OME_NS}}}MetadataOnly")
    xml = ET.tostring(ome, encoding="unicode", xml_declaration=True)
    index = root.require_group("OME")
    atomic_write_text(folder / "OME" / "METADATA.ome.xml", xml)
    index.attrs.update({"ome": {"version": OME_VERSION, "series": series}})
    root.attrs.update({"ome": {"version": OME_VERSION, "bioformats2raw.layout": 3}})
    return series


# --- labels ---------------------------------------------------------------------------

class PhaseLabels:
    """The OME label image of one image's phases, read and written as phase indices 0..k-1.

    On disk phase ``i`` is ``i + 1`` and 0 is unassigned (OME and napari take 0
    for background); an unassigned pixel reads as 255. A write also writes its
    share of every coarser level (strided), so a whole-image write gives the
    whole pyramid; a dask graph writing blocks concurrently goes through
    :func:`store_args` instead, which keeps each level's chunk to one task.
    """

    offset = 1

    def __init__(self, levels):
        self.levels = list(levels)

    @property
    def shape(self):
        return self.levels[0].shape

    @property
    def chunks(self):
        return self.levels[0].chunks

    @property
    def dtype(self):
        return self.levels[0].dtype

    @property
    def ndim(self):
        return len(self.shape)

    def __getitem__(self, key):
        return np.asarray(self.levels[0][key]) - np.uint8(self.offset)

    def __setitem__(self, key, value):
        value = np.asarray(value)
        bounds = _bounds(_region(key, self.shape), self.shape)
        stored = np.broadcast_to((value + self.offset).astype(self.dtype), [b - a for a, b in bounds])
        self.levels[0][tuple(slice(a, b) for a, b in bounds)] = stored
        for level, arr in enumerate(self.levels[1:], 1):
            plan = _stride_plan(bounds, 2 ** level)
            if plan is not None:
                local, target = plan
                arr[target] = stored[local]


#: the name of the OME image-label of the microconstituents (``n_constituents`` > 0), beside the phases'
CONSTITUENTS_NAME = "constituents"


def create_labels(root, image_id: str, shape, n_components: int, colors, chunk: int, names=None,
                  name: str = LABELS_NAME) -> PhaseLabels:
    """The OME image-label of one image's phases (or, with ``name`` :data:`CONSTITUENTS_NAME`, of its
    microconstituents, added beside the phases'), same size and levels as the image.

    ``colors`` are RGB per phase (cycled), ``names`` one per phase (default
    ``phase i``): the image-label's ``colors`` and ``properties`` give each
    stored value its colour, name and phase index; value 0 is ``unassigned``.
    Returns the :class:`PhaseLabels` through which the pipeline writes indices 0..k-1.
    """
    img = root[f"images/{image_id}"]
    px = img.attrs["bigseg"].get("pixel_size")
    levels = len(img.attrs["ome"]["multiscales"][0]["datasets"])
    if name == LABELS_NAME:
        # the phases' label image comes first: the labels group is made afresh with it, metadata included
        labels = img.create_group("labels", overwrite=True,
                                  attributes={"ome": {"version": OME_VERSION, "labels": [LABELS_NAME]}})
    else:
        labels = img["labels"]
        listed = [n for n in labels.attrs["ome"]["labels"] if n != name] + [name]
        labels.attrs.update({"ome": {"version": OME_VERSION, "labels": listed}})
    ome = _multiscales(name, _yx_axes(px), [px or 1.0, px or 1.0], levels, "stride")
    ome["image-label"] = _image_label(n_components, colors, names, "phase" if name == LABELS_NAME else "constituent")
    grp = labels.create_group(name, overwrite=True, attributes={"ome": ome})
    return PhaseLabels(_level_arrays(grp, shape, "uint8", (chunk, chunk), levels, ("y", "x"), fill_value=UNASSIGNED))


def phase_names(names, k: int) -> list[str]:
    names = list(names) if names else []
    return names if len(names) == k else [f"phase {i}" for i in range(k)]


def _image_label(k: int, colors, names, kind: str = "phase") -> dict:
    names = phase_names(names, k)
    colors = [[int(v) for v in c][:3] for c in colors] or [[255, 255, 255]]
    return {
        "colors": [{"label-value": UNASSIGNED, "rgba": [0, 0, 0, 0]}]
                  + [{"label-value": i + 1, "rgba": colors[i % len(colors)] + [255]} for i in range(k)],
        "properties": [{"label-value": UNASSIGNED, "name": "unassigned"}]
                      + [{"label-value": i + 1, "name": names[i], kind: i} for i in range(k)],
        "source": {"image": "../../"},
    }


def rename_phases(root, names, label: str = LABELS_NAME) -> int:
    """Give the stored label images and memberships these phase names (where their phase count matches);
    returns how many groups changed. Labels are not touched: names change no value. With ``label``
    :data:`CONSTITUENTS_NAME`, the constituents' label images instead (they have no memberships)."""
    names = list(names)
    done = 0
    for image_id in image_ids(root):
        groups = [(f"images/{image_id}/labels/{label}", "image-label")]
        if label == LABELS_NAME:
            groups.append((f"memberships/{image_id}", "omero"))
        for path, key in groups:
            if path not in root:
                continue
            grp = root[path]
            ome = dict(grp.attrs.get("ome") or {})
            block = ome.get(key)
            if block is None:
                continue
            if key == "image-label":
                props = [p for p in block.get("properties", []) if p.get("label-value") != UNASSIGNED]
                if len(props) != len(names) or [p["name"] for p in props] == names:
                    continue
                block = dict(block, properties=block["properties"][:1]
                             + [dict(p, name=names[p["label-value"] - 1]) for p in props])
            else:
                if len(block["channels"]) != len(names) or [c.get("label") for c in block["channels"]] == names:
                    continue
                block = dict(block, channels=[dict(c, label=n) for c, n in zip(block["channels"], names)])
            ome[key] = block
            grp.attrs.update({"ome": ome})
            done += 1
    return done


# --- activations and memberships -----------------------------------------------------

def create_activations(root, image_id: str, shape, n_components: int, chunk: int, group: str = "activations",
                       dtype: str = "float32", names=None, colors=None):
    """A ``(component, y, x)`` OME multiscales group for one image in ``group`` (activations or memberships);
    returns its level 0, ``<group>/<id>/0``.

    ``shape`` is the processing grid; the scale (and translation) of level 0
    place its pixel centres on the image's native grid (as the labels'
    bilinear resampling does), in micrometres when the pixel size is known,
    so the channels overlay the image in a viewer. ``names`` (one per
    component, as for memberships: the phases) become omero channel labels.
    """
    info = image_info(root, image_id)
    px = info.get("pixel_size") or 1.0
    native = [int(s) for s in info["shape"]]
    ratio = [n / int(s) for n, s in zip(native, shape)]
    scale = [1.0] + [px * r for r in ratio]
    translation = [0.0] + [px * (r - 1) / 2 for r in ratio]
    levels = pyramid_levels(shape)
    axes = [{"name": "component", "type": "channel"}] + _yx_axes(info.get("pixel_size"))
    ome = _multiscales(image_id, axes, scale, levels, "stride", translation)
    if names is not None:
        colors = [[int(v) for v in c][:3] for c in (colors if colors is not None else [])] or [[255, 255, 255]]
        ome["omero"] = {"channels": [
            {"label": str(name), "color": "%02X%02X%02X" % tuple(colors[i % len(colors)]), "active": True,
             "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}}
            for i, name in enumerate(phase_names(names, n_components))]}
    grp = root.require_group(group).create_group(image_id, overwrite=True, attributes={
        "ome": ome, "bigseg": {"image": image_id, "grid": [int(s) for s in shape], "native_shape": native}})
    return _level_arrays(grp, (n_components,) + tuple(shape), dtype, (n_components, chunk, chunk), levels,
                         ("component", "y", "x"), fill_value=0.0, compressors=[float_codec()])[0]


# --- pyramids in the dask graph ------------------------------------------------------

def _region(key, shape) -> tuple:
    """``key`` (slices, an Ellipsis, or None) as one slice per axis."""
    if key is None or key is Ellipsis:
        key = ()
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    if not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
        raise TypeError(f"a pyramid is written through unit-step slices, not {key!r}")
    return key


def _bounds(region, shape) -> list[tuple[int, int]]:
    return [k.indices(int(s))[:2] for k, s in zip(region, shape)]


def _stride_plan(bounds, step: int):
    """For a level-0 region ``bounds``: the slices of its values that fall on the grid of a level ``step``
    times coarser, and the level's region they fill; ``None`` when none falls on it."""
    local, target = [slice(None)] * (len(bounds) - 2), [slice(a, b) for a, b in bounds[:-2]]
    for a, b in bounds[-2:]:
        g0, g1 = -(-a // step), -(-b // step)
        if g1 <= g0:
            return None
        local.append(slice(g0 * step - a, None, step))
        target.append(slice(g0, g1))
    return tuple(local), tuple(target)


def _aligned_chunks(start: int, n: int, chunk: int) -> tuple[int, ...]:
    """Lengths that split ``n`` items from ``start`` at multiples of ``chunk``."""
    out, pos, end = [], start, start + n
    while pos < end:
        nxt = min(end, (pos // chunk + 1) * chunk)
        out.append(nxt - pos)
        pos = nxt
    return tuple(out) or (0,)


def _levels_of(target):
    """The arrays of ``target``'s pyramid (level 0 first) and the value offset stored."""
    if isinstance(target, PhaseLabels):
        return target.levels, target.offset
    path = getattr(target, "path", "")
    if not path.endswith("/0"):
        return [target], 0
    import zarr

    try:
        grp = zarr.open_group(store=target.store, path=path.rsplit("/", 1)[0], mode="r+")
        datasets = grp.attrs["ome"]["multiscales"][0]["datasets"]
    except (KeyError, IndexError, TypeError, FileNotFoundError):
        return [target], 0
    return [target] + [grp[d["path"]] for d in datasets[1:]], 0


def _copy(block):
    return np.array(block, copy=True)


def write_whole(target, values) -> None:
    """Write an array held in memory into ``target`` and every coarser level of its pyramid (the values on
    each level's grid): :func:`store_args` for an image computed whole, without building a dask graph."""
    levels, offset = _levels_of(target)
    values = np.asarray(values)
    if offset:
        values = (values + offset).astype(levels[0].dtype)
    for level, arr in enumerate(levels):
        arr[...] = values[..., ::2 ** level, ::2 ** level]


def store_args(sources, targets, regions=None) -> dict:
    """``da.store`` keyword arguments that write each lazy source into its target and every coarser level.

    Targets are ``create_activations`` arrays, :class:`PhaseLabels` (written
    as 1..k) or plain arrays (level 0 only); ``regions`` as for ``da.store``.
    A level's values are the source's pixels on its grid (stride), rechunked to
    the level's chunks, so each chunk is written by one task of the graph.
    """
    regions = list(regions) if isinstance(regions, list) else [regions] * len(sources)
    out = {"sources": [], "targets": [], "regions": []}
    for src, tgt, region in zip(sources, targets, regions):
        levels, offset = _levels_of(tgt)
        if offset:
            src = (src + offset).astype(levels[0].dtype)
        bounds = _bounds(_region(region, levels[0].shape), levels[0].shape)
        out["sources"].append(_aligned(src, [slice(a, b) for a, b in bounds], levels[0]))
        out["targets"].append(levels[0])
        out["regions"].append(region)
        for level, arr in enumerate(levels[1:], 1):
            plan = _stride_plan(bounds, 2 ** level)
            if plan is None:
                continue
            local, target = plan
            out["sources"].append(_aligned(src[local].map_blocks(_copy, dtype=src.dtype), target, arr))
            out["targets"].append(arr)
            out["regions"].append(target)
    return out


def _aligned(src, region, arr):
    """``src`` rechunked so its blocks fall on ``arr``'s chunks at ``region`` (a no-op when they do):
    two tasks writing parts of one chunk at once would lose one's part."""
    return src.rechunk(tuple(_aligned_chunks(r.start, r.stop - r.start, c) for r, c in zip(region, arr.chunks)))


def features_group(image_id: str) -> str:
    return f"features/{image_id}"


def round_significand(block: np.ndarray, dtype: str, keep_bits: int) -> np.ndarray:
    """``block`` as ``dtype`` with only ``keep_bits`` significand bits, rounded to nearest.

    Zeroing the low bits (bit rounding, as in ``numcodecs.BitRound``) makes the
    bytes repeat, so the compressor can shrink them: the feature store goes from
    about 22 to under 8 bytes per pixel at a relative error of at most 2^-(keep_bits+1).
    """
    out = np.asarray(block, dtype=dtype)
    total = {"float16": 10, "float32": 23}[str(out.dtype)]
    drop = total - keep_bits
    if drop <= 0:
        return out
    uint = {"float16": np.uint16, "float32": np.uint32}[str(out.dtype)]
    bits = out.view(uint)
    half = uint(1 << (drop - 1))
    mask = uint(~np.array((1 << drop) - 1, dtype=uint))
    finite = np.isfinite(out)
    rounded = ((bits + half) & mask).view(out.dtype)
    # rounding up may carry into the exponent, which is still the nearest value;
    # only inf/nan and values that would overflow keep their bits
    return np.where(finite & np.isfinite(rounded), rounded, out)


def features_to_zarr(store_path, image_id: str, feats, names, attrs: dict, dtype: str = "float16",
                     keep_bits: int = 8):
    """Lazy write of one image's feature stack through xarray; returns a dask Delayed.

    Dimension names and the feature coordinate make ``xr.open_zarr`` give back a
    labelled ``(y, x, feature)`` array with the image id as a scalar coordinate.
    Values are stored as ``dtype`` rounded to ``keep_bits`` significand bits
    (:func:`round_significand`) and compressed with Zstandard after a byte shuffle.
    """
    import xarray as xr
    from zarr.codecs import BloscCodec

    stored = feats.map_blocks(round_significand, dtype, keep_bits, dtype=dtype)
    da_ = xr.DataArray(stored, dims=("y", "x", "feature"),
                       coords={"feature": np.array(list(names), dtype=object),
                               "image": np.array(image_id, dtype=object)}, name="features", attrs=attrs)
    ds = da_.to_dataset()
    chunks = tuple(c[0] for c in feats.chunks)
    codec = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
    return ds.to_zarr(str(store_path), group=features_group(image_id), mode="w", compute=False,
                      zarr_format=3, consolidated=False,
                      encoding={"features": {"chunks": chunks, "compressors": [codec]}})


def open_features(store_path, image_id: str):
    """The stored ``(y, x, feature)`` xarray DataArray of one image, lazy (dask-backed)."""
    import xarray as xr

    ds = xr.open_zarr(str(store_path), group=features_group(image_id), zarr_format=3, consolidated=False)
    return ds["features"]


# --- completion records -------------------------------------------------------

#: largest completion record read (a record is a few hundred bytes)
MAX_RECORD_BYTES = 2**20


def record_path(out_dir, stage: str, image_id: str) -> Path:
    return Path(out_dir) / "records" / stage / f"{image_id}.json"


def mark_done(out_dir, stage: str, image_id: str, info: dict | None = None) -> str:
    """Write the completion record of one image's stage; call it after every output is written."""
    atomic_write_text(record_path(out_dir, stage, image_id), json.dumps(info or {}, sort_keys=True))
    return image_id


def is_done(out_dir, stage: str, image_id: str) -> bool:
    return record_path(out_dir, stage, image_id).exists()


def read_record(out_dir, stage: str, image_id: str) -> dict:
    """An image's completion record; ``{}`` for one that is damaged, too large or no regular file (it then
    matches no expectation, so the stage is done again and the record written anew)."""
    try:
        record = json.loads(read_regular(record_path(out_dir, stage, image_id), "record", MAX_RECORD_BYTES,
                                         follow_links=False))
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def file_identity(path) -> dict | None:
    """What a record says of an input: size, modification time and a content hash (None if unreadable).

    The hash is what decides: a file replaced in place, even with its old size
    and time kept, is read again. A Zarr folder is hashed over its files' names,
    sizes and times, since reading every chunk of a montage would cost as much
    as ingesting it.
    """
    import hashlib
    import stat

    path = Path(path)
    digest = hashlib.sha256()
    try:
        st = path.stat()
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return None     # a device or FIFO is never hashed (it may never end): reading it refuses it by name
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                fs = f.stat()
                digest.update(f"{f.relative_to(path)}\0{fs.st_size}\0{fs.st_mtime_ns}\n".encode())
        else:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    except OSError:   # broken link, vanished or unreadable: the reader reports it by name
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": digest.hexdigest()}


def clear_records(out_dir, stage: str) -> None:
    d = Path(out_dir) / "records" / stage
    refuse_links(out_dir, [d])       # a linked folder's files are someone else's
    if d.exists():
        for f in d.glob("*.json"):
            f.unlink()


def clear_segmentation(out_dir, export_dirs) -> None:
    """Forget every image's segmentation: records first (so nothing looks done), then the exports in
    ``export_dirs`` and the stored activations, memberships and label images.

    Called when the folder's model changes, so the folder never holds labels of two models.
    """
    import shutil

    out_dir = Path(out_dir)
    # nothing is deleted through a link: one would carry the deletion out of the folder
    refuse_links(out_dir, [out_dir / "records" / "segment", out_dir / "store.zarr"]
                 + [out_dir / name for name in export_dirs])
    clear_records(out_dir, "segment")
    for name in export_dirs:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    store_path = out_dir / "store.zarr"
    if not store_path.exists():
        return
    root = open_root(store_path)
    for group in ("activations", "memberships"):
        if group in root:
            del root[group]
    for image_id in image_ids(root):
        if "labels" in root[f"images/{image_id}"]:
            del root[f"images/{image_id}/labels"]
