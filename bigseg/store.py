"""The Zarr v3 store of a run, its xarray views, completion records and atomic files.

Layout of ``store.zarr`` (OME-NGFF 0.5 where it fits, so images and labels open
in napari/ome-zarr viewers)::

    images/<id>/                 OME multiscales group, attrs["bigseg"] = provenance
    images/<id>/0                (y, x) grey image as read, cropped, native size
    images/<id>/labels/phases/0  (y, x) uint8 phase labels at the same size (OME image-label)
    features/<id>/               xarray Dataset: features (y, x, feature), float16 bit-rounded by default
    activations/<id>             (component, y, x) float32 on the processing grid: W
    memberships/<id>             (component, y, x) float16: W normalised to sum 1 per pixel (soft labels)

One array per image, not a padded stack: micrographs of one archive come in
several sizes, and padding MetalDAM's 1024x703 and 1280x895 frames to one shape
would store 35% zeros.

Completion records live beside the store in ``<out>/records/<stage>/<id>.json``,
each written last and atomically, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io import atomic_write_text

OME_VERSION = "0.5"


def open_root(path, mode: str = "a"):
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=3)


def _multiscales(name: str, axes, scale) -> dict:
    return {
        "version": OME_VERSION,
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }],
    }


def _yx_axes(pixel_size):
    unit = {"unit": "micrometer"} if pixel_size else {}
    return [dict(name="y", type="space", **unit), dict(name="x", type="space", **unit)]


def write_image(root, image_id: str, grey: np.ndarray, provenance: dict, chunk: int = 1024) -> None:
    """Store one cropped grey image with its provenance (source, shapes, dtype, crop, pixel size)."""
    arr = _image_array(root, image_id, grey.shape, grey.dtype, provenance, chunk)
    arr[...] = grey


def write_image_bands(root, image_id: str, read_rows, shape, dtype, provenance: dict, chunk: int = 1024) -> None:
    """Store an image too large to hold: ``read_rows(r0, r1)`` gives grey rows, one chunk row at a time."""
    arr = _image_array(root, image_id, shape, dtype, provenance, chunk)
    for r0 in range(0, shape[0], arr.chunks[0]):
        r1 = min(r0 + arr.chunks[0], shape[0])
        arr[r0:r1] = read_rows(r0, r1)


def _image_array(root, image_id, shape, dtype, provenance, chunk):
    grp = root.require_group("images").create_group(image_id, overwrite=True)
    px = provenance.get("pixel_size")
    grp.attrs.update({"ome": _multiscales(image_id, _yx_axes(px), [px or 1.0, px or 1.0]),
                      "bigseg": provenance})
    return grp.create_array("0", shape=tuple(shape), dtype=dtype, chunks=tuple(min(chunk, s) for s in shape),
                            dimension_names=("y", "x"))


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


def create_labels(root, image_id: str, shape, n_components: int, colors, chunk: int):
    """An OME image-label array for one image, same size as the image; returns the zarr array."""
    img = root[f"images/{image_id}"]
    px = img.attrs["bigseg"].get("pixel_size")
    labels = img.require_group("labels")
    labels.attrs.update({"ome": {"version": OME_VERSION, "labels": ["phases"]}})
    grp = labels.create_group("phases", overwrite=True)
    ome = _multiscales("phases", _yx_axes(px), [px or 1.0, px or 1.0])
    ome["image-label"] = {
        "version": OME_VERSION,
        "colors": [{"label-value": i, "rgba": [int(c) for c in colors[i]] + [255]} for i in range(n_components)],
        "source": {"image": "../../"},
    }
    grp.attrs.update({"ome": ome})
    return grp.create_array("0", shape=tuple(shape), dtype="uint8", chunks=(chunk, chunk),
                            dimension_names=("y", "x"), fill_value=0)


def create_activations(root, image_id: str, shape, n_components: int, chunk: int, group: str = "activations",
                       dtype: str = "float32"):
    """A ``(component, y, x)`` array for one image in ``group`` (activations or memberships)."""
    grp = root.require_group(group)
    return grp.create_array(image_id, shape=(n_components,) + tuple(shape), dtype=dtype,
                            chunks=(n_components, chunk, chunk), dimension_names=("component", "y", "x"),
                            overwrite=True, fill_value=0.0)


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

def record_path(out_dir, stage: str, image_id: str) -> Path:
    return Path(out_dir) / "records" / stage / f"{image_id}.json"


def mark_done(out_dir, stage: str, image_id: str, info: dict | None = None) -> str:
    """Write the completion record of one image's stage; call it after every output is written."""
    atomic_write_text(record_path(out_dir, stage, image_id), json.dumps(info or {}, sort_keys=True))
    return image_id


def is_done(out_dir, stage: str, image_id: str) -> bool:
    return record_path(out_dir, stage, image_id).exists()


def read_record(out_dir, stage: str, image_id: str) -> dict:
    return json.loads(record_path(out_dir, stage, image_id).read_text())


def file_identity(path) -> dict | None:
    """What a record says of an input: size, modification time and a content hash (None if unreadable).

    The hash is what decides: a file replaced in place, even with its old size
    and time kept, is read again. A Zarr folder is hashed over its files' names,
    sizes and times, since reading every chunk of a montage would cost as much
    as ingesting it.
    """
    import hashlib
    import os

    path = Path(path)
    digest = hashlib.sha256()
    try:
        st = path.stat()
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
