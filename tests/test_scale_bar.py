"""Scale bars on overlays (and so on the report's thumbnails) wherever the pixel size is known, and nowhere else."""

import math

import numpy as np
import pytest
from PIL import Image

from bigseg import export, viz


@pytest.mark.parametrize("width_um", [0.37, 3.0, 51.2, 100.0, 777.0, 12345.0])
def test_the_bar_is_a_round_length_near_a_fifth_of_the_width(width_um):
    length = viz.scale_bar_length(width_um)
    mantissa = length / 10 ** math.floor(math.log10(length) + 1e-9)
    assert round(mantissa, 6) in (1, 2, 5)
    assert width_um / 5 / 2.3 <= length <= width_um / 5 * 2.3


def test_labels_read_as_written_on_micrographs():
    assert [viz.length_label(v) for v in (0.5, 20.0, 2000.0)] == ["500 nm", "20 µm", "2 mm"]


def _white_in_picture(path):
    """Pure white pixels above the legend (the picture part of an overlay PNG)."""
    height = viz.read_meta(path)["picture_height"]
    rgb = np.asarray(Image.open(path).convert("RGB"))[:height]
    return (rgb == 255).all(axis=-1)


@pytest.mark.parametrize("pixel_size", [0.05, None])
def test_an_overlay_has_a_bar_exactly_when_the_pixel_size_is_known(tmp_path, pixel_size):
    grey = np.full((300, 400), 120, np.uint8)
    labels = np.zeros((300, 400), np.uint8)
    labels[:, 200:] = 1
    export.write_overlay(tmp_path, "img", grey, labels, ["matrix", "island"], pixel_size=pixel_size)
    white = _white_in_picture(tmp_path / "overlay" / "img.png")
    if pixel_size is None:
        assert not white.any()
        return
    # 400 px at 0.05 um: 20 um wide, a 5 um bar (100 px) in the lower right corner, its label above it
    rows = np.flatnonzero(white.sum(axis=1) >= 100)
    assert rows.size >= 3 and rows.min() > 250
    cols = np.flatnonzero(white[rows[0]])
    assert cols.max() > 370 and cols.max() - cols.min() + 1 == 100
    assert white[200:rows.min() - 1, 290:].any()              # the label's white strokes above the bar


def test_a_run_draws_bars_only_on_images_of_known_pixel_size(tmp_path, synth_dir):
    from click.testing import CliRunner

    from bigseg.cli import main

    sidecar = tmp_path / "px.csv"
    stems = sorted(p.stem for p in (synth_dir / "images").iterdir())
    sidecar.write_text("image,pixel_size_um\n" + f"{stems[0]},0.02\n")
    res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(tmp_path / "o"), "-k", "3",
                                    "--set", "resize=native", "--set", "sample_size=6000", "--set", "max_iter=100",
                                    "--set", f"pixel_size_csv={sidecar}", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with_bar = [stem for stem in stems if _white_in_picture(tmp_path / "o" / "overlay" / f"{stem}.png")
                .sum(axis=1).max() >= 20]
    assert with_bar == [stems[0]]
