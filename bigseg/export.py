"""What a run shows: each image's label, colour, activation and overlay pictures, and the folder's tables.

Per image (:func:`export_image`, or :func:`export_large` for a montage read
back from the store): ``labels/`` (the label map, 8-bit grey PNG), ``color/``
(the same map as a palette PNG), ``activations/`` (titled viridis panels, one
per phase) and ``overlay/`` (the micrograph tinted and outlined by phase, with
a legend). Per folder (:func:`write_tables`): ``phase_fractions.csv``,
``phase_fractions_summary.csv``, ``fingerprints.png`` and ``summary.json``. The page that shows them all is
:mod:`bigseg.report`; renaming phases afterwards is :mod:`bigseg.rename`.

Everything here is pure apart from the files it writes (each atomically), so
it runs on any worker. Which images need exporting, and their completion
records, are the runner's (:mod:`bigseg.pipeline`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import diagnose, io, viz
from .model import fingerprints
from .phases import csv_names
from .safety import csv_text
from .segment import labels_at

#: the per-image picture folders of the microconstituents (``n_constituents`` > 0): labels, colour, overlay
CONSTITUENT_DIRS = ("constituents", "constituents_color", "constituents_overlay")
#: the constituents' per-image table, the collection's, and their fingerprints (:func:`write_constituent_table`)
CONSTITUENT_TABLES = ("constituent_fractions.csv", "constituent_fractions_summary.csv", "constituent_fingerprints.png")
#: the per-image picture folders; a new model clears them (with the records) before it segments
EXPORT_DIRS = ("labels", "color", "activations", "overlay") + CONSTITUENT_DIRS
#: longest side of the activation panels: larger images get a strided view
PANEL_MAX_SIDE = 1024


def _panel_view(acts_kyx: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(acts_kyx.shape[1:]) / PANEL_MAX_SIDE)))
    return acts_kyx[:, ::step, ::step]


def _names(names, k: int) -> list[str]:
    return list(names) if names is not None else [f"phase {i}" for i in range(k)]


def write_overlay(out_dir, image_id: str, grey, labels, names, folder: str = "overlay",
                  pixel_size: float | None = None) -> None:
    """``overlay/<id>.png``: the micrograph (8-bit) tinted and outlined by phase, with a legend, and a scale
    bar where ``pixel_size`` (micrometres per pixel of ``grey``) is known (``viz.draw_scale_bar``).

    ``grey`` and ``labels`` are arrays or zarr arrays at the image's own size;
    an image over ``viz.OVERLAY_MAX_SIDE`` on a side is read through a strided
    (nearest) view, so a montage's overlay is bounded whatever its size.
    """
    step = viz.overlay_step(labels.shape)
    view = (slice(None, None, step), slice(None, None, step))
    picture = viz.overlay_picture(viz.to_uint8(np.asarray(grey[view])), np.asarray(labels[view]))
    if pixel_size:
        picture = viz.draw_scale_bar(picture, float(pixel_size) * step)
    io.atomic_write_bytes(Path(out_dir) / folder / f"{image_id}.png", viz.overlay_png(picture, names))


def write_label_pngs(out_dir, image_id: str, labels: np.ndarray, folders=("labels", "color")) -> None:
    """``labels/<id>.png`` (8-bit grey: the label itself) and ``color/<id>.png`` (palette ``viz.PALETTE``).

    Up to ``len(viz.PALETTE)`` phases the colour picture's indices are the
    labels, so both files hold the same compressed rows: compressed once.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    n = len(viz.PALETTE)
    data = io.png_data(labels)
    io.atomic_write_bytes(Path(out_dir) / folders[0] / f"{image_id}.png", io.encode_png(labels, data=data))
    if labels.size and int(labels.max()) >= n:
        colour, data = labels % n, None
    else:
        colour = labels
    io.atomic_write_bytes(Path(out_dir) / folders[1] / f"{image_id}.png",
                          io.encode_png(colour, palette=viz.PALETTE, data=data))


