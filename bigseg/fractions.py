"""Area fractions of a set of labels: per image (with areas in square micrometres where the pixel size is
known) and across images (mean, standard deviation and a confidence interval of the mean).

One function computes the statistics (:func:`collection_statistics`); the CSV tables
(:func:`write_tables`), ``summary.json``, the report and the DataFrames of :func:`fractions_table`
and :func:`fractions_summary` all read what it returns. Nothing here knows what the labels are:
phases, or any other label set a run counts.

The interval is the one ASTM E562 reports for point counts over fields: each image
is one observation, and the mean's 95 % interval is ``mean +- t(0.975, n - 1) * s / sqrt(n)``
with ``s`` the standard deviation across images (``n - 1`` in the denominator). It says
how well the images measure the collection's mean, not how well each image is segmented.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

#: the confidence of the interval of the mean across images
CONFIDENCE = 0.95
#: the per-image table and the collection's, in a run's output folder
IMAGE_TABLE = "phase_fractions.csv"
SUMMARY_TABLE = "phase_fractions_summary.csv"
#: the columns of the collection's table
SUMMARY_COLUMNS = ("phase", "column", "images", "mean", "std", "ci95_low", "ci95_high", "mean_area_um2")


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (``scipy.special``)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, p))


def collection_statistics(fractions, areas_um2=None, confidence: float = CONFIDENCE) -> dict:
    """Mean, standard deviation and the confidence interval of the mean of each label's fraction across images.

    Parameters
    ----------
    fractions : array_like, shape (images, labels)
        Each image's area fraction of each label.
    areas_um2 : array_like, shape (images, labels), optional
        Each image's area of each label in square micrometres; NaN where the
        image's pixel size is unknown.
    confidence : float
        The interval's confidence (0.95: ``t(0.975, n - 1)``).

    Returns
    -------
    dict of ndarray, each of shape (labels,)
        ``images`` (the count n), ``mean``, ``std`` (``n - 1`` in the
        denominator), ``ci_low`` and ``ci_high`` (``mean -+ t * std / sqrt(n)``,
        clipped to [0, 1]), and ``mean_area_um2`` (the mean over the images of
        known pixel size; NaN where none is). With one image the standard
        deviation and the interval are NaN: one image says nothing of the spread.
    """
    x = np.asarray(fractions, dtype=np.float64)
    n, k = x.shape
    mean = x.mean(axis=0) if n else np.full(k, np.nan)
    std = x.std(axis=0, ddof=1) if n > 1 else np.full(k, np.nan)
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) if n > 1 else np.full(k, np.nan)
    areas = np.full((n, k), np.nan) if areas_um2 is None else np.asarray(areas_um2, dtype=np.float64).reshape(n, k)
    known = ~np.isnan(areas).any(axis=1)
    mean_area = areas[known].mean(axis=0) if known.any() else np.full(k, np.nan)
    return {"images": np.full(k, n), "mean": mean, "std": std, "ci_low": np.clip(mean - half, 0.0, 1.0),
            "ci_high": np.clip(mean + half, 0.0, 1.0), "mean_area_um2": mean_area}


def image_areas(fractions, pixels, pixel_sizes) -> np.ndarray:
    """Each image's area of each label in square micrometres: fraction x pixels x pixel size squared (NaN where the
    pixel size is unknown)."""
    fractions = np.asarray(fractions, dtype=np.float64)
    px = np.array([np.nan if not p else float(p) for p in pixel_sizes], dtype=np.float64)
    return fractions * (np.asarray(pixels, dtype=np.float64) * px ** 2)[:, None]


def summary_rows(names, columns, stats: dict) -> list[dict]:
    """One row per label of :func:`collection_statistics` (``summary.json``'s and the summary table's), NaN as None."""
    def num(v):
        return None if not np.isfinite(v) else round(float(v), 6)

    return [{"phase": str(name), "column": str(col), "images": int(stats["images"][i]), "mean": num(stats["mean"][i]),
             "std": num(stats["std"][i]), "ci95_low": num(stats["ci_low"][i]), "ci95_high": num(stats["ci_high"][i]),
             "mean_area_um2": num(stats["mean_area_um2"][i])} for i, (name, col) in enumerate(zip(names, columns))]


def image_header(columns) -> list[str]:
    """The header of the per-image table: the image, each label's fraction, the pixel size, each label's area."""
    return ["image"] + list(columns) + ["pixel_size_um"] + [f"{c}_um2" for c in columns]


def write_tables(out_dir, ids, names, columns, fractions, pixels, pixel_sizes, confidence: float = CONFIDENCE,
                 image_table: str = IMAGE_TABLE, summary_table: str = SUMMARY_TABLE) -> dict:
    """Write the per-image table and the collection's; return ``summary.json``'s entry for them.

    Parameters
    ----------
    out_dir : path
        The folder the tables go into (each written atomically).
    ids : sequence of str
        The images, in row order.
    names, columns : sequence of str
        Each label's name and its column in the per-image table.
    fractions : array_like, shape (images, labels)
    pixels : sequence of int
        Each image's pixel count.
    pixel_sizes : sequence of float or None
        Each image's micrometres per pixel, None where unknown.
    """
    from . import io
    from .safety import csv_text

    out_dir = Path(out_dir)
    fractions = np.asarray(fractions, dtype=np.float64).reshape(len(ids), len(columns))
    areas = image_areas(fractions, pixels, pixel_sizes)
    rows = [image_header(columns)] + [
        [image_id] + [f"{v:.6f}" for v in fr] + [f"{px:.6g}" if px else ""]
        + [f"{a:.6g}" if np.isfinite(a) else "" for a in area]
        for image_id, fr, area, px in zip(ids, fractions, areas, pixel_sizes)]
    io.atomic_write_text(out_dir / image_table, csv_text(rows))
    rows = summary_rows(names, columns, collection_statistics(fractions, areas, confidence))
    write_summary_table(out_dir / summary_table, rows)
    return {"confidence": confidence, "images": len(ids),
            "interval": f"mean +- t({0.5 + confidence / 2:g}, n-1) * std / sqrt(n) across images (ASTM E562)",
            "phases": rows}


def write_summary_table(path, rows) -> None:
    """The collection's table: one row of :func:`summary_rows` per label (empty cells for None)."""
    from . import io
    from .safety import csv_text

    io.atomic_write_text(path, csv_text([SUMMARY_COLUMNS] + [["" if row[c] is None else row[c]
                                                              for c in SUMMARY_COLUMNS] for row in rows]))


