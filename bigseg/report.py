"""``OUT/report.html``: one self-contained page that shows what a run found.

Everything the page shows is inside it: images are ``data:`` URIs, the phase
fraction plot is inline SVG, the style sheet is inline, and there is no
script. A Content-Security-Policy allows nothing else, so the page opens
offline, from a USB stick or an e-mail attachment, and never reaches the
network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io as _io
import json
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import io

REPORT_NAME = "report.html"
#: thumbnails shown before only the flagged images are added
MAX_THUMBNAILS = 24
#: widest thumbnail, in pixels
THUMB_WIDTH = 320
#: flagged images shown beyond the first ``max_thumbnails`` at most (a page of a thousand thumbnails is not small)
MAX_FLAGGED = 96
#: up to this many images, one stacked bar each; beyond it, box plots per phase
MAX_BARS = 60
#: a TIFF level up to this many pixels is read whole for its thumbnail; a larger one strided, tile by tile
WHOLE_TIFF_PIXELS = 4096 * 4096

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_THUMB_SOURCES = (("overlay", (".png", ".jpg", ".jpeg", ".tif", ".tiff")),
                  ("color", (".png", ".tif", ".tiff")))

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;
 margin:0 auto;max-width:1200px;padding:0 20px 40px;background:#fff}
h1{font-size:22px;margin:18px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;
 padding-bottom:3px}
.meta{color:#555;margin:0 0 6px}nav a{margin-right:12px;color:#1f5fa0;text-decoration:none}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;text-align:left;vertical-align:top;
 border-bottom:1px solid #eee}th{background:#f5f5f5;font-weight:600}td.num{text-align:right;
 font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #0003;vertical-align:-2px;margin-right:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px;border-radius:4px;background:#fafafa}
figure img{display:block;width:100%;height:auto;image-rendering:auto}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}figure.flag{border-color:#c0392b;background:#fff5f3}
.badge{display:inline-block;background:#c0392b;color:#fff;border-radius:3px;padding:0 4px;font-size:11px;
 margin-left:4px}
.note{color:#555;font-size:13px}.warn td:first-child{color:#a33;font-weight:600}
.settings td.k{color:#555;white-space:nowrap}.settings td.v{font-family:ui-monospace,Menlo,Consolas,monospace}
.settings td.changed{font-weight:700;color:#000}
.fp{max-width:100%;height:auto}svg text{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#333}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px;max-height:360px}
details summary{cursor:pointer;color:#1f5fa0}
"""


def write_report(out_dir, max_thumbnails: int = MAX_THUMBNAILS, thumb_width: int = THUMB_WIDTH) -> Path:
    """Write ``OUT/report.html``, one self-contained page about a run's output folder.

    The page holds the phases (colour, name, share of pixels), the phase
    fractions across images as an inline SVG plot (one stacked bar per image,
    or box plots per phase for more than 60 images), the fingerprint chart, a
    thumbnail of each image's overlay (``overlay/<id>.png``, else the colour
    map ``color/<id>.png``), the warnings with their suggested fixes, the
    skipped files, the boundary components, the model's key numbers and the
    settings (values that differ from the defaults in bold). Everything is
    embedded: images as ``data:`` URIs, no script, no style sheet or font
    from elsewhere, so it opens offline. The file is written atomically.

    Parameters
    ----------
    out_dir : str or path-like
        The output folder of ``bigseg run`` or ``bigseg segment``; it must
        hold ``summary.json``. Every other file is optional.
    max_thumbnails : int, optional
        How many images to show at most besides those the quality checks flag
        (the first ones, in the order of ``phase_fractions.csv``); the page
        says how many are left out.
    thumb_width : int, optional
        Widest thumbnail in pixels (downscaled with PIL, embedded as PNG or
        JPEG, whichever is smaller).

    Returns
    -------
    pathlib.Path
        The path of ``report.html``.

    Raises
    ------
    FileNotFoundError
        When ``out_dir`` has no ``summary.json`` (no run has finished there).

    Examples
    --------
    >>> from bigseg.report import write_report
    >>> path = write_report("demo-out/run")          # doctest: +SKIP
    >>> path.name                                     # doctest: +SKIP
    'report.html'
    """
    out_dir = Path(out_dir)
    page = render_report(out_dir, max_thumbnails=max_thumbnails, thumb_width=thumb_width)
    path = out_dir / REPORT_NAME
    io.atomic_write_text(path, page)
    return path