def export_image(acts_kyx: np.ndarray, native_shape, out_dir, image_id: str, labels_zarr=None,
                 phases=None, names=None, grey=None, scores=None, panels=None, pixel_size=None) -> dict:
    """Write labels/, color/, activations/, overlay/ PNGs (and the OME label array) of one image.

    ``names`` are the phases' names for the panel titles and the legend
    (default ``phase i``); the overlay needs ``grey``, the stored image at
    ``native_shape`` (array or zarr array), and is skipped without it; it has a
    scale bar where ``pixel_size`` (micrometres per pixel) is given.

    ``phases`` are the components that label pixels (default: all); the others
    live on boundaries, so each pixel they would win goes to the phase with the
    largest activation there. ``scores`` ``(n_phases, y, x)`` on the same grid, when
    given, decide the labels instead (``Model.phase_scores``: phases as centres in
    activation space), and ``panels`` are what the activation panels show then
    (the phases' memberships). Returns the phase fractions, pixel count, speckle
    rate and the share of pixels a boundary component would have won. Pure
    apart from the files it writes, so it runs on any worker; every file is
    written atomically.
    """
    out_dir = Path(out_dir)
    phases = list(range(acts_kyx.shape[0])) if phases is None else list(phases)
    boundary = np.setdiff1d(np.arange(acts_kyx.shape[0]), phases)
    moved = float(np.isin(acts_kyx.argmax(axis=0), boundary).mean()) if boundary.size else 0.0
    acts_kyx = acts_kyx[phases] if panels is None else panels
    k = acts_kyx.shape[0]
    labels = labels_at(acts_kyx if scores is None else scores, native_shape)
    if labels_zarr is not None:
        labels_zarr[...] = labels
    write_label_pngs(out_dir, image_id, labels)
    names = _names(names, k)
    io.atomic_write_bytes(out_dir / "activations" / f"{image_id}.png",
                          viz.titled_panels_png(_panel_view(acts_kyx), names))
    if grey is not None:
        write_overlay(out_dir, image_id, grey, labels, names, pixel_size=pixel_size)
    counts = np.bincount(labels.ravel(), minlength=k)[:k]
    return {"fractions": {f"phase_{i}": float(c) / labels.size for i, c in enumerate(counts)},
            "pixels": int(labels.size), "speckle": diagnose.speckle_rate(labels),
            "transition_share": round(moved, 6)}


def export_constituents(scores: np.ndarray, native_shape, out_dir, image_id: str, names, grey=None,
                        labels_zarr=None, pixel_size=None) -> dict:
    """Write one image's microconstituents: ``constituents/`` (uint8 0..m-1, the ``labels/`` contract),
    ``constituents_color/`` and ``constituents_overlay/`` (with a legend of ``names``).

    ``scores`` ``(m, y, x)`` on the processing grid (``constituents.activations``)
    are resampled bilinearly to ``native_shape``, then arg max, as the phase
    labels are. Returns ``{"constituent_fractions": {"constituent_i": share}}``.
    """
    labels = labels_at(scores, native_shape)
    if labels_zarr is not None:
        labels_zarr[...] = labels
    write_label_pngs(out_dir, image_id, labels, CONSTITUENT_DIRS[:2])
    if grey is not None:
        write_overlay(out_dir, image_id, grey, labels, list(names), CONSTITUENT_DIRS[2], pixel_size)
    m = scores.shape[0]
    counts = np.bincount(labels.ravel(), minlength=m)[:m]
    return {"constituent_fractions": {f"constituent_{i}": float(c) / labels.size for i, c in enumerate(counts)}}


def write_label_tiffs(out_dir, image_id: str, labels_zarr, tile: int = 256, folders=("labels", "color")) -> None:
    """``labels/<id>.tif`` and ``color/<id>.tif`` (or ``folders``) as tiled TIFFs, read from the store a tile
    at a time."""
    h, w = labels_zarr.shape

    def tiles(colour: bool):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                t = np.asarray(labels_zarr[y:y + tile, x:x + tile])
                yield viz.colorize(t) if colour else t

    io.write_tiled_tiff(Path(out_dir) / folders[0] / f"{image_id}.tif", tiles(False), (h, w), np.uint8, tile)
    io.write_tiled_tiff(Path(out_dir) / folders[1] / f"{image_id}.tif", tiles(True), (h, w, 3), np.uint8, tile)


