"""The per-image pictures decode to the pixels they always had.

The PNGs are written by bigseg's own encoder (no filter, libdeflate) and the
overlay tint is a table look-up; the expectations here are made the way they
were made before, with Pillow's encoder and the per-pixel arithmetic.
"""

import io as _io
import json
import sys

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bigseg import export, io, segment, viz


def _pil_png(img, meta=None) -> bytes:
    """A PIL image as PNG bytes, as bigseg wrote every PNG before (``compress_level=1``)."""
    buf = _io.BytesIO()
    info = None
    if meta is not None:
        info = PngInfo()
        info.add_itxt(viz.META_KEY, json.dumps(meta, sort_keys=True))
    img.save(buf, format="PNG", compress_level=1, pnginfo=info)
    return buf.getvalue()


def _old_viz_png(pixels, meta, palette=None) -> bytes:
    """``viz._png`` as it was: Pillow's encoder on the same pixels."""
    img = Image.fromarray(pixels)
    if palette is not None:
        img = Image.frombytes("P", pixels.shape[::-1], np.ascontiguousarray(pixels).tobytes())
        img.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
    return _pil_png(img, meta)


def _old_overlay_picture(grey8, labels, palette=viz.PALETTE, alpha=viz.OVERLAY_ALPHA):
    labels = np.asarray(labels)
    colour = np.asarray(palette, np.uint16)[labels % len(palette)]
    a = int(round(alpha * 256))
    grey = np.asarray(grey8, np.uint16)[..., None]
    out = ((grey * (256 - a) + colour * a) >> 8).astype(np.uint8)
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    out[edge] = colour[edge]
    return out


def _decoded(data_or_path):
    src = _io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as img:
        img.load()
        return img.mode, np.asarray(img), img.getpalette(), dict(img.text)


def _same_picture(new, old):
    n_mode, n_px, n_pal, n_text = _decoded(new)
    o_mode, o_px, o_pal, o_text = _decoded(old)
    assert n_mode == o_mode and n_px.shape == o_px.shape
    np.testing.assert_array_equal(n_px, o_px)
    assert n_pal == o_pal and n_text == o_text


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 1), (64, 93)])
def test_encoded_pngs_decode_to_what_pillow_wrote(rng, shape):
    grey = rng.integers(0, 256, shape, dtype=np.uint8)
    rgb = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    _same_picture(io.encode_png(grey), _pil_png(Image.fromarray(grey)))
    _same_picture(io.encode_png(rgb), _pil_png(Image.fromarray(rgb)))
    _same_picture(io.encode_png(rgb[:, ::-1]), _pil_png(Image.fromarray(np.ascontiguousarray(rgb[:, ::-1]))))
    for palette in (viz.PALETTE, viz.PANEL_PALETTE):
        idx = (grey.astype(int) % len(palette)).astype(np.uint8)
        meta = {"kind": "test", "names": ["γ′ precipitate", "α-Fe", "a \"quoted\" name"]}
        _same_picture(io.encode_png(idx, palette=palette, text={viz.META_KEY: json.dumps(meta, sort_keys=True)}),
                      _old_viz_png(idx, meta, palette))


def test_png_without_libdeflate_falls_back_to_zlib(rng, monkeypatch):
    pixels = rng.integers(0, 7, (40, 31, 3), dtype=np.uint8)
    monkeypatch.setitem(sys.modules, "imagecodecs", None)      # import fails: zlib's deflate
    _same_picture(io.encode_png(pixels), _pil_png(Image.fromarray(pixels)))


def test_encode_png_refuses_what_it_cannot_write():
    for bad in (np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)):
        with pytest.raises((TypeError, ValueError)):
            io.encode_png(bad)
    with pytest.raises(ValueError):
        io.encode_png(np.zeros((4, 4, 3), np.uint8), palette=viz.PALETTE)


