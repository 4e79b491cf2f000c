"""OUT/report.html: one self-contained page, escaped, small, and checked in a real headless Chromium."""

from __future__ import annotations

import base64
import io as _io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bigseg import config, io, report
from bigseg.cli import main
from bigseg.viz import PALETTE
from conftest import REQUIRE_FULL, missing, need

ARGS = ["--set", "resize=native", "--set", "chunk_size=64", "--set", "sample_size=6000", "--set", "max_iter=100",
        "--quiet"]
HOSTILE = '<img src=x onerror="document.title=1">'


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHROMIUM = _chromium()
NO_CHROMIUM = ("no Chromium binary on PATH or at /usr/bin/chromium (apt-get install chromium; .ci/run installs "
               "it)")
# under BIGSEG_REQUIRE_FULL the test runs and fails in _browse instead of skipping
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not REQUIRE_FULL, reason=NO_CHROMIUM)


# --- output folders ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synth_dir):
    """A real run of the CLI on the six synthetic micrographs (fast settings)."""
    out = tmp_path_factory.mktemp("report") / "run"
    res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(out), "-k", "3", *ARGS],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def _fake_run(out: Path, n: int = 30, k: int = 3, flagged=("img27", "img29")) -> Path:
    """An output folder written by hand: hostile text everywhere, every kind of thumbnail source."""
    rng = np.random.default_rng(0)
    ids = [f"img{i:02d}" for i in range(n)]
    settings = config.defaults()
    settings["n_components"] = k
    summary = {
        "settings": settings, "n_images": n, "segmented_this_run": n,
        "components": [{"index": i, "name": f"phase {i} {HOSTILE}" if i == 1 else f"phase {i}",
                        "share": 1 / k, "fingerprint": {"intensity": 1.0}} for i in range(k)],
        "warnings": [{"kind": "speckled", "images": list(flagged), "message": f"{len(flagged)} image(s) {HOSTILE}",
                      "suggestion": "raise spatial_weight <b>now</b>"},
                     {"kind": "not_converged", "message": "the fit stopped", "suggestion": "raise max_iter"}],
        "skipped": [{"id": "bad<b>", "stage": "ingest", "error": "<script>document.title=2</script> unreadable"}],
        "boundaries": {"components": 1, "fingerprints": [{"intensity": 0.1, "gradient_s1": 0.9}],
                       "pixel_share": 0.05, "band_pixel_share": 0.0123},
        "model": {"solver": "cd", "n_iter": 100, "converged": False, "relative_error": 0.13,
                  "n_components_auto": {"chosen": k,
                                        "scan": [{"k": 2, "stability": 0.9}, {"k": 3, "stability": 0.95}]}},
        "timings_seconds": {"fit": 1.0}, "scheduler": "threads", "versions": {"bigseg": "0.1.0"},
    }
    out.mkdir(parents=True)
    io.atomic_write_text(out / "summary.json", json.dumps(summary))
    fr = rng.dirichlet(np.ones(k), size=n)
    io.atomic_write_text(out / "phase_fractions.csv",
                         "image," + ",".join(f"phase_{j}" for j in range(k)) + "\n"
                         + "".join(i + "," + ",".join(f"{v:.6f}" for v in row) + "\n" for i, row in zip(ids, fr)))
    Image.new("RGB", (600, 200), (200, 220, 240)).save(out / "fingerprints.png")
    for image_id in ids:
        if image_id in ("img02", "img03"):
            continue
        labels = (rng.random((150, 200)) * k).astype(np.uint8)
        io.write_palette_png(out / "color" / f"{image_id}.png", labels, PALETTE)
    (out / "overlay").mkdir()
    Image.fromarray((rng.random((600, 800, 3)) * 255).astype(np.uint8)).save(out / "overlay" / "img01.png")
    import tifffile

    big = PALETTE[(rng.random((500, 700)) * k).astype(np.uint8)]
    tifffile.imwrite(out / "color" / "img02.tif", big, tile=(128, 128))        # img03: no picture at all
    return out


