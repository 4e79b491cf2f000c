"""Giving phases names after a run: ``bigseg rename OUT 0=matrix 1=austenite`` and the ``phase_names`` setting.

A name never changes a label (``pipeline.model_digest`` leaves names out), so
renaming recomputes nothing: it rewrites what shows the names, each file
atomically: ``model/model.json`` and ``model/fingerprints.png``,
``summary.json``, the header of ``phase_fractions.csv``, ``fingerprints.png``,
the legend or title band of every ``overlay/`` and ``activations/`` picture
(from the layout each carries, without the store), the names in the store's
label and membership metadata, and ``report.html``. The model is written
last but one, so a rename stopped half-way is finished by running it again.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import io, viz
from .phases import check_names, csv_names, parse_assignments
from .safety import csv_text

#: the folders of drawn pictures whose legends or titles name the phases
PICTURE_DIRS = ("overlay", "activations")


def rename(out_dir, assignments) -> list[str]:
    """Apply ``INDEX=NAME`` assignments to the phases of the run in ``out_dir``; returns every phase's name.

    Holds the output folder's lock, so no run writes the folder meanwhile.

    Raises
    ------
    ValueError
        One line, for an index that is not a phase, an index given twice, a
        bad name, or two phases left with one name; nothing is written then.
    bigseg.model.ModelError
        When ``out_dir/model`` is missing or damaged.
    """
    from .lock import output_lock
    from .model import Model

    out_dir = Path(out_dir)
    with output_lock(out_dir):
        model = Model.load(out_dir / "model")
        names = parse_assignments(assignments, model.phase_names)
        set_names(model, names)
        relabel_outputs(out_dir, names)
        relabel_tables(out_dir, model)
        write_model_names(out_dir / "model", model)
        if (out_dir / "report.html").exists():
            from .report import write_report

            write_report(out_dir)
    return names


def set_names(model, names) -> None:
    """Give ``model`` these phase names (checked: one per phase, no two alike); its chart is drawn anew."""
    names = check_names(list(names), model.n_phases)
    if names != list(model.phase_names):
        model.phase_names = names
        model.figure = None      # the fingerprint chart's titles are the names


def stored_names(model_dir) -> list[str] | None:
    """The phase names ``model_dir/model.json`` holds (None when there is none, or it keeps no names)."""
    try:
        meta = json.loads((Path(model_dir) / "model.json").read_text())
    except (OSError, ValueError):
        return None
    names = meta.get("phase_names") if isinstance(meta, dict) else None
    return names if isinstance(names, list) else None


def write_model_names(model_dir, model) -> None:
    """Put ``model``'s names into ``model_dir/model.json`` and its chart into ``fingerprints.png``.

    Every other field stays as written: H and the settings, which the
    folder's segmentations were made with, are not touched.
    """
    path = Path(model_dir) / "model.json"
    meta = json.loads(path.read_text())
    meta["phase_names"] = list(model.phase_names)
    io.atomic_write_bytes(Path(model_dir) / "fingerprints.png", model.fingerprint_png())
    io.atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True))


def relabel_tables(out_dir, model) -> None:
    """``summary.json``'s component names, ``phase_fractions.csv``'s header and ``fingerprints.png``, where present."""
    out_dir = Path(out_dir)
    names, columns = list(model.phase_names), csv_names(model.phase_names)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        for c in summary.get("components", []):
            if 0 <= c.get("index", -1) < len(names):
                c["name"], c["column"] = names[c["index"]], columns[c["index"]]
        io.atomic_write_text(summary_path, json.dumps(summary, indent=2, sort_keys=True, default=str))
    table = out_dir / "phase_fractions.csv"
    if table.exists():
        first, sep, rest = table.read_text().partition("\n")
        io.atomic_write_text(table, csv_text([["image"] + columns]) + rest)
    if (out_dir / "fingerprints.png").exists():
        io.atomic_write_bytes(out_dir / "fingerprints.png", model.fingerprint_png())


def relabel_outputs(out_dir, names) -> None:
    """Every stored picture and the store's label and membership metadata show ``names``; no value changes."""
    relabel_pictures(out_dir, names)
    if (Path(out_dir) / "store.zarr").exists():     # the OME label images' properties, the memberships' channels
        from . import store

        store.rename_phases(store.open_root(Path(out_dir) / "store.zarr"), names)


def relabel_pictures(out_dir, names) -> int:
    """Redraw the legend of each overlay and the titles of each activation picture that shows other names.

    Returns how many pictures were rewritten; pictures that already show
    ``names`` (and PNGs bigseg did not draw) are left alone.
    """
    names = list(names)
    done = 0
    for sub, redraw in zip(PICTURE_DIRS, (viz.relegend_overlay, viz.retitle_panels)):
        for path in sorted((Path(out_dir) / sub).glob("*.png")):
            meta = viz.read_meta(path)
            # a picture of another phase count belongs to no phase of this model: left for the next segment
            if meta is None or meta.get("names") == names or len(meta.get("names") or []) != len(names):
                continue
            io.atomic_write_bytes(path, redraw(path, names))
            done += 1
    return done