def export_constituents_large(labels_zarr, out_dir, image_id: str, names, counts, grey=None, pixel_size=None,
                              tile: int = 256) -> dict:
    """:func:`export_constituents` of an image segmented band by band: the constituent labels read back from
    the store (``constituents/<id>.tif``, ``constituents_color/<id>.tif``, the overlay from a strided view)
    and ``counts``, the pixels of each constituent."""
    write_label_tiffs(out_dir, image_id, labels_zarr, tile, CONSTITUENT_DIRS[:2])
    if grey is not None:
        write_overlay(out_dir, image_id, grey, labels_zarr, list(names), CONSTITUENT_DIRS[2], pixel_size)
    total = max(int(np.sum(counts)), 1)
    return {"constituent_fractions": {f"constituent_{i}": float(c) / total for i, c in enumerate(counts)}}


def export_large(labels_zarr, acts_zarr, out_dir, image_id: str, phases, tile: int = 256, names=None,
                 grey=None, pixel_size=None) -> dict:
    """Exports of an image too large to hold, read back from the store a band or a tile at a time.

    ``labels/<id>.tif`` and ``color/<id>.tif`` are tiled TIFFs; the activation
    panels come from a strided view (at most ``PANEL_MAX_SIDE`` on a side), and
    so does the overlay (at most ``viz.OVERLAY_MAX_SIDE``; needs ``grey``, the
    stored image as a zarr array; a scale bar where ``pixel_size`` is given).
    Returns the same fractions, pixel count and speckle rate as :func:`export_image`.
    """
    out_dir = Path(out_dir)
    h, w = labels_zarr.shape
    k = len(phases)
    counts = np.zeros(k, np.int64)
    changes = 0
    band = labels_zarr.chunks[0]
    for r0 in range(0, h, band):
        top = max(r0 - 1, 0)          # the row above joins the band, so pairs across the seam count once
        lab = np.asarray(labels_zarr[top:r0 + band])
        own = lab[r0 - top:]
        counts += np.bincount(own.ravel(), minlength=k)[:k]
        changes += int((own[:, 1:] != own[:, :-1]).sum() + (lab[1:] != lab[:-1]).sum())
    pairs = h * (w - 1) + (h - 1) * w

    write_label_tiffs(out_dir, image_id, labels_zarr, tile)
    step = max(1, int(np.ceil(max(h, w) / PANEL_MAX_SIDE)))
    names = _names(names, k)
    io.atomic_write_bytes(out_dir / "activations" / f"{image_id}.png",
                          viz.titled_panels_png(np.asarray(acts_zarr[:, ::step, ::step])[list(phases)], names))
    if grey is not None:
        write_overlay(out_dir, image_id, grey, labels_zarr, names, pixel_size=pixel_size)
    total = h * w
    return {"fractions": {f"phase_{i}": float(c) / total for i, c in enumerate(counts)},
            "pixels": int(total), "speckle": float(changes / pairs) if pairs else 0.0}


# --- the folder's tables ---------------------------------------------------------------