def _data_uris(page: str) -> list[tuple[str, bytes]]:
    return [(kind, base64.b64decode(data))
            for kind, data in re.findall(r'src="data:image/(\w+);base64,([A-Za-z0-9+/=]*)"', page)]


def _external_refs(page: str) -> list[str]:
    refs = re.findall(r'(?:src|href|xlink:href|action|poster|srcset)\s*=\s*["\']?\s*([^"\'\s>]*)', page, re.I)
    return [r for r in refs if re.match(r"(?:[a-z][a-z0-9+.-]*:)?//", r, re.I) and not r.startswith("data:")]


# --- the page, without a browser ----------------------------------------------------------

def test_report_is_self_contained_escaped_and_samples_large_collections(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "WHOLE_TIFF_PIXELS", 1000)        # img02's TIFF is read strided
    out = _fake_run(tmp_path / "out")
    path = report.write_report(out)
    assert path == out / "report.html"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]       # written atomically
    page = path.read_text(encoding="utf-8")

    # nothing from elsewhere, and the policy says so
    assert "http://" not in page and "https://" not in page and _external_refs(page) == []
    assert "Content-Security-Policy" in page and "<script" not in page.lower() and "<link" not in page.lower()
    # every text escaped
    assert HOSTILE not in page and "<b>" not in page
    assert html_escaped(HOSTILE) in page and "&lt;script&gt;document.title=2&lt;/script&gt;" in page
    assert "bad&lt;b&gt;" in page and "ingest" in page

    # the first 24 and the two flagged images; img03 has no picture and says so
    figures = re.findall(r"<figure.*?</figure>", page, re.S)
    assert len(figures) == 26
    assert [re.search(r"<figcaption>(img\d+)", f).group(1) for f in figures][-2:] == ["img27", "img29"]
    assert sum('class="flag"' in f for f in figures) == 2
    assert "26 of 30 image(s) shown; 4 not shown" in page
    assert "no preview" in figures[3] and "img03" in figures[3]

    uris = _data_uris(page)
    assert len(uris) == 1 + 25                       # the fingerprint chart and 25 thumbnails
    for kind, data in uris[1:]:
        im = Image.open(_io.BytesIO(data))
        assert im.width <= report.THUMB_WIDTH and im.format.lower() == kind
    img01 = _data_uris(figures[1])[0]
    assert img01[0] == "jpeg" and Image.open(_io.BytesIO(img01[1])).size == (320, 240)   # overlay, not colour map
    img02 = Image.open(_io.BytesIO(_data_uris(figures[2])[0][1])).convert("RGB")
    assert img02.width == 320 and {tuple(c) for _, c in img02.getcolors(64)} <= {tuple(c) for c in PALETTE[:3]}
    assert 'href="overlay/img01.png"' in page and 'href="color/img02.tif"' in page
    assert len(page) < 400_000

    # the rest of the page: settings (changed in bold), model, boundaries, one bar per image, the legend
    assert re.search(r'<td class="k"[^>]*>n_components</td><td class="v changed"[^>]*>3</td>', page)
    assert re.search(r'<td class="k"[^>]*>max_iter</td><td class="v"[^>]*>400</td>', page)
    assert "chose 3 (stability k=2: 0.9, k=3: 0.95)" in page and "converged" in page
    assert "1 component(s) live on the boundaries" in page and "gradient_s1 0.90" in page and "5.0 %" in page
    assert "boundary-pixel step gave 1.2 % of the pixels" in page
    assert page.count("<title>img") == 30 * (3 + 1) and "One bar per image" in page    # 3 segments and a label
    hexes = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in PALETTE[:3]]
    assert all(f'fill="{h}"' in page for h in hexes)


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_many_images_give_box_plots_and_a_missing_summary_is_one_clear_error(tmp_path, monkeypatch):
    out = _fake_run(tmp_path / "many", n=75, flagged=())
    page = report.render_report(out, max_thumbnails=4)
    assert "75 images: one box per phase" in page and page.count("<title>img") == 0
    assert len(re.findall(r"<figure", page)) == 4 and "4 of 75 image(s) shown; 71 not shown" in page
    monkeypatch.setattr(report, "MAX_FLAGGED", 3)           # many flagged: a bounded number of them
    summary = json.loads((out / "summary.json").read_text())
    summary["warnings"][0]["images"] = [f"img{i:02d}" for i in range(10, 75)]
    io.atomic_write_text(out / "summary.json", json.dumps(summary))
    page = report.render_report(out, max_thumbnails=4)
    assert len(re.findall(r"<figure", page)) == 4 + 3 and "and 3 of the 65 flagged after them are shown" in page
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        report.write_report(tmp_path / "nothing")