def read_image_table(path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``(ids, columns, fractions, areas_um2)`` of a per-image table written by :func:`write_tables`, each array
    of shape (images, labels); areas are NaN where the pixel size was unknown, and everywhere in a table of
    fraction columns only (as runs wrote it before areas were kept)."""
    from .safety import csv_value

    with open(path, newline="", encoding="utf-8") as fh:
        rows = [[csv_value(c) for c in r] for r in csv.reader(fh) if r]
    if not rows:
        return [], [], np.zeros((0, 0)), np.zeros((0, 0))
    header = rows[0]
    k = header.index("pixel_size_um") - 1 if "pixel_size_um" in header else len(header) - 1
    values = np.full((len(rows) - 1, 2 * k + 1), np.nan)
    for i, row in enumerate(rows[1:]):
        cells = [_number(c) for c in row[1:2 + 2 * k]]
        values[i, :len(cells)] = cells
    return [r[0] for r in rows[1:]], header[1:1 + k], values[:, :k], values[:, k + 1:]


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return float("nan")


def _run_table(source):
    """``(ids, names, columns, fractions, areas)`` of a run folder (its ``summary.json`` names the labels)."""
    import json

    out_dir = Path(source)
    ids, columns, fractions, areas = read_image_table(out_dir / IMAGE_TABLE)
    names = list(columns)
    summary = out_dir / "summary.json"
    if summary.is_file():
        comps = json.loads(summary.read_text(encoding="utf-8")).get("components") or []
        if len(comps) == len(columns):
            names = [c.get("name", col) for c, col in zip(comps, columns)]
    return ids, names, columns, fractions, areas


def fractions_table(source):
    """Each image's area fraction and area of each phase as a pandas DataFrame (one row per image and phase).

    Parameters
    ----------
    source : path
        A run's output folder (``bigseg run`` or ``bigseg segment``): its
        ``phase_fractions.csv`` and ``summary.json``.

    Returns
    -------
    pandas.DataFrame
        Columns ``image``, ``phase``, ``fraction`` and ``area_um2`` (NaN where
        the image's pixel size is unknown).

    Examples
    --------
    >>> import bigseg
    >>> table = bigseg.fractions_table("results")                 # doctest: +SKIP
    >>> table.groupby("phase")["fraction"].describe()             # doctest: +SKIP
    """
    import pandas as pd

    ids, names, _, fractions, areas = _run_table(source)
    k = len(names)
    return pd.DataFrame({"image": np.repeat(np.asarray(ids, dtype=object), k),
                         "phase": np.tile(np.asarray(names, dtype=object), len(ids)),
                         "fraction": fractions.ravel(), "area_um2": areas.ravel()})


def fractions_summary(source, confidence: float = CONFIDENCE):
    """Each phase's fraction across a run's images as a pandas DataFrame: :func:`collection_statistics`.

    Returns
    -------
    pandas.DataFrame
        One row per phase: ``phase``, ``column``, ``images``, ``mean``, ``std``,
        ``ci95_low``, ``ci95_high`` (the interval of the mean at ``confidence``)
        and ``mean_area_um2``.
    """
    import pandas as pd

    ids, names, columns, fractions, areas = _run_table(source)
    rows = summary_rows(names, columns, collection_statistics(fractions, areas, confidence))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).astype({"mean": float, "std": float, "ci95_low": float,
                                                                     "ci95_high": float, "mean_area_um2": float})