@pytest.mark.parametrize("k", [1, 3, 12, 13, 40])
@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
def test_overlay_tint_table_gives_the_arithmetic(rng, k, alpha):
    labels = rng.integers(0, k, (37, 53)).astype(np.uint8)
    labels[5:20, 10:30] = 0          # regions, not only speckle: inside pixels and outlines both
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    np.testing.assert_array_equal(viz.overlay_picture(grey, labels, alpha=alpha),
                                  _old_overlay_picture(grey, labels, alpha=alpha))
    np.testing.assert_array_equal(viz.overlay_picture(grey[::2, ::3], labels[::2, ::3]),
                                  _old_overlay_picture(grey[::2, ::3], labels[::2, ::3]))


def _activations(rng, k, src=(37, 53)):
    """Activations of ``k`` components in blobs, so every label shows and regions have outlines."""
    yy, xx = np.mgrid[:src[0], :src[1]]
    centres = rng.random((k, 2)) * src
    dist = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    return (np.exp(-dist / 6) + 0.05 * rng.random((k,) + src)).astype(np.float32)


@pytest.mark.parametrize("k, phases", [(5, [0, 2, 3]), (13, None)])
def test_export_image_pictures_are_the_old_ones(rng, tmp_path, monkeypatch, k, phases):
    acts = _activations(rng, k)
    native = (73, 101)
    grey = rng.integers(200, 3000, native).astype(np.uint16)     # 16-bit: stretched for the overlay
    names = [f"γ′ phase {i}" for i in range(k if phases is None else len(phases))]
    result = export.export_image(acts, native, tmp_path / "new", "img", phases=phases, names=names, grey=grey)
    phase_acts = acts if phases is None else acts[phases]
    labels = np.argmax(segment.resample_linear(phase_acts, native), axis=0).astype(np.uint8)
    assert len(np.unique(labels)) > 2

    mode, px, _, _ = _decoded(tmp_path / "new" / "labels" / "img.png")
    assert mode == "L"
    np.testing.assert_array_equal(px, labels)
    mode, px, palette, _ = _decoded(tmp_path / "new" / "color" / "img.png")
    assert mode == "P" and palette == viz.PALETTE.ravel().tolist()
    np.testing.assert_array_equal(px, labels % len(viz.PALETTE))
    with Image.open(tmp_path / "new" / "color" / "img.png") as img:
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), viz.PALETTE[labels % len(viz.PALETTE)])

    picture = _old_overlay_picture(viz.to_uint8(grey), labels)
    old_overlay = _old_viz_png(np.concatenate([picture, viz.legend_band(names, native[1])]),
                               {"kind": "overlay", "picture_height": native[0], "names": names})
    _same_picture(tmp_path / "new" / "overlay" / "img.png", old_overlay)

    monkeypatch.setattr(viz, "_png", _old_viz_png)       # the panels as Pillow encoded them
    _same_picture(tmp_path / "new" / "activations" / "img.png", viz.titled_panels_png(phase_acts, names))

    n = len(names)
    counts = np.bincount(labels.ravel(), minlength=n)
    assert result["fractions"] == {f"phase_{i}": float(c) / labels.size for i, c in enumerate(counts)}
    assert result["pixels"] == labels.size


def test_renamed_pictures_keep_their_pixels(rng, tmp_path):
    acts = _activations(rng, 3)
    grey = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    export.export_image(acts, grey.shape, tmp_path, "img", names=["a", "b", "c"], grey=grey)
    for sub, redraw in (("overlay", viz.relegend_overlay), ("activations", viz.retitle_panels)):
        path = tmp_path / sub / "img.png"
        old_mode, old_px, old_pal, old_text = _decoded(path)
        mode, px, pal, text = _decoded(redraw(path, ["x", "y", "z"]))
        assert mode == old_mode and pal == old_pal and json.loads(text[viz.META_KEY])["names"] == ["x", "y", "z"]
        meta = json.loads(old_text[viz.META_KEY])
        body = slice(meta.get("title_height", 0), meta.get("picture_height"))   # not the legend or the titles
        np.testing.assert_array_equal(px[body], old_px[body])