# --- in a real browser ---------------------------------------------------------------------

def _screenshot(page_path: Path, png: Path) -> Image.Image:
    """``chromium --headless --screenshot`` of the page at 1280 x 2000."""
    profile = png.parent / "chromium-profile"
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,2000",
                          page_path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and png.is_file(), res.stderr[-2000:]
    return Image.open(png).convert("RGB")


def _browse(page_path: Path) -> dict:
    """Load the page in headless Chromium through the DevTools protocol (playwright); what it saw."""
    if CHROMIUM is None:
        missing(NO_CHROMIUM)
    sync_playwright = need("playwright.sync_api", "the browser test").sync_playwright
    seen = {"console": [], "page_errors": [], "failed": [], "requests": [], "dialogs": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 2000})
            tab.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}"))
            tab.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
            tab.on("requestfailed", lambda r: seen["failed"].append(r.url[:80]))
            tab.on("request", lambda r: seen["requests"].append(r.url[:80]))
            tab.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            tab.goto(page_path.resolve().as_uri(), wait_until="load")
            seen["images"] = tab.evaluate("""() => Array.from(document.images).map(i => ({
                complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, shown: i.clientWidth,
                src: i.currentSrc.slice(0, 22)}))""")
            seen["title"] = tab.title()
            seen["rects"] = tab.evaluate("() => document.querySelectorAll('#fractions svg rect').length")
            # the fractions across images (one row per phase) and the per-image table (one row per image)
            seen["stats_rows"] = tab.evaluate("() => document.querySelectorAll('#fractions table.stats tr').length")
            seen["image_rows"] = tab.evaluate("""() => Array.from(document.querySelectorAll('#table table.images tr'))
                .filter(r => r.querySelector('td')).map(r => r.querySelector('td').textContent)""")
            seen["height"] = tab.evaluate("() => document.documentElement.scrollHeight")
        finally:
            browser.close()
    return seen