def render_report(out_dir, max_thumbnails: int = MAX_THUMBNAILS, thumb_width: int = THUMB_WIDTH) -> str:
    """The HTML text of :func:`write_report`'s page, without writing it."""
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: no summary.json; run `bigseg run` on this folder first")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    k = len(summary.get("components") or [])
    ids, fractions, areas = _read_fractions(out_dir / "phase_fractions.csv", k)
    order = sorted(range(len(ids)), key=lambda n: natural_key(ids[n]))     # micrograph2 before micrograph10
    ids, fractions, areas = [ids[n] for n in order], fractions[order], areas[order]
    phases = _phases(summary, out_dir, ids)
    flagged = _flagged(summary)

    versions = summary.get("versions") or {}
    title = f"bigseg report: {out_dir.resolve().name}"
    meta = [f"{summary.get('n_images', len(ids))} image(s)", f"{len(phases)} phase(s)",
            f"bigseg {versions.get('bigseg', '?')}",
            "written " + _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")]
    if summary.get("skipped"):
        meta.insert(1, f"{len(summary['skipped'])} skipped")
    n_warn = len(summary.get("warnings") or [])
    sections = [
        ("phases", "Phases", _phases_section(phases, ids, fractions)),
        ("fractions", "Phase fractions across images", _statistics_table(summary, phases)
         + _fractions_section(ids, fractions, phases)),
        ("fingerprints", "Fingerprints", _fingerprint_section(out_dir)),
        ("images", "Images", _images_section(out_dir, ids, fractions, phases, flagged, max_thumbnails,
                                             thumb_width)),
        ("table", "Every image", _image_table(out_dir, ids, fractions, areas, phases, flagged)),
        ("warnings", f"Warnings ({n_warn}) and skipped files ({len(summary.get('skipped') or [])})",
         _warnings_section(summary)),
        ("boundaries", "Boundaries", _boundaries_section(summary)),
    ] + ([("constituents", "Microconstituents", _constituents_section(summary))] if summary.get("constituents")
         else []) + [
        ("model", "Model", _model_section(summary)),
        ("settings", "Settings", _settings_section(summary.get("settings") or {})),
        ("files", "Files", _files_section(out_dir)),
    ]
    nav = " ".join(f'<a href="#{key}">{_e(head.split(" (")[0])}</a>' for key, head, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{_e(head)}</h2>\n{content}</section>'
                     for key, head, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{_e(title)}</h1><p class=\"meta\">{_e(' · '.join(meta))}</p><nav>{nav}</nav>\n"
        f"{body}\n<p class=\"note\">{_e(_versions_line(versions))}</p>\n</body></html>\n"
    )


# --- data ------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _phases(summary: dict, out_dir: Path, ids) -> list[dict]:
    """Each phase's index, name, share and colour (hex), in component order.

    The colour is the component's own where summary.json gives one, else the
    one the run's colour maps use (their PNG palette), else
    :data:`bigseg.viz.PALETTE`'s.
    """
    from .viz import PALETTE

    palette = _map_palette(out_dir, ids)
    out = []
    for i, comp in enumerate(summary.get("components") or []):
        fallback = palette[i] if i < len(palette) else PALETTE[i % len(PALETTE)]
        colour = _hex(comp.get("color", comp.get("colour")), fallback)
        out.append({"index": comp.get("index", i), "name": comp.get("name") or f"phase {i}",
                    "share": comp.get("share"), "colour": colour})
    return out


def _map_palette(out_dir: Path, ids) -> list:
    """The palette of the run's first colour map (``color/<id>.png``, a palette PNG), or []."""
    from PIL import Image

    for image_id in list(ids)[:1]:
        path = out_dir / "color" / f"{image_id}.png"
        try:
            with Image.open(path) as im:
                flat = im.getpalette() if im.mode == "P" else None
        except Exception:       # no colour map, or not one we can read: the default palette
            return []
        if flat:
            return [flat[n:n + 3] for n in range(0, len(flat) - 2, 3)]
    return []


def _hex(value, fallback) -> str:
    if isinstance(value, str) and value.startswith("#") and len(value) in (4, 7):
        return value
    if isinstance(value, (list, tuple)) and len(value) >= 3:
        fallback = value
    r, g, b = (int(c) for c in list(fallback)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _read_fractions(path: Path, k: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image ids and two (images, k) arrays, the fractions and the areas (µm², NaN where unknown), from
    ``phase_fractions.csv`` (:func:`bigseg.fractions.read_image_table`)."""
    from .fractions import read_image_table

    if not path.is_file():
        return [], np.zeros((0, k)), np.zeros((0, k))
    ids, _, values, areas = read_image_table(path)

    def k_columns(a):
        out = np.full((len(ids), k), np.nan)
        out[:, :min(k, a.shape[1])] = a[:, :k]
        return out

    return ids, k_columns(values), k_columns(areas)


def natural_key(text: str) -> list:
    """Sort key that orders the numbers inside names by value: ``micrograph2`` before ``micrograph10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
            for part in re.split(r"(\d+)", str(text)) if part]


def _flagged(summary: dict) -> dict[str, list[str]]:
    """Image id -> the kinds of warning that name it (e.g. ``speckled``)."""
    out: dict[str, list[str]] = {}
    for w in summary.get("warnings") or []:
        for image_id in w.get("images") or []:
            out.setdefault(str(image_id), []).append(str(w.get("kind", "flagged")))
    return out


def _pct(x, digits: int = 1) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(x) else f"{100 * x:.{digits}f} %"


def _num(x) -> str:
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "no", None: "–"}[x]
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(_num(v) for v in x)
    if isinstance(x, dict):
        return json.dumps(x, sort_keys=True, default=str)
    return str(x)


def _swatch(colour: str) -> str:
    return f'<span class="sw" style="background:{_e(colour)}"></span>'


# --- sections --------------------------------------------------------------------------

def _phases_section(phases, ids, fractions) -> str:
    if not phases:
        return '<p class="note">summary.json lists no components.</p>'
    rows = []
    for j, p in enumerate(phases):
        col = fractions[:, j] if fractions.size else np.array([])
        col = col[np.isfinite(col)]
        stats = [_pct(col.mean()), _pct(col.min()), _pct(col.max())] if col.size else ["–"] * 3
        rows.append(f"<tr><td>{_swatch(p['colour'])}{_e(p['index'])}</td><td>{_e(p['name'])}</td>"
                    f"<td class=num>{_pct(p['share'])}</td>" + "".join(f"<td class=num>{s}</td>" for s in stats)
                    + "</tr>")
    return ("<table><tr><th>phase</th><th>name</th><th>share of all pixels</th><th>mean per image</th>"
            "<th>min</th><th>max</th></tr>" + "".join(rows) + "</table>")


def _statistics_table(summary, phases) -> str:
    """Each phase's mean fraction across images with its standard deviation and 95 % interval, and its mean
    area where pixel sizes are known: ``summary["fractions"]`` (:func:`bigseg.fractions.collection_statistics`)."""
    entry = summary.get("fractions") or {}
    rows = entry.get("phases") or []
    if not rows:
        return ""
    colours = [p["colour"] for p in phases] + ["#ffffff"] * len(rows)
    areas = any(r.get("mean_area_um2") is not None for r in rows)
    body = "".join(
        f'<tr><td>{_swatch(colours[i])}{_e(r.get("phase", ""))}</td><td class=num>{_pct(r.get("mean"), 2)}</td>'
        f'<td class=num>{_pct(r.get("std"), 2)}</td>'
        f'<td class=num>{_pct(r.get("ci95_low"), 2)} – {_pct(r.get("ci95_high"), 2)}</td>'
        + (f'<td class=num>{_area(r.get("mean_area_um2"))}</td>' if areas else "") + "</tr>"
        for i, r in enumerate(rows))
    n = entry.get("images", rows[0].get("images"))
    return (f'<p class="note">Area fraction of each phase over {_e(n)} image(s): mean, standard deviation '
            f'across images and the 95 % confidence interval of the mean ({_e(entry.get("interval", ""))}); '
            f'every image in <a href="phase_fractions.csv">phase_fractions.csv</a>, this table in '
            f'<a href="phase_fractions_summary.csv">phase_fractions_summary.csv</a>.</p>'
            '<table class="stats"><tr><th>phase</th><th>mean</th><th>std</th><th>95 % interval of the mean</th>'
            + ("<th>mean area per image (µm²)</th>" if areas else "") + f"</tr>{body}</table>")


def _area(value) -> str:
    return "–" if value is None else f"{float(value):.4g}"


def _fractions_section(ids, fractions, phases) -> str:
    if not ids or not phases:
        return '<p class="note">No segmented image (phase_fractions.csv is empty or missing).</p>'
    if len(ids) <= MAX_BARS:
        note = "One bar per image; hover a segment for its value."
        svg = _stacked_bars_svg(ids, fractions, phases)
    else:
        note = (f"{len(ids)} images: one box per phase (box: quartiles, line: median, "
                "whiskers: minimum and maximum, diamond: mean).")
        svg = _box_plots_svg(fractions, phases)
    return f'<p class="note">{_e(note)}</p>{svg}'


def _axis(x0, y0, x1, plot_h) -> list[str]:
    parts = []
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        y = y0 + plot_h * (1 - t)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{int(t * 100)} %</text>')
    return parts


def _stacked_bars_svg(ids, fractions, phases) -> str:
    n = len(ids)
    labels = [i if len(i) <= 16 else i[:15] + "…" for i in ids]
    left, top, plot_h = 48, 10, 240
    label_h = 16 + int(6 * max(len(x) for x in labels) * 0.87)    # rotated by 60 degrees
    step = max(12, min(48, 900 // max(n, 1)))
    width = left + n * step + 10
    height = top + plot_h + label_h
    parts = _axis(left, top, left + n * step, plot_h)
    bar = max(step * 0.8, 1)
    for i, image_id in enumerate(ids):
        x = left + i * step + (step - bar) / 2
        y = top + plot_h
        for j, p in enumerate(phases):
            v = fractions[i, j]
            if not np.isfinite(v) or v <= 0:
                continue
            h = plot_h * v
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.2f}" width="{bar:.1f}" height="{h:.2f}" fill="{_e(p["colour"])}">'
                         f"<title>{_e(image_id)}: {_e(p['name'])} {_pct(v)}</title></rect>")
        label = labels[i]
        lx, ly = left + i * step + step / 2 + 4, top + plot_h + 8
        parts.append(f'<text x="{lx:.1f}" y="{ly}" transform="rotate(-60 {lx:.1f} {ly})" text-anchor="end">'
                     f"<title>{_e(image_id)}</title>{_e(label)}</text>")
    return (f'<svg role="img" aria-label="phase fractions per image" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" style="max-width:100%;height:auto">'
            + "".join(parts) + "</svg>" + _legend(phases))


def _box_plots_svg(fractions, phases) -> str:
    k = len(phases)
    left, top, plot_h, label_h, step = 48, 10, 240, 60, 90
    width, height = left + k * step + 10, top + plot_h + label_h
    parts = _axis(left, top, left + k * step, plot_h)

    def y(v):
        return top + plot_h * (1 - v)

    for j, p in enumerate(phases):
        col = fractions[:, j]
        col = col[np.isfinite(col)]
        cx = left + j * step + step / 2
        if col.size:
            lo, q1, med, q3, hi = np.percentile(col, [0, 25, 50, 75, 100])
            mean = col.mean()
            c = _e(p["colour"])
            tip = (f"{_e(p['name'])}: min {_pct(lo)}, quartiles {_pct(q1)} / {_pct(med)} / {_pct(q3)}, "
                   f"max {_pct(hi)}, mean {_pct(mean)}")
            parts.append(
                f"<g><title>{tip}</title>"
                f'<line x1="{cx}" y1="{y(hi):.1f}" x2="{cx}" y2="{y(lo):.1f}" stroke="#444"/>'
                f'<line x1="{cx - 12}" y1="{y(hi):.1f}" x2="{cx + 12}" y2="{y(hi):.1f}" stroke="#444"/>'
                f'<line x1="{cx - 12}" y1="{y(lo):.1f}" x2="{cx + 12}" y2="{y(lo):.1f}" stroke="#444"/>'
                f'<rect x="{cx - 25}" y="{y(q3):.1f}" width="50" height="{max(y(q1) - y(q3), 1):.1f}" fill="{c}" '
                f'stroke="#333"/>'
                f'<line x1="{cx - 25}" y1="{y(med):.1f}" x2="{cx + 25}" y2="{y(med):.1f}" stroke="#000" '
                f'stroke-width="2"/>'
                f'<path d="M{cx} {y(mean) - 5:.1f}l5 5l-5 5l-5 -5z" fill="#fff" stroke="#000"/></g>')
        label = p["name"] if len(p["name"]) <= 14 else p["name"][:13] + "…"
        parts.append(f'<text x="{cx}" y="{top + plot_h + 16}" text-anchor="middle">{_e(p["index"])}</text>'
                     f'<text x="{cx}" y="{top + plot_h + 30}" text-anchor="middle">{_e(label)}</text>')
    return (f'<svg role="img" aria-label="phase fractions per phase" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" style="max-width:100%;height:auto">'
            + "".join(parts) + "</svg>" + _legend(phases))


def _legend(phases) -> str:
    return '<p class="note">' + " &nbsp; ".join(f"{_swatch(p['colour'])}{_e(p['index'])}: {_e(p['name'])}"
                                                  for p in phases) + "</p>"


def _fingerprint_section(out_dir: Path) -> str:
    path = out_dir / "fingerprints.png"
    if not path.is_file():
        return '<p class="note">No fingerprints.png in this folder.</p>'
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return ('<p class="note">Each phase over the features (unit norm): what the phase responds to (its row of '
            'H, or, where phases are centres in activation space, the profile its centre reconstructs).</p>'
            f'<img class="fp" src="{uri}" alt="fingerprint chart: each phase over the features">')


def _images_section(out_dir, ids, fractions, phases, flagged, max_thumbnails, thumb_width) -> str:
    if not ids:
        return '<p class="note">No segmented image.</p>'
    shown = list(ids[:max_thumbnails])
    later_flagged = [i for i in ids[max_thumbnails:] if i in flagged]
    shown += later_flagged[:MAX_FLAGGED]
    left_out = len(ids) - len(shown)
    note = [f"{len(shown)} of {len(ids)} image(s) shown"]
    if left_out:
        rule = (f"the first {max_thumbnails} and every image the quality checks flag are shown"
                if len(later_flagged) <= MAX_FLAGGED else
                f"the first {max_thumbnails} and {MAX_FLAGGED} of the {len(later_flagged)} flagged after them "
                "are shown")
        note.append(f"{left_out} not shown ({rule}); see overlay/ or color/ for all")
    if flagged:
        note.append(f"{sum(1 for i in ids if i in flagged)} flagged (red frame)")
    index = {image_id: n for n, image_id in enumerate(ids)}
    figures = []
    for image_id in shown:
        src, rel, why = _thumbnail(out_dir, image_id, thumb_width)
        kinds = flagged.get(image_id, [])
        badges = "".join(f'<span class="badge">{_e(k)}</span>' for k in kinds)
        row = fractions[index[image_id]]
        tip = ", ".join(f"{p['name']} {_pct(row[j])}" for j, p in enumerate(phases))
        if src:
            img = f'<img src="{src}" alt="{_e(image_id)}" loading="eager">'
            img = f'<a href="{_e(quote(rel))}" title="{_e(rel)} (full size)">{img}</a>'
        else:
            img = f'<p class="note">no preview: {_e(why)}</p>'
        figures.append(f'<figure class="{"flag" if kinds else ""}" title="{_e(tip)}">{img}<figcaption>'
                       f"{_e(image_id)}{badges}{_mini_bar(row, phases)}</figcaption></figure>")
    return f'<p class="note">{_e("; ".join(note))}.</p><div class="grid">' + "".join(figures) + "</div>"


#: rows of the per-image table per page (each page a <details> block, the first one open)
TABLE_PAGE = 100
#: each image's own files the per-image table links to: (label, folder, suffixes)
_IMAGE_FILES = (("overlay", "overlay", (".png",)), ("labels", "labels", (".png", ".tif")),
                ("colour", "color", (".png", ".tif")), ("activations", "activations", (".png",)))


def _image_table(out_dir: Path, ids, fractions, areas, phases, flagged) -> str:
    """Every image, in natural order: its fraction of each phase, the phases' total area where its pixel size
    is known, the warnings that name it and links to its overlay, label map, colour map and activations;
    pages of :data:`TABLE_PAGE` rows, each a collapsible block."""
    if not ids:
        return '<p class="note">No segmented image.</p>'
    head = ("<tr><th>image</th>" + "".join(f"<th>{_swatch(p['colour'])}{_e(p['name'])}</th>" for p in phases)
            + "<th>area (µm²)</th><th>warnings</th><th>files</th></tr>")
    rows = []
    for n, image_id in enumerate(ids):
        cells = "".join(f"<td class=num>{_pct(fractions[n, j], 2)}</td>" for j in range(len(phases)))
        total = float(np.nansum(areas[n])) if np.isfinite(areas[n]).any() else None
        badges = "".join(f'<span class="badge">{_e(kind)}</span>' for kind in flagged.get(image_id, []))
        links = []
        for label, folder, suffixes in _IMAGE_FILES:
            found = next((f"{folder}/{image_id}{x}" for x in suffixes if (out_dir / folder / f"{image_id}{x}").is_file()),
                         None)
            if found:
                links.append(f'<a href="{_e(quote(found))}">{label}</a>')
        rows.append(f"<tr><td>{_e(image_id)}</td>{cells}<td class=num>{_area(total)}</td><td>{badges}</td>"
                    f"<td>{' · '.join(links) or '–'}</td></tr>")
    pages = []
    for start in range(0, len(rows), TABLE_PAGE):
        end = min(start + TABLE_PAGE, len(rows))
        pages.append(f'<details{" open" if start == 0 else ""}><summary>images {start + 1}–{end} of {len(rows)}'
                     f'</summary><table class="images">{head}{"".join(rows[start:end])}</table></details>')
    return (f'<p class="note">{len(ids)} image(s) in natural order (micrograph2 before micrograph10): each '
            "phase's area fraction, the segmented area where the pixel size is known, the warnings that name "
            "the image and its files.</p>" + "".join(pages))


def _files_section(out_dir: Path) -> str:
    """Links to the run's files and folders that exist."""
    entries = (("summary.json", "the run's summary: settings, phases, fractions, warnings"),
               ("phase_fractions.csv", "each image's phase fractions and areas"),
               ("phase_fractions_summary.csv", "each phase's mean, standard deviation and 95 % interval"),
               ("constituent_fractions.csv", "each image's microconstituent fractions"),
               ("fingerprints.png", "the fingerprint chart"), ("model/model.json", "the model (bigseg segment MODEL)"),
               ("overlay/", "overlays"), ("labels/", "label maps (0..k-1)"), ("color/", "colour maps"),
               ("activations/", "activation panels"), ("store.zarr/", "the OME-Zarr store (napari, xarray)"))
    rows = [f'<tr><td><a href="{_e(quote(name))}">{_e(name)}</a></td><td>{_e(what)}</td></tr>'
            for name, what in entries if (out_dir / name.rstrip("/")).exists()]
    return "<table>" + "".join(rows) + "</table>" if rows else '<p class="note">No file of the run found.</p>'


def _mini_bar(row, phases) -> str:
    parts, x = [], 0.0
    for j, p in enumerate(phases):
        v = row[j]
        if np.isfinite(v) and v > 0:
            parts.append(f'<rect x="{x:.2f}" y="0" width="{100 * v:.2f}" height="6" fill="{_e(p["colour"])}"/>')
            x += 100 * v
    return ('<svg viewBox="0 0 100 6" preserveAspectRatio="none" '
            'style="display:block;width:100%;height:6px;margin-top:3px">' + "".join(parts) + "</svg>")


def _thumbnail(out_dir: Path, image_id: str, width: int) -> tuple[str | None, str, str]:
    """(data URI or None, path relative to out_dir, why there is none)."""
    for folder, suffixes in _THUMB_SOURCES:
        for suffix in suffixes:
            path = out_dir / folder / f"{image_id}{suffix}"
            if path.is_file():
                rel = f"{folder}/{image_id}{suffix}"
                try:
                    return _encode_thumbnail(_load_small(path, width), width), rel, ""
                except Exception as exc:  # one unreadable picture costs only its thumbnail
                    return None, rel, f"{rel}: {type(exc).__name__}: {exc}"
    return None, "", "neither overlay/ nor color/ holds it"


def _load_small(path: Path, width: int):
    """An RGB PIL image of ``path`` no wider than a few times ``width`` (big TIFFs read strided)."""
    from PIL import Image

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            level = series.levels[-1]
            for candidate in series.levels:            # the smallest level still wider than the thumbnail
                if _yx(candidate)[1] >= width:
                    level = candidate
            h, w = _yx(level)
            if h * w <= WHOLE_TIFF_PIXELS:
                arr = level.asarray()
            else:
                import zarr

                step = max(1, w // (2 * width))
                arr = np.asarray(zarr.open(level.aszarr(), mode="r")[::step, ::step])
        if arr.ndim == 2:
            im = Image.fromarray(_to_uint8(arr))
        else:
            im = Image.fromarray(_to_uint8(arr[..., :3]) if arr.shape[-1] >= 3 else _to_uint8(arr[..., 0]))
    else:
        im = Image.open(path)
        im.draft("RGB", (width, width))                # JPEG: decode at a reduced scale
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def _yx(level) -> tuple[int, int]:
    axes, shape = level.axes, level.shape
    return shape[axes.index("Y")], shape[axes.index("X")]


def _to_uint8(arr) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    arr = arr.astype(np.float64)
    top = float(np.nanmax(arr)) if arr.size else 0.0
    return np.clip(arr / top * 255 if top > 0 else arr, 0, 255).astype(np.uint8)


def _encode_thumbnail(im, width: int) -> str:
    """Downscale to ``width`` (and at most 1.5 x ``width`` tall) and embed as a data URI.

    A picture of a few flat colours (a colour map) is mapped back onto its own
    colours after the smooth downscale and stored as a palette PNG: a third of
    a JPEG's size and without its halos. Anything else (an overlay on the
    micrograph) becomes a JPEG, or the smaller of PNG and JPEG when the
    thumbnail has at most 256 colours (a PNG of more, 160 kB against 20 kB
    for a MetalDAM overlay, never wins and took half the report's time).
    """
    from PIL import Image

    colours = im.getcolors(64)
    im.thumbnail((width, int(width * 1.5)), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = _io.BytesIO()
    if colours:
        palette = Image.new("P", (1, 1))
        flat = [c for _, rgb in colours for c in rgb[:3]]
        palette.putpalette(flat + flat[:3] * (256 - len(colours)))
        im.quantize(palette=palette, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
        kind = "png"
    else:
        im.save(buf, format="JPEG", quality=70, optimize=True)
        kind = "jpeg"
        if im.getcolors(256) is not None:
            png = _io.BytesIO()
            im.save(png, format="PNG", optimize=True)
            if png.tell() < buf.tell():
                kind, buf = "png", png
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _warnings_section(summary) -> str:
    parts = []
    warnings = summary.get("warnings") or []
    if warnings:
        rows = []
        for w in warnings:
            images = [str(i) for i in w.get("images") or []]
            listed = ", ".join(images[:20]) + (f" and {len(images) - 20} more" if len(images) > 20 else "")
            rows.append(f"<tr><td>{_e(w.get('kind', ''))}</td><td>{_e(w.get('message', ''))}</td>"
                        f"<td>{_e(w.get('suggestion', ''))}</td><td>{_e(listed)}</td></tr>")
        parts.append('<table class="warn"><tr><th>kind</th><th>what</th><th>suggested fix</th><th>images</th></tr>'
                     + "".join(rows) + "</table>")
    else:
        parts.append('<p class="note">No warning: no dominant or unused component, no speckled map, the fit '
                     "converged.</p>")
    skipped = summary.get("skipped") or []
    if skipped:
        rows = "".join(f"<tr><td>{_e(s.get('id', ''))}</td><td>{_e(s.get('stage', ''))}</td>"
                       f"<td>{_e(s.get('error', ''))}</td></tr>" for s in skipped)
        parts.append(f"<h3>Skipped files ({len(skipped)})</h3><table><tr><th>image</th><th>stage</th>"
                     f"<th>error</th></tr>{rows}</table>")
    else:
        parts.append('<p class="note">No file was skipped.</p>')
    return "\n".join(parts)


def _boundaries_section(summary) -> str:
    b = summary.get("boundaries")
    if not b:
        return '<p class="note">This run has no boundary summary.</p>'
    n = int(b.get("components") or 0)
    bands = (f"<p>The boundary-pixel step gave {_pct(b.get('band_pixel_share'))} of the pixels, thin bands "
             "between two phases, to the regions they part (mean over images; <code>boundary_radius</code>)."
             "</p>") if b.get("band_pixel_share") is not None else ""
    if not n:
        return ('<p class="note">No component lives on phase boundaries: every component is a phase.</p>' + bands)
    rows = []
    for i, fp in enumerate(b.get("fingerprints") or []):
        top = sorted(fp.items(), key=lambda kv: -float(kv[1]))[:3] if isinstance(fp, dict) else []
        rows.append(f"<tr><td>{i}</td><td>{_e(', '.join(f'{k} {float(v):.2f}' for k, v in top))}</td></tr>")
    return (f"<p>{n} component(s) live on the boundaries between phases: they explain edge pixels in the "
            f"solve and label none. They would have won {_pct(b.get('pixel_share'))} of the pixels "
            "(mean over images).</p>"
            + ("<table><tr><th>boundary</th><th>strongest features (H)</th></tr>" + "".join(rows) + "</table>"
               if rows else "") + bands)


def _constituents_section(summary) -> str:
    """The microconstituents (``n_constituents``): the window scales, and each one's colour, name, share of all
    pixels and strongest fingerprint entries (``summary.json`` ``constituents``)."""
    from .viz import PALETTE

    level = summary["constituents"]
    fit = level.get("fit") or {}
    rows = []
    for item in level.get("items") or []:
        i = int(item.get("index", 0))
        fp = item.get("fingerprint") or {}
        top = sorted(fp.items(), key=lambda kv: -float(kv[1]))[:3]
        rows.append(f"<tr><td>{_swatch(_hex(None, PALETTE[i % len(PALETTE)]))}{i}</td><td>{_e(item.get('name'))}"
                    f"</td><td class=num>{_pct(item.get('share'))}</td>"
                    f"<td>{_e(', '.join(f'{k} {float(v):.2f}' for k, v in top))}</td></tr>")
    scales = ", ".join(f"{float(v):g}" for v in level.get("scales_px") or [])
    return (f"<p>Regions made of several phases: each pixel's phase memberships in windows of sigma {_e(scales)} "
            f"px (the phases' mean intercept length, {_e(fit.get('mean_intercept', '?'))} px, and twice it), "
            "factorised by NMF. Maps: <code>constituents/</code>, <code>constituents_overlay/</code>; "
            "fractions: <code>constituent_fractions.csv</code>.</p>"
            "<table><tr><th>constituent</th><th>name</th><th>share of all pixels</th>"
            "<th>strongest fingerprint entries</th></tr>" + "".join(rows) + "</table>")


_MODEL_KEYS = (
    ("solver", "solver"), ("init", "initialisation"), ("n_iter", "iterations"), ("converged", "converged"),
    ("relative_error", "relative reconstruction error"), ("reconstruction_error", "reconstruction error"),
    ("sample_pixels", "pixels sampled"), ("images", "images fitted on"), ("phases_asked", "components asked"),
    ("transitions", "boundary components"), ("fit_seconds", "fit (s)"), ("sample_seconds", "sampling (s)"),
)


def _model_section(summary) -> str:
    report = summary.get("model") or {}
    rows = [(label, _num(report[key])) for key, label in _MODEL_KEYS if key in report]
    if isinstance(report.get("refit"), dict):
        r = report["refit"]
        rows.append(("refit", f"{r.get('n_components')} components, {r.get('n_iter')} iterations, "
                              f"converged: {_num(r.get('converged'))}"))
    auto = report.get("n_components_auto")
    if isinstance(auto, dict):
        scan = ", ".join(f"k={s.get('k')}: {_num(s.get('stability'))}" for s in auto.get("scan") or []
                         if isinstance(s, dict))
        rows.append(("n_components auto", f"chose {auto.get('chosen')} (stability {scan})"))
    rows.append(("images segmented", f"{summary.get('n_images', '–')} ({summary.get('segmented_this_run', '–')} "
                                     "by the last run)"))
    timings = summary.get("timings_seconds") or {}
    if timings:
        rows.append(("timings (s)", ", ".join(f"{k} {_num(v)}" for k, v in timings.items())))
    if summary.get("scheduler"):
        rows.append(("ran on", summary["scheduler"]))
    table = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"
    full = json.dumps(report, indent=2, sort_keys=True, default=str)
    return table + f"<details><summary>the model's whole report</summary><pre>{_e(full)}</pre></details>"


def _settings_section(settings: dict) -> str:
    if not settings:
        return '<p class="note">summary.json holds no settings.</p>'
    from . import config

    options = config.OPTIONS
    by_stage: dict[str, list[str]] = {}
    for key in settings:
        stage = options[key].stage if key in options else "other"
        by_stage.setdefault(stage, []).append(key)
    rows = []
    for stage, keys in by_stage.items():
        cells = []
        for key in keys:
            value = settings[key]
            opt = options.get(key)
            default = opt.default if opt else None
            changed = opt is not None and default != "auto" and _norm(value) != _norm(default)
            shown = _num(value)
            if key == "chunk_memory" and isinstance(value, int):
                shown = f"{value / 2 ** 20:.0f} MiB"
            help_text = opt.help if opt else ""
            if changed:
                help_text += f" (default: {_num(default)})"
            cells.append(f'<td class="k" title="{_e(help_text)}">{_e(key)}</td>'
                         f'<td class="v{" changed" if changed else ""}" title="{_e(help_text)}">{_e(shown)}</td>')
        for n in range(0, len(cells), 3):
            first = f'<th rowspan="{(len(cells) + 2) // 3}">{_e(stage)}</th>' if n == 0 else ""
            rows.append("<tr>" + first + "".join(cells[n:n + 3]) + "</tr>")
    return ('<p class="note">Bold: differs from the default (hover a key for its meaning).</p>'
            '<table class="settings">' + "".join(rows) + "</table>")


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def _versions_line(versions: dict) -> str:
    return "Made with " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) if versions else ""