def write_tables(out_dir, records, model, summary: dict, pixel_sizes=None) -> dict:
    """``phase_fractions.csv`` (one row per image), ``phase_fractions_summary.csv`` (one row per phase),
    ``fingerprints.png`` and ``summary.json``.

    ``records`` are ``(image id, segment record)`` pairs, in row order, of the
    images the tables list (the runner picks those this model segmented);
    ``pixel_sizes`` maps an image to its micrometres per pixel (absent or None:
    unknown). The tables are :func:`bigseg.fractions.write_tables`'s: each
    image's fraction and area (square micrometres) of each phase, named by
    ``phases.csv_names`` in label order, and the phases' mean, standard
    deviation and 95 % interval across images. Adds the components (name, CSV
    column, fingerprint, share of all pixels), those statistics
    (``fractions``) and the failure-mode warnings to ``summary``, and returns it.
    """
    from . import fractions

    out_dir = Path(out_dir)
    k = model.n_phases
    columns = csv_names(model.phase_names)
    names = list(model.phase_names)
    speckle, transition_shares, band_shares = {}, [], []
    ids, values, pixels = [], np.zeros((len(records), k)), np.zeros(len(records), np.int64)
    for row, (image_id, rec) in enumerate(records):
        ids.append(image_id)
        values[row] = [rec["fractions"][f"phase_{i}"] for i in range(k)]
        pixels[row] = rec["pixels"]
        speckle[image_id] = rec["speckle"]
        transition_shares.append(rec.get("transition_share"))
        band_shares.append(rec.get("boundary_pixels"))
    summary["fractions"] = fractions.write_tables(out_dir, ids, names, columns, values, pixels,
                                                  [(pixel_sizes or {}).get(i) for i in ids])
    totals = (values * pixels[:, None]).sum(axis=0)
    shares = totals / max(totals.sum(), 1)
    summary["components"] = [{"index": i, "name": names[i], "column": columns[i], "share": round(float(shares[i]), 6),
                              "fingerprint": fp} for i, fp in enumerate(fingerprints(model.phase_H,
                                                                                     model.feature_names))]
    summary["boundaries"] = {"components": len(model.transitions),
                             "fingerprints": fingerprints(model.H[model.transitions], model.feature_names),
                             "pixel_share": _mean_share(transition_shares),
                             # pixels of thin bands between two phases given to them (regions.settle_boundaries)
                             "band_pixel_share": _mean_share(band_shares)}
    # how pixels became phases: the components' own rows, or centres in activation space (regions.choose_assignment)
    summary["assignment"] = model.report.get("assignment", {"chosen": "components"})
    summary["warnings"] = (diagnose.failure_modes(shares, speckle, model.report) if speckle else []) \
        + diagnose.scale_warnings(summary.get("scale"))
    if model.constituents is not None:
        summary["constituents"] = write_constituent_table(out_dir, records, model, pixel_sizes)
        if model.constituents["report"].get("adds_nothing"):
            summary["warnings"].append({
                "kind": "constituents_add_nothing",
                "message": "every microconstituent is one smooth phase: no region of the collection mixes phases "
                           "at the window scales measured",
                "suggestion": "the phases say all there is; set n_constituents: 0, or fewer constituents"})
    io.atomic_write_bytes(out_dir / "fingerprints.png", model.fingerprint_png())
    io.atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary


def write_constituent_table(out_dir, records, model, pixel_sizes=None) -> dict:
    """``constituent_fractions.csv``, ``constituent_fractions_summary.csv`` (the phases' tables,
    :func:`bigseg.fractions.write_tables`, for the constituents: fractions, areas, mean and 95 % interval
    across images), ``constituent_fingerprints.png`` (which phases at which scale) and what ``summary.json``
    says of the level: each constituent's name, column, share of
    all pixels and fingerprint (its mean share and variation of every phase at every window scale), the
    scales and how they were measured, and the fractions' statistics."""
    from . import fractions
    from .constituents import fingerprint_png, fingerprints as level_fingerprints

    level = model.constituents
    m = len(level["names"])
    columns = csv_names(level["names"])
    # an image the level was not written for (a montage segmented band by band) has no row
    kept = [(image_id, rec) for image_id, rec in records if rec.get("constituent_fractions") is not None]
    values = np.array([[rec["constituent_fractions"][f"constituent_{i}"] for i in range(m)] for _, rec in kept])
    pixels = np.array([rec["pixels"] for _, rec in kept], np.int64)
    stats = fractions.write_tables(out_dir, [i for i, _ in kept], level["names"], columns, values.reshape(-1, m),
                                   pixels, [(pixel_sizes or {}).get(i) for i, _ in kept],
                                   image_table=CONSTITUENT_TABLES[0], summary_table=CONSTITUENT_TABLES[1])
    totals = (values.reshape(-1, m) * pixels[:, None]).sum(axis=0)
    shares = totals / max(totals.sum(), 1)
    prints = level_fingerprints(level, model.phase_names)
    io.atomic_write_bytes(Path(out_dir) / CONSTITUENT_TABLES[2], fingerprint_png(level, model.phase_names))
    return {"scales_px": list(level["sigmas"]), "fit": level["report"], "fractions": stats,
            "items": [{"index": i, "name": level["names"][i], "column": columns[i],
                       "share": round(float(shares[i]), 6), "fingerprint": prints[i]} for i in range(m)]}


def _mean_share(values) -> float:
    """Mean of the per-image shares that were recorded (0 when none was)."""
    known = [v for v in values if v is not None]
    return round(float(np.mean(known)), 6) if known else 0.0