def _assert_clean(seen: dict, n_images: int) -> None:
    assert seen["page_errors"] == [] and seen["dialogs"] == []
    assert [m for m in seen["console"] if m.startswith(("error", "warning"))] == [], seen["console"]
    assert seen["failed"] == []
    # the page itself, then data: URIs only: nothing fetched from a network or another file
    assert all(u.startswith(("file://", "data:")) for u in seen["requests"]), seen["requests"]
    assert sum(u.startswith("file://") for u in seen["requests"]) == 1
    assert len(seen["images"]) == n_images
    broken = [i for i in seen["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert broken == [] and all(i["src"].startswith("data:image/") and i["shown"] > 0 for i in seen["images"])


@needs_chromium
def test_report_of_a_real_run_renders_in_chromium_every_image_loads_no_console_error(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    path = report.write_report(run_dir)
    page = path.read_text(encoding="utf-8")
    assert _external_refs(page) == [] and "http://" not in page and "https://" not in page
    ids = [p.stem for p in sorted((run_dir / "labels").glob("*.png"))]
    assert len(ids) == 6 and all(f"<figcaption>{i}" in page for i in ids)
    assert all(html_escaped(c["name"]) in page for c in summary["components"])
    assert len(page) < 600_000

    seen = _browse(path)
    _assert_clean(seen, 1 + len(ids))                          # the fingerprint chart and one thumbnail each
    assert seen["title"] == f"bigseg report: {run_dir.name}"
    assert seen["rects"] >= len(ids) * len(summary["components"]) - len(ids)   # a stacked bar per image

    shot = _screenshot(path, tmp_path / "report.png")
    assert shot.size == (1280, 2000)
    pixels = np.asarray(shot).reshape(-1, 3)
    assert pixels.std() > 20                                 # not a blank page
    colour = report._phases(summary, run_dir, ids)[0]["colour"]          # phase 0's, as the page draws it
    first = np.array([int(colour[n:n + 2], 16) for n in (1, 3, 5)])
    assert (np.abs(pixels.astype(int) - first).max(axis=1) <= 2).mean() > 0.005     # the phases are drawn


@needs_chromium
def test_hostile_text_stays_text_in_chromium(tmp_path):
    out = _fake_run(tmp_path / "out")
    seen = _browse(report.write_report(out))
    _assert_clean(seen, 1 + 25)                      # no image from HOSTILE's <img src=x>, no script ran
    assert seen["title"] == "bigseg report: out" and seen["rects"] == 30 * 3


def _bar_pixels(page: str, out: Path) -> dict[str, int]:
    """Per thumbnail of an overlay: the near-white pixels of its picture part (above the legend). No tint of
    the palette is that bright, so they are a scale bar's and its label's."""
    from bigseg import viz

    counts = {}
    for figure in re.findall(r"<figure.*?</figure>", page, re.S):
        href = re.search(r'href="(overlay/[^"]+)"', figure)
        if not href:
            continue
        meta = viz.read_meta(out / href.group(1))
        with Image.open(out / href.group(1)) as full:
            share = meta["picture_height"] / full.height
        thumb = np.asarray(Image.open(_io.BytesIO(_data_uris(figure)[0][1])).convert("RGB"))
        picture = thumb[:int(thumb.shape[0] * share) - 2]
        counts[Path(href.group(1)).stem] = int((picture >= 230).all(axis=-1).sum())
    return counts


@needs_chromium
def test_a_report_with_pixel_sizes_shows_scale_bars_and_the_fractions_tables_in_chromium(run_dir, synth_dir,
                                                                                           tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(out), "-k", "3", *ARGS,
                                    "--set", "pixel_size=0.02"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    path = report.write_report(out)
    page = path.read_text(encoding="utf-8")
    seen = _browse(path)
    ids = sorted(p.stem for p in (out / "labels").glob("*.png"))
    _assert_clean(seen, 1 + len(ids))
    assert seen["stats_rows"] == 1 + 3                          # a header and one row per phase
    assert seen["image_rows"] == ids                            # every image, in natural order
    assert "mean area per image (µm²)" in page and 'href="phase_fractions_summary.csv"' in page
    assert all(f'href="overlay/{i}.png"' in page and f'href="labels/{i}.png"' in page for i in ids)
    # every thumbnail carries a scale bar here, and none where the pixel size is unknown
    with_bars = _bar_pixels(page, out)
    assert len(with_bars) == len(ids) and min(with_bars.values()) >= 60, with_bars
    without = _bar_pixels(report.write_report(run_dir).read_text(encoding="utf-8"), run_dir)
    assert len(without) == len(ids) and max(without.values()) <= 5, without


def test_images_are_listed_in_natural_order(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    io.atomic_write_text(out / "summary.json", json.dumps({"components": [{"name": "a"}, {"name": "b"}]}))
    io.atomic_write_text(out / "phase_fractions.csv", "image,a,b\nmicrograph10,0.5,0.5\nmicrograph2,0.25,0.75\n"
                                                       "Micrograph1,1,0\n")
    page = report.render_report(out)
    table = page[page.index('<section id="table">'):]
    assert [m for m in re.findall(r"<tr><td>([^<]+)</td>", table)] == ["Micrograph1", "micrograph2", "micrograph10"]
    assert re.findall(r"<figcaption>(\w+)", page) == ["Micrograph1", "micrograph2", "micrograph10"]
