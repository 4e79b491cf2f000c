"""Giving phases names after a run: ``bigseg rename OUT 0=matrix 1=austenite`` and the ``phase_names`` setting.

A name never changes a label (``pipeline.model_digest`` leaves names out), so
renaming recomputes nothing: it rewrites what shows the names, each file
atomically: ``model/model.json`` and ``model/fingerprints.png``,
``summary.json``, the header of ``phase_fractions.csv``, ``fingerprints.png``,
the legend or title band of every ``overlay/`` and ``activations/`` picture
(from the layout each carries, without the store), the names in the store's
label and membership metadata, and ``report.html``; with microconstituents,
their names the fit made from a phase's name follow it, and their chart. Everything is read,
checked and drawn before the first file changes; a rename stopped half-way
(killed, a full disk) leaves a record (:data:`PENDING`), and the next rename
or run finishes it.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

from . import fractions, io, viz
from .phases import check_names, csv_names, parse_assignments
from .safety import csv_text, read_regular

log = logging.getLogger("bigseg")

#: the folders of drawn pictures whose legends or titles name the phases
PICTURE_DIRS = ("overlay", "activations")


def rename(out_dir, assignments) -> list[str]:
    """Apply ``INDEX=NAME`` assignments to the phases of the run in ``out_dir``; returns every phase's name.

    Holds the output folder's lock, so no run writes the folder meanwhile.
    Everything the rename rewrites is read and checked, and every new
    picture drawn, before the first file changes (:func:`apply_names`).

    Raises
    ------
    ValueError
        One line, for an index that is not a phase, an index given twice, a
        bad name, two phases left with one name, or a file of the folder the
        rename would rewrite that is damaged (named); nothing is changed then.
    bigseg.model.ModelError
        When ``out_dir/model`` is missing or damaged.
    """
    from .lock import output_lock
    from .model import Model

    out_dir = Path(out_dir)
    with output_lock(out_dir):
        model = Model.load(out_dir / "model")
        before = list(model.phase_names)
        names = parse_assignments(assignments, model.phase_names)
        set_names(model, names)
        # the constituents are named after the phases and their chart shows the phases' names: with them, the
        # report is written once, after their names too
        apply_names(out_dir, model, report=model.constituents is None)
        if model.constituents is not None:
            _apply_constituent_names(out_dir, model, constituent_names_after(model.constituents, before, names))
    return names


def constituent_names_after(level: dict, before, after) -> list[str]:
    """The constituents' names once the phases ``before`` are called ``after``: a name the fit gave
    (:func:`bigseg.constituents.describe`, from ``level["report"]["phase_composition"]``) follows the phases;
    a name given by hand stays."""
    import numpy as np

    from .constituents import PURE_SHARE, describe

    current = list(level["names"])
    comp = np.asarray(level.get("report", {}).get("phase_composition") or [], np.float64)
    if comp.shape != (len(current), len(before)):
        return current
    mixed = comp.max(axis=1) < PURE_SHARE
    given, renamed = describe(comp, mixed, list(before)), describe(comp, mixed, list(after))
    return [new if name == old else name for name, old, new in zip(current, given, renamed)]


#: the record of a renaming under way: written before the first file changes, removed after the last, so a
#: rename or run stopped in between (killed, a full disk) is finished by the next one
PENDING = Path("records") / "relabel.json"
#: largest picture, table or summary a rename reads back
MAX_READ_BYTES = 2**28


def apply_names(out_dir, model, tables: bool = True, report: bool = True) -> None:
    """Make every output of ``out_dir`` show ``model.phase_names``: all checked and drawn first, then changed.

    First every file to rewrite is read and checked (``summary.json``,
    ``phase_fractions.csv``, ``model/model.json``, each bigseg picture in
    ``overlay/`` and ``activations/``, the store's metadata), and each new
    picture is written to a temporary file; a damaged file stops it there,
    named, with nothing changed. Then :data:`PENDING` records the names,
    the pictures are put in place, the store's names, tables and model
    follow, and the record goes. ``tables=False`` leaves ``summary.json``,
    the CSV and ``fingerprints.png`` to the caller (a run writes them anew); ``report=False`` leaves
    ``report.html`` to the caller.
    """
    out_dir = Path(out_dir)
    names = list(model.phase_names)
    model_json = _read_json(out_dir / "model" / "model.json", required=True)
    summary = _read_json(out_dir / "summary.json") if tables else None
    table = _read_text(out_dir / "phase_fractions.csv") if tables else None
    _check_store(out_dir)
    with _published(stage_pictures(out_dir, names)):
        mark_pending(out_dir, names)
    if (out_dir / "store.zarr").exists():     # the OME label images' properties, the memberships' channels
        from . import store

        store.rename_phases(store.open_root(out_dir / "store.zarr"), names)
    if tables:
        _write_tables(out_dir, model, summary, table)
    _write_model_names(out_dir / "model", model, model_json)
    if tables and report and (out_dir / "report.html").exists():
        from .report import write_report

        write_report(out_dir)
    (out_dir / PENDING).unlink(missing_ok=True)


@contextmanager
def _published(staged: list):
    """Yield ``staged``, a list of ``(temporary file, path)`` pairs the block may add to; when the block
    ends, put each in place (:func:`bigseg.io.publish`). If the block or a publish fails, the temporary
    files left are removed and the error goes on."""
    try:
        yield staged
        for tmp, path in staged:
            io.publish(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def mark_pending(out_dir, names) -> None:
    """Record that the outputs of ``out_dir`` are being renamed to ``names`` (:data:`PENDING`)."""
    io.atomic_write_text(Path(out_dir) / PENDING, json.dumps({"phase_names": list(names)}))


def pending_names(out_dir) -> list[str] | None:
    """The names of a renaming that did not finish in ``out_dir`` (None when none is under way)."""
    data = _read_json(Path(out_dir) / PENDING, quiet=True)
    names = data.get("phase_names") if isinstance(data, dict) else None
    return names if isinstance(names, list) else None


def _read_text(path: Path) -> str | None:
    """The text of a file of the folder, bounded and never through a link; None when absent. A file that
    cannot be read is one line naming it."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return read_regular(path, "file", MAX_READ_BYTES, follow_links=False).decode("utf-8")
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{path}: cannot be read ({why}); nothing was renamed. Run 'bigseg run' again (it "
                         f"writes the folder's tables anew) or remove the file") from None


def _read_json(path: Path, required: bool = False, quiet: bool = False):
    try:
        text = _read_text(path)
        if text is None:
            if required:
                raise ValueError(f"{path}: missing; nothing was renamed")
            return None
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        if quiet:
            return None
        msg = str(exc) if str(exc).startswith(str(path)) else f"{path}: damaged, not JSON ({exc}); nothing was " \
            f"renamed. Run 'bigseg run' again (it writes the folder's tables anew) or remove the file"
        raise ValueError(" ".join(msg.split())) from None


def _check_store(out_dir: Path) -> None:
    """Open every group whose names :func:`bigseg.store.rename_phases` rewrites, so a damaged one is named
    before anything changes."""
    if not (out_dir / "store.zarr").exists():
        return
    from . import store

    try:
        # no group has zero phases: this reads the metadata of every group it would rename and changes none
        store.rename_phases(store.open_root(out_dir / "store.zarr", mode="r"), [])
    except Exception as exc:
        raise ValueError(f"{out_dir / 'store.zarr'}: cannot be read ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}); nothing was renamed") from None


def stage_pictures(out_dir, names) -> list[tuple[str, Path]]:
    """Each bigseg picture in ``overlay/`` and ``activations/`` that shows other names, drawn again for
    ``names`` into a temporary file beside it: ``(temporary file, picture)`` pairs, nothing replaced yet.

    A PNG bigseg did not draw (no layout of its own, or no PNG at all) is
    left alone, with a warning naming it; a picture of bigseg's that cannot
    be drawn again (damaged) raises ``ValueError`` naming it, after removing
    what was staged.
    """
    names = list(names)
    staged: list[tuple[str, Path]] = []
    try:
        for sub, redraw in zip(PICTURE_DIRS, (viz.relegend_overlay, viz.retitle_panels)):
            for path in sorted((Path(out_dir) / sub).glob("*.png")):
                meta = _picture_meta(path)
                # a picture of another phase count belongs to no phase of this model: left for the next segment
                if meta is None or meta.get("names") == names or len(meta.get("names") or []) != len(names):
                    continue
                try:
                    data = redraw(path, names)
                except Exception as exc:
                    raise ValueError(f"{path}: damaged ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                                     f"nothing was renamed. Remove it and its record records/segment/"
                                     f"{path.stem}.json: the next run draws it again") from None
                staged.append((io.staged_bytes(path, data), path))
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    return staged


def _picture_meta(path: Path) -> dict | None:
    """The layout a picture of bigseg's carries; None (with a warning) for a file that is no such picture."""
    import io as _io

    from PIL import Image

    try:
        data = read_regular(path, "picture", MAX_READ_BYTES, follow_links=False)
        with Image.open(_io.BytesIO(data)) as img:
            # bigseg writes its layout before the pixels: it is there even when the pixels are damaged
            raw = img.info.get(viz.META_KEY)
        if raw is not None:
            meta = json.loads(raw)
            return meta if isinstance(meta, dict) else None
        return viz.read_meta(_io.BytesIO(data))
    except Exception as exc:       # not a PNG, a FIFO, too large: not a picture bigseg drew
        log.warning("%s: left as it is: not a picture bigseg drew (%s)", path,
                    " ".join(f"{type(exc).__name__}: {exc}".split())[:200])
        return None


def _write_tables(out_dir: Path, model, summary, table) -> None:
    """``summary.json``'s component names, ``phase_fractions.csv``'s header and ``fingerprints.png``, where present."""
    names, columns = list(model.phase_names), csv_names(model.phase_names)
    if isinstance(summary, dict):
        for c in summary.get("components", []):
            if isinstance(c, dict) and isinstance(c.get("index"), int) and 0 <= c["index"] < len(names):
                c["name"], c["column"] = names[c["index"]], columns[c["index"]]
    _fraction_tables(out_dir, names, summary.get("fractions") if isinstance(summary, dict) else None, table,
                     fractions.IMAGE_TABLE, fractions.SUMMARY_TABLE)
    if isinstance(summary, dict):
        io.atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    if (out_dir / "fingerprints.png").exists():
        io.atomic_write_bytes(out_dir / "fingerprints.png", model.fingerprint_png())


def rename_constituents(out_dir, assignments) -> list[str]:
    """Apply ``INDEX=NAME`` assignments to the microconstituents of the run in ``out_dir``; returns every
    constituent's name (``bigseg rename OUT --constituents ...``).

    Rewrites ``model/model.json``'s constituent names, ``summary.json``'s
    ``constituents``, the constituent fraction tables and fingerprints, the legends
    of ``constituents_overlay/``, the store's constituent label metadata and
    ``report.html``; no label changes. Everything is read and every picture
    drawn before the first file changes, as for the phases.

    Raises
    ------
    ValueError
        One line, as :func:`rename`; also when the model has no constituents.
    bigseg.model.ModelError
        When ``out_dir/model`` is missing or damaged.
    """
    from .lock import output_lock
    from .model import Model

    out_dir = Path(out_dir)
    with output_lock(out_dir):
        model = Model.load(out_dir / "model")
        if model.constituents is None:
            raise ValueError(f"{out_dir / 'model'}: the model has no constituents (n_constituents is 0)")
        names = parse_assignments(assignments, model.constituents["names"])
        _apply_constituent_names(out_dir, model, names)
    return names


def _apply_constituent_names(out_dir: Path, model, names) -> None:
    """Make every output of ``out_dir`` that names the constituents show ``names`` (its lock held), and draw
    their chart with the model's phase names."""
    from .export import CONSTITUENT_TABLES

    columns = csv_names(names)
    model_json = _read_json(out_dir / "model" / "model.json", required=True)
    summary = _read_json(out_dir / "summary.json")
    table = _read_text(out_dir / CONSTITUENT_TABLES[0])
    with _published([]) as staged:
        for path in sorted((out_dir / "constituents_overlay").glob("*.png")):
            meta = _picture_meta(path)
            if meta is None or meta.get("names") == names or len(meta.get("names") or []) != len(names):
                continue
            staged.append((io.staged_bytes(path, viz.relegend_overlay(path, names)), path))
    if (out_dir / "store.zarr").exists():
        from . import store

        store.rename_phases(store.open_root(out_dir / "store.zarr"), names, store.CONSTITUENTS_NAME)
    level = (summary.get("constituents") or {}) if isinstance(summary, dict) else {}
    for item in level.get("items", []):
        if isinstance(item, dict) and isinstance(item.get("index"), int) and 0 <= item["index"] < len(names):
            item["name"], item["column"] = names[item["index"]], columns[item["index"]]
    _fraction_tables(out_dir, names, level.get("fractions"), table, *CONSTITUENT_TABLES[:2])
    if (out_dir / CONSTITUENT_TABLES[2]).exists():       # the fingerprints' titles are the names
        from .constituents import fingerprint_png

        io.atomic_write_bytes(out_dir / CONSTITUENT_TABLES[2],
                              fingerprint_png(dict(model.constituents, names=names), model.phase_names))
    if isinstance(summary, dict):
        io.atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    model_json["constituents"] = dict(model_json["constituents"], names=names)
    io.atomic_write_text(out_dir / "model" / "model.json", json.dumps(model_json, indent=2, sort_keys=True))
    model.constituents["names"] = list(names)
    if (out_dir / "report.html").exists():
        from .report import write_report

        write_report(out_dir)


def _fraction_tables(out_dir: Path, names, entry, table, image_table: str, summary_table: str) -> None:
    """``names`` into a run's fraction tables: the rows of ``entry`` (``summary.json``'s ``fractions``, changed
    in place) and the summary table written from them, and the header of ``table`` (the per-image table's text)."""
    columns = csv_names(names)
    rows = (entry or {}).get("phases")
    if isinstance(rows, list) and len(rows) == len(names) and all(isinstance(r, dict) for r in rows):
        for row, name, column in zip(rows, names, columns):
            row["phase"], row["column"] = name, column
        fractions.write_summary_table(out_dir / summary_table, rows)
    if table is not None:
        first, _, rest = table.partition("\n")
        # a table of fraction columns only was written before areas were kept
        header = fractions.image_header(columns) if "pixel_size_um" in first else ["image"] + columns
        io.atomic_write_text(out_dir / image_table, csv_text([header]) + rest)


def set_names(model, names) -> None:
    """Give ``model`` these phase names (checked: one per phase, no two alike); its chart is drawn anew."""
    names = check_names(list(names), model.n_phases)
    if names != list(model.phase_names):
        model.phase_names = names
        model.figure = None      # the fingerprint chart's titles are the names


def stored_names(model_dir) -> list[str] | None:
    """The phase names ``model_dir/model.json`` holds (None when there is none, or it keeps no names)."""
    meta = _read_json(Path(model_dir) / "model.json", quiet=True)
    names = meta.get("phase_names") if isinstance(meta, dict) else None
    return names if isinstance(names, list) else None


def write_model_names(model_dir, model) -> None:
    """Put ``model``'s names into ``model_dir/model.json`` and its chart into ``fingerprints.png``.

    Every other field stays as written: H and the settings, which the
    folder's segmentations were made with, are not touched.
    """
    _write_model_names(Path(model_dir), model, _read_json(Path(model_dir) / "model.json", required=True))


def _write_model_names(model_dir: Path, model, meta: dict) -> None:
    meta = dict(meta, phase_names=list(model.phase_names))
    io.atomic_write_bytes(model_dir / "fingerprints.png", model.fingerprint_png())
    io.atomic_write_text(model_dir / "model.json", json.dumps(meta, indent=2, sort_keys=True))
