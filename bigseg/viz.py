"""The pictures: colour label maps, overlays with a legend, titled viridis activation panels.

Legends, titles and colour bars are drawn with PIL's ImageDraw, not matplotlib:
one picture per image, on workers, must cost milliseconds. Each picture
carries its layout and names in a PNG text chunk (``bigseg``), so ``bigseg
rename`` redraws only its legend or title band, never the picture.
"""

from __future__ import annotations

import functools

import numpy as np

#: phase colours, label order. Okabe & Ito's colour-blind-safe set (its black left out: it vanishes on a dark
#: phase of a micrograph), then Paul Tol's muted colours. Not tab10 and not the saturated primaries (pure
#: red, green, blue, yellow, cyan, magenta) that hand-drawn masks and annotation tools use, so a bigseg map
#: is never mistaken for a mask; no grey, which would vanish on an SEM image. MAX_EXACT_K (10) fits.
PALETTE = np.array([
    [0, 114, 178], [230, 159, 0], [0, 158, 115], [204, 121, 167], [86, 180, 233], [213, 94, 0],
    [240, 228, 66], [136, 34, 85], [68, 170, 153], [153, 153, 51], [51, 34, 136], [221, 204, 119],
], dtype=np.uint8)

# matplotlib's viridis (CC0) at 11 evenly spaced stops; linear interpolation between
# them differs from the full 256-entry table by under 2 levels per channel
_VIRIDIS_STOPS = np.array([
    [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
    [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
], dtype=np.float64)


def viridis_lut(n: int) -> np.ndarray:
    """``n`` viridis colours, dark blue to yellow, as uint8 RGB."""
    t = np.linspace(0, 1, n)
    xs = np.linspace(0, 1, len(_VIRIDIS_STOPS))
    return np.stack([np.interp(t, xs, _VIRIDIS_STOPS[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


#: palette of the activation panels: 255 viridis levels, then white for the gaps
PANEL_PALETTE = np.concatenate([viridis_lut(255), [[255, 255, 255]]]).astype(np.uint8)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on workers or CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig, path, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    from .io import atomic_write_bytes

    atomic_write_bytes(path, figure_png(fig, dpi))


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map (y, x) -> RGB (y, x, 3)."""
    return PALETTE[np.asarray(labels) % len(PALETTE)]


def activation_panels(acts: np.ndarray, gap: int = 4, top: float | None = None) -> np.ndarray:
    """Activations (k, y, x) -> one index image of k panels side by side, for :data:`PANEL_PALETTE`.

    All panels share one scale (0 to ``top``, by default :func:`panel_scale`:
    the 99.5th percentile over every component) so a brighter panel means a
    stronger component. Indices 0-254 are viridis levels and 255 the white
    gaps: written as a palette PNG, the panels encode in a third of the time of
    RGB and show the same colours.
    """
    acts = np.asarray(acts, dtype=np.float32)
    k, h, w = acts.shape
    top = panel_scale(acts) if top is None else top
    scaled = np.clip(acts / top, 0, 1) if top > 0 else np.zeros_like(acts)
    idx = (scaled * 254).round().astype(np.uint8)
    out = np.full((h, k * w + (k - 1) * gap), 255, np.uint8)
    for i in range(k):
        out[:, i * (w + gap): i * (w + gap) + w] = idx[i]
    return out


# --- drawn pictures: overlays with a legend, titled panels with a colour bar ------------------------

#: longest side of an overlay: larger images get a strided (nearest) view
OVERLAY_MAX_SIDE = 2048
#: how much of the phase colour tints the micrograph: enough to read the phase, little enough to see the grain
OVERLAY_ALPHA = 0.35
#: the PNG text key holding a drawn picture's layout and names
META_KEY = "bigseg"
#: panel palette index of titles and colour-bar labels: viridis' darkest level; the palette's 256 entries
#: are all taken, and a dark purple on white reads as well as black
TEXT_INDEX = 0
WHITE_INDEX = 255


@functools.lru_cache(maxsize=32)
def _font(size: int):
    """DejaVu Sans where the system has it: metallurgists name phases with Greek letters (gamma prime, alpha),
    which Pillow's built-in font draws as boxes. Else the built-in font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except (OSError, ImportError):
        pass
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError, ImportError):   # Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def _fit_text(font, text: str, width: float) -> str:
    """``text``, cut with "..." to at most ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..." if text else ""


def to_uint8(grey: np.ndarray) -> np.ndarray:
    """A grey image as 8-bit for display: 8-bit as stored, anything else stretched over its 0.5-99.5 percentiles
    (a 16-bit SEM image often fills a small part of its range)."""
    grey = np.asarray(grey)
    if grey.dtype == np.uint8:
        return grey
    g = grey.astype(np.float32)
    finite = g[np.isfinite(g)]
    lo, hi = (np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0))
    scaled = (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)
    return (np.clip(np.nan_to_num(scaled), 0, 1) * 255).round().astype(np.uint8)


def overlay_step(shape) -> int:
    """The stride that brings an image of ``shape`` to at most ``OVERLAY_MAX_SIDE`` on a side."""
    return max(1, int(np.ceil(max(shape[:2]) / OVERLAY_MAX_SIDE)))


def overlay_picture(grey8: np.ndarray, labels: np.ndarray, palette: np.ndarray = PALETTE,
                    alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The micrograph tinted with each pixel's phase colour, phase boundaries drawn in full colour; RGB uint8.

    A boundary pixel is one whose label differs from its right or lower
    neighbour; it takes its own phase's colour, so each region is outlined in
    its colour and the grey detail inside stays visible.

    A look-up in :func:`overlay_table` (one row per phase, one column per
    grey level and one for the outline): the numbers of ``(grey * (256 - a) +
    colour * a) >> 8`` with ``a = round(alpha * 256)``, five times faster than
    that arithmetic on every pixel.
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] = labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    index = (labels % len(palette)).astype(np.intp) * 257
    index += np.where(edge, np.intp(256), np.asarray(grey8, np.uint8))
    return np.take(overlay_table(palette, alpha).reshape(-1, 3), index, axis=0)


def scale_bar_length(width_um: float) -> float:
    """A round length, 1, 2 or 5 x 10^n micrometres, nearest (on a log scale) to a fifth of ``width_um``."""
    import math

    target = width_um / 5.0
    n = math.floor(math.log10(target))
    candidates = [m * 10.0 ** e for e in (n, n + 1) for m in (1, 2, 5)]
    return min(candidates, key=lambda c: abs(math.log(c / target)))


def length_label(um: float) -> str:
    """A length in micrometres as people write it on a micrograph: ``500 nm``, ``20 µm``, ``2 mm``."""
    if um >= 1000:
        return f"{um / 1000:g} mm"
    if um < 1:
        return f"{um * 1000:.4g} nm"
    return f"{um:g} µm"


def draw_scale_bar(picture: np.ndarray, um_per_pixel: float) -> np.ndarray:
    """``picture`` (RGB) with a scale bar in its lower right corner: a white bar of a round length
    (:func:`scale_bar_length`) outlined in dark grey, its length written above it in white outlined text,
    so it reads on dark and bright phases alike. A picture too small for a bar comes back as it is."""
    from PIL import Image, ImageDraw

    picture = np.asarray(picture, np.uint8)
    h, w = picture.shape[:2]
    length = scale_bar_length(w * float(um_per_pixel))
    bar = int(round(length / float(um_per_pixel)))
    margin, thick = max(4, round(w / 40)), max(3, round(w / 150))
    size = int(np.clip(round(w / 32), 9, 48))
    if bar < 4 or bar > w - 2 * margin or h < 2 * margin + thick + size * 2:
        return picture
    img = Image.fromarray(picture)
    draw = ImageDraw.Draw(img)
    x1, y1 = w - margin, h - margin
    x0, y0 = x1 - bar, y1 - thick
    edge = max(1, thick // 3)
    dark, white = (20, 20, 20), (255, 255, 255)
    draw.rectangle((x0 - edge, y0 - edge, x1 - 1 + edge, y1 - 1 + edge), fill=dark)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=white)
    font, text = _font(size), length_label(length)
    # anchored at the descender line ("md"), so the µ's tail and the text's outline stay clear of the bar
    draw.text(((x0 + x1) / 2, y0 - edge - max(2, size // 5)), text, fill=white, font=font, anchor="md",
              stroke_width=max(1, size // 9), stroke_fill=dark)
    return np.asarray(img)


def overlay_table(palette: np.ndarray = PALETTE, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``(phases, 257, 3)`` uint8: column ``g`` < 256 is grey level ``g`` tinted with the phase's colour,
    column 256 the phase's own colour (its outline)."""
    a = int(round(alpha * 256))
    colour = np.asarray(palette, np.uint16)
    table = np.empty((len(colour), 257, 3), np.uint8)
    table[:, :256] = (np.arange(256, dtype=np.uint16)[None, :, None] * (256 - a) + colour[:, None, :] * a) >> 8
    table[:, 256] = colour
    return table


def legend_layout(names, width: int) -> dict:
    """Where :func:`legend_band` draws each entry (a colour swatch, then ``"i: name"``) in a band ``width`` wide.

    Entries flow left to right and wrap; one too long for the band has its
    text cut. Returns ``height``, ``font_size`` and ``entries``: per phase the
    swatch box ``(x0, y0, x1, y1)`` (inclusive), the text's top-left corner and the text.
    """
    size = int(np.clip(round(width / 45), 11, 28))
    font = _font(size)
    pad, gap = max(4, size // 2), max(3, size // 3)
    row_h = size + pad
    x, y, entries = pad, pad, []
    for i, name in enumerate(names):
        text = f"{i}: {name}"
        room = width - 2 * pad - size - gap
        text = _fit_text(font, text, max(room, 0))
        w = size + gap + int(np.ceil(font.getlength(text)))
        if x > pad and x + w > width - pad:
            x, y = pad, y + row_h
        entries.append({"swatch": (x, y, x + size - 1, y + size - 1), "text_xy": (x + size + gap, y),
                        "text": text})
        x += w + 2 * gap + size // 2
    return {"height": y + row_h, "font_size": size, "entries": entries}


def legend_band(names, width: int, palette: np.ndarray = PALETTE) -> np.ndarray:
    """The legend of ``names`` as an RGB band ``width`` wide (white, black text)."""
    from PIL import Image, ImageDraw

    layout = legend_layout(names, width)
    band = Image.new("RGB", (width, layout["height"]), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = _font(layout["font_size"])
    for i, e in enumerate(layout["entries"]):
        draw.rectangle(e["swatch"], fill=tuple(int(c) for c in palette[i % len(palette)]))
        draw.text(e["text_xy"], e["text"], fill=(0, 0, 0), font=font)
    return np.asarray(band)


def _png(pixels: np.ndarray, meta: dict, palette: np.ndarray | None = None) -> bytes:
    """A drawn picture (RGB, or palette indices with ``palette``) as PNG bytes carrying ``meta``."""
    import json

    from .io import encode_png

    return encode_png(pixels, palette=palette, text={META_KEY: json.dumps(meta, sort_keys=True)})


def read_meta(path) -> dict | None:
    """The layout and names a drawn picture carries (None for any other PNG)."""
    import json

    from PIL import Image

    with Image.open(path) as img:
        raw = img.text.get(META_KEY) if hasattr(img, "text") else None
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def overlay_png(picture: np.ndarray, names, palette: np.ndarray = PALETTE) -> bytes:
    """An RGB overlay (:func:`overlay_picture`) above its legend, as PNG bytes that remember the layout."""
    picture = np.asarray(picture, np.uint8)
    band = legend_band(names, picture.shape[1], palette)
    return _png(np.concatenate([picture, band], axis=0),
                {"kind": "overlay", "picture_height": int(picture.shape[0]), "names": list(names)})


def relegend_overlay(path, names, palette: np.ndarray = PALETTE) -> bytes:
    """An overlay PNG written by :func:`overlay_png` with its legend drawn again for ``names``."""
    from PIL import Image

    meta = read_meta(path) or {}
    with Image.open(path) as img:
        picture = np.asarray(img.convert("RGB"))[:int(meta.get("picture_height", 0))]
    if meta.get("kind") != "overlay" or picture.shape[0] == 0:
        raise ValueError(f"{path}: not an overlay written by bigseg")
    return overlay_png(picture, names, palette)


def panel_scale(acts: np.ndarray) -> float:
    """The activation at the top of the panels' shared scale: the 99.5th percentile over every component."""
    acts = np.asarray(acts)
    return float(np.percentile(acts, 99.5)) if acts.size else 0.0


def _panel_bands(panel_width: int) -> tuple[int, int, int]:
    """Font size, title band height and colour-bar band height for panels ``panel_width`` wide."""
    size = int(np.clip(round(panel_width / 14), 10, 28))
    pad = max(3, size // 3)
    return size, size + 2 * pad, 2 * size + 3 * pad


def _draw_titles(img, names, panel_width: int, gap: int) -> None:
    from PIL import ImageDraw

    size, title_h, _ = _panel_bands(panel_width)
    font = _font(size)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, img.width - 1, title_h - 1), fill=WHITE_INDEX)
    for i, name in enumerate(names):
        text = _fit_text(font, f"{i}: {name}", panel_width - 2)
        x0 = i * (panel_width + gap) + (panel_width - font.getlength(text)) / 2
        draw.text((max(x0, i * (panel_width + gap)), (title_h - size) // 2), text, fill=TEXT_INDEX, font=font)


def titled_panels_png(acts: np.ndarray, names, gap: int = 4) -> bytes:
    """Activations ``(k, y, x)`` as a palette PNG: a title per panel (``"i: name"``), the panels side by side
    on one shared scale (:func:`activation_panels`), and a viridis colour bar from 0 to that scale's top."""
    from PIL import Image, ImageDraw

    acts = np.asarray(acts, dtype=np.float32)
    k, h, w = acts.shape
    scale = panel_scale(acts)       # once: the panels' top and the colour bar's label
    body = activation_panels(acts, gap, scale)
    size, title_h, bar_h = _panel_bands(w)
    width = body.shape[1]
    canvas = np.full((title_h + h + bar_h, width), WHITE_INDEX, np.uint8)
    canvas[title_h:title_h + h] = body
    pad = max(3, size // 3)
    x0, x1 = pad, max(pad + 1, width - pad)
    bar = np.linspace(0, 254, x1 - x0).round().astype(np.uint8)
    canvas[title_h + h + pad:title_h + h + pad + size, x0:x1] = bar
    img = Image.frombytes("P", (width, canvas.shape[0]), np.ascontiguousarray(canvas).tobytes())
    img.putpalette(PANEL_PALETTE.ravel().tolist())
    _draw_titles(img, names, w, gap)
    font = _font(size)
    draw = ImageDraw.Draw(img)
    y = title_h + h + 2 * pad + size
    top = f"{scale:.3g}"
    draw.text((x0, y), "0", fill=TEXT_INDEX, font=font)
    draw.text((x1 - font.getlength(top), y), top, fill=TEXT_INDEX, font=font)
    caption = _fit_text(font, "activation (W), one scale", max(0, x1 - x0 - font.getlength(top) - 3 * size))
    draw.text(((width - font.getlength(caption)) / 2, y), caption, fill=TEXT_INDEX, font=font)
    return _png(np.asarray(img), {"kind": "activations", "panel_width": int(w), "gap": int(gap),
                                  "title_height": int(title_h), "names": list(names)}, PANEL_PALETTE)


def retitle_panels(path, names) -> bytes:
    """An activation PNG written by :func:`titled_panels_png` with its titles drawn again for ``names``."""
    from PIL import Image

    meta = read_meta(path) or {}
    if meta.get("kind") != "activations":
        raise ValueError(f"{path}: not activation panels written by bigseg")
    with Image.open(path) as img:
        img = img.copy()
    _draw_titles(img, names, int(meta["panel_width"]), int(meta["gap"]))
    return _png(np.asarray(img), dict(meta, names=list(names)), np.asarray(img.getpalette(), np.uint8).reshape(-1, 3))
