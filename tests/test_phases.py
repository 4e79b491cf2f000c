"""Named, stable phases: darkest first whatever the seed, names checked against the pixels, renamed in every
output, and pictures with legends, titles and colour bars."""

import csv
import json
import shutil

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from bigseg import config, export, features, fractions, model, phases, preprocess, regions, synth, viz
from bigseg.cli import main

NAMES = ["intensity", "gradient_s1", "laplacian_s1", "variance_w7", "blur_s2", "blur_s8"]


def _fit(images, **over):
    s = config.validate(dict({"resize": "native", "n_components": 3, "sample_size": 20000}, **over))
    params = features.feature_params(s)
    feats = [features.feature_block(preprocess.preprocess_image(img, s, img.shape), params) for img in images]
    arrays = [da.from_array(f, chunks=f.shape) for f in feats]
    return model.fit(arrays, features.feature_names(s), s, lambda objs: list(dask.compute(*objs, scheduler="sync")),
                     find_transitions=lambda H, lo, hi: regions.find_transitions(feats, H, lo, hi, s))


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- order -------------------------------------------------------------------------------------

def test_order_sorts_phases_by_their_pixels_intensity_and_puts_boundaries_last():
    rng = np.random.default_rng(0)
    H = np.abs(rng.random((4, 3))) + 0.1
    true_level = np.array([0.8, 0.2, 0.5])          # rows 0-2 are phases; row 3 a boundary
    W = np.zeros((300, 4))
    W[np.arange(300), np.arange(300) % 3] = 1.0     # each pixel won by one phase
    X = rng.random((300, 3)) * 0.01
    X[:, 0] += true_level[np.arange(300) % 3]       # intensity column: the phase's level
    rows, profiles, shares = phases.order(X, W, H, [3], ["intensity", "gradient_s1", "laplacian_s1"])
    assert rows == [1, 2, 0, 3]
    assert np.all(np.diff(profiles[:, 0]) > 0) and np.allclose(shares, 1 / 3)


def test_intensity_column_is_found_by_name_else_the_first():
    assert phases.brightness_column(["gradient_s1", "intensity"]) == 1
    assert phases.brightness_column(["blur_s2", "gradient_s1"]) == 0


def test_two_fits_with_other_seed_and_image_order_give_the_same_order_darkest_first():
    images = [img for img, _ in synth.family("pores", 2, shape=(160, 192))]
    a = _fit(images, random_state=0)
    b = _fit(images[::-1], random_state=7)
    for m in (a, b):
        levels = [p["pixel_means"]["intensity"] for p in m.report["phases"]]
        assert levels == sorted(levels) and len(levels) == m.n_phases == 3
        assert m.transitions == list(range(m.n_phases, m.n_components))
    # the same phases, found twice: row i of one fit is most like row i of the other
    cos = model.normalise_rows(a.phase_H) @ model.normalise_rows(b.phase_H).T
    assert list(cos.argmax(axis=1)) == [0, 1, 2] and cos.diagonal().min() > 0.98
    assert a.phase_names == b.phase_names


# --- names -------------------------------------------------------------------------------------

def test_a_laplacian_component_on_mid_grey_pixels_is_not_called_dark_smooth():
    H = np.array([[0.70, 0.05, 0.10, 0.05, 0.70, 0.70],    # a bright-weighted fingerprint
                  [0.03, 0.03, 0.96, 0.03, 0.05, 0.05],    # 96 % Laplacian
                  [0.60, 0.30, 0.05, 0.30, 0.60, 0.60]])
    # what each component's pixels are: the Laplacian one sits on mid-grey, rough pixels
    profiles = np.array([[0.15, 0.10, 0.45, 0.05, 0.15, 0.15],
                         [0.50, 0.55, 0.80, 0.45, 0.50, 0.50],
                         [0.85, 0.10, 0.50, 0.05, 0.85, 0.85]])
    # from H rows alone the names say what those rows show, in plain words
    assert phases.fingerprint_names(H, NAMES)[1] == "dark, smooth, high blobs/curvature"
    names = phases.describe(profiles, NAMES)
    assert names == ["dark, smooth", "mid, textured, high blobs/curvature", "bright, smooth"]
    # a feature the pixels do not show above the other phases' is left out
    flat = profiles.copy()
    flat[:, 2] = 0.5
    assert phases.describe(flat, NAMES)[1] == "mid, textured"


def test_names_grade_five_levels_number_twins_and_skip_texture_when_alike():
    levels = np.linspace(0.1, 0.9, 5)
    profiles = np.tile([0.0, 0.2, 0.5, 0.2, 0.0, 0.0], (5, 1))
    profiles[:, 0] = levels
    assert phases.describe(profiles, NAMES) == ["darkest", "dark", "mid", "bright", "brightest"]
    twins = np.array([[0.5, 0.1, 0.5, 0.1, 0.5, 0.5], [0.51, 0.1, 0.5, 0.1, 0.5, 0.5]])
    assert phases.describe(twins, NAMES) == ["mid (1)", "mid (2)"]
    assert phases.describe(profiles[:1], NAMES) == ["all pixels"]


def test_every_feature_has_a_plain_words_label():
    s = config.validate({"features": list(config.FEATURE_NAMES)})
    labels = {n: features.feature_label(n) for n in features.feature_names(s)}
    assert labels["intensity"] == "brightness" and labels["laplacian_s1"] == "blobs/curvature, 1 px"
    assert labels["variance_w7"] == "texture, 7 px window" and labels["gradient_s1"] == "edge strength, 1 px"
    assert labels["structure_max_s1_4"] == "edges and corners, max, 1-4 px"
    assert len(set(labels.values())) == len(labels)                    # no two channels read alike
    assert not any("_" in label for label in labels.values())          # no code name left in a label


def _check_name_against_fingerprint(name: str, i: int, values: np.ndarray, names: list, n_named: int) -> None:
    """Every word of phase ``i``'s name is what its fingerprint bars (``values``, the chart's) show."""
    assert not any(n in name for n in names if "_" in n), name            # plain words, no channel names
    words = name.split(" (")[0].split(", ")
    col = phases.brightness_column(names)
    named = slice(len(values) - n_named, None)
    brightness = values[named, col]
    rank = np.argsort(np.argsort(brightness))[i - (len(values) - n_named)]
    order = ["darkest", "dark", "mid", "bright", "brightest"]
    if words[0] in ("darkest", "brightest"):
        assert rank == (0 if words[0] == "darkest" else n_named - 1), (name, brightness)
    texture_cols = [j for j, n in enumerate(names) if n.startswith(("gradient", "variance", "local_std", "structure"))]
    texture = values[named][:, texture_cols].mean(axis=1)
    mine = texture[i - (len(values) - n_named)]
    if "smooth" in words:
        assert mine < texture.max(), (name, texture)
    if "textured" in words:
        assert mine > texture.min(), (name, texture)
    for word in words[1:]:
        if word.startswith("high "):
            kind = word[len("high "):]
            cols = [j for j, n in enumerate(names) if features.feature_kind(n).word == kind]
            assert cols, (name, kind)
            # the phase's bar of that kind is above zero and the highest of the named phases'
            shown = [values[i, j] > 0 and values[i, j] >= values[named, j].max() for j in cols]
            assert any(shown), (name, values[:, cols])
    assert words[0] in order, name


def _check_brightness_words(names: list, values: np.ndarray, feature_names: list) -> None:
    """A brighter word is a higher brightness bar: the words rank the phases as the chart does."""
    order = ["darkest", "dark", "mid", "bright", "brightest"]
    col = phases.brightness_column(feature_names)
    ranks = [order.index(n.split(",")[0].split(" (")[0]) for n in names]
    for a in range(len(names)):
        for b in range(len(names)):
            if ranks[a] < ranks[b]:
                assert values[a, col] < values[b, col], (names, values[:, col])


@pytest.mark.parametrize("family, k", [("islands", 3), ("pores", 3), ("lamellar", 3), ("textured", 3)])
def test_each_generated_name_says_what_its_fingerprint_chart_shows(family, k):
    images = [img for img, _ in synth.family(family, 2, shape=(160, 192))]
    m = _fit(images, n_components=k)
    values = phases.fingerprint_values(m)
    assert values.shape == (m.n_phases, len(m.feature_names))
    void = m.void_below is not None
    for i, name in enumerate(m.phase_names):
        if void and i == 0:
            continue
        _check_name_against_fingerprint(name, i, values, m.feature_names, m.n_phases - int(void))
    _check_brightness_words(m.phase_names[int(void):], values[int(void):], m.feature_names)
    # the chart draws exactly these values
    png = m.fingerprint_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_crafted_names_say_what_their_fingerprints_show():
    rng = np.random.default_rng(3)
    for _ in range(50):
        profiles = rng.random((4, len(NAMES)))
        names = phases.describe(profiles, NAMES)
        values = phases.contrast(profiles)
        for i, name in enumerate(names):
            _check_name_against_fingerprint(name, i, values, NAMES, 4)
        _check_brightness_words(names, values, NAMES)


def test_csv_names_are_one_token_each_unique_and_never_a_formula():
    assert phases.csv_names(["dark, smooth", "Dark  smooth", "image", "=SUM(A1)", 'a"b']) == \
        ["dark_smooth", "Dark_smooth_2", "image_2", "_=SUM(A1)", "a_b"]


def test_model_keeps_names_and_checks_them_on_load(tmp_path):
    m = _fit([img for img, _ in synth.family("pores", 1, shape=(128, 128))], sample_size=5000)
    m.phase_names = ["pores", "matrix", "carbide"]
    m.save(tmp_path / "m")
    assert model.Model.load(tmp_path / "m").phase_names == ["pores", "matrix", "carbide"]
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    for bad in (["a", "b"], ["a", "", "c"], ["a", "A", "c"], "abc", ["a", "b\nc", "d"]):
        meta_path.write_text(json.dumps(dict(meta, phase_names=bad)))
        with pytest.raises(model.ModelError, match="field 'phase_names'"):
            model.Model.load(tmp_path / "m")
    # models saved before names were kept get names from their fingerprints
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "phase_names"}))
    old = model.Model.load(tmp_path / "m")
    assert len(old.phase_names) == 3 and all(old.phase_names)


def test_phase_names_setting_is_an_output_setting_models_never_carry():
    opt = config.OPTIONS["phase_names"]
    assert opt.role is None and opt.stage == "segment" and opt.default is None
    assert "phase_names" not in config.MODEL_KEYS
    assert config.validate({"phase_names": ["a", "b"], "n_components": 2})["phase_names"] == ["a", "b"]
    for bad in (["a", "a"], [], ["a", "b", "c"], ["x", 3]):
        with pytest.raises(config.ConfigError, match="phase_names"):
            config.validate({"phase_names": bad, "n_components": 2})


# --- a run, renamed ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("phases")
    images, _ = synth.write_family(base / "data", "pores", 2, seed=0, shape=(160, 192))
    out = base / "out"
    res = _invoke("run", "--input", images, "--out", out, "-k", "3", "--quiet", "--set", "resize=native",
                  "--set", "sample_size=20000")
    assert res.exit_code == 0, res.output
    return out, images


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _check_legend(path, names):
    """The overlay's swatches have the phase colours and its legend has text where the layout puts it."""
    meta = viz.read_meta(path)
    rgb = _rgb(path)
    assert meta["names"] == names
    layout = viz.legend_layout(names, rgb.shape[1])
    assert rgb.shape[0] == meta["picture_height"] + layout["height"]
    band = rgb[meta["picture_height"]:]
    for i, entry in enumerate(layout["entries"]):
        x0, y0, x1, y1 = entry["swatch"]
        assert (band[y0:y1 + 1, x0:x1 + 1] == viz.PALETTE[i]).all()
        tx, ty = entry["text_xy"]
        text = band[ty:ty + layout["font_size"], tx:tx + 3 * layout["font_size"]]
        assert (text.max(axis=-1) < 100).any(), f"no text drawn for phase {i}"


def test_overlay_is_the_micrograph_with_a_legend(run_dir):
    out, images = run_dir
    names = json.loads((out / "model" / "model.json").read_text())["phase_names"]
    for src in sorted(images.iterdir()):
        path = out / "overlay" / f"{src.stem}.png"
        labels = np.asarray(Image.open(out / "labels" / f"{src.stem}.png"))
        meta = viz.read_meta(path)
        assert meta["kind"] == "overlay" and meta["picture_height"] == labels.shape[0]
        assert _rgb(path).shape[1] == labels.shape[1]
        _check_legend(path, names)
        # the picture is the grey image, tinted by the labels
        picture = _rgb(path)[:labels.shape[0]].astype(int)
        tint = viz.PALETTE[labels].astype(int)
        assert np.corrcoef(picture[..., 0].ravel(), tint[..., 0].ravel())[0, 1] > 0.3


def test_activation_panels_have_titles_and_a_colour_bar(run_dir):
    out, _ = run_dir
    path = next((out / "activations").glob("*.png"))
    meta = viz.read_meta(path)
    idx = np.asarray(Image.open(path))
    assert Image.open(path).mode == "P" and meta["kind"] == "activations" and len(meta["names"]) == 3
    title = idx[:meta["title_height"]]
    assert set(np.unique(title)) == {viz.TEXT_INDEX, viz.WHITE_INDEX}
    w, gap = meta["panel_width"], meta["gap"]
    for i in range(3):      # a title over each panel
        assert (title[:, i * (w + gap): i * (w + gap) + w] == viz.TEXT_INDEX).any()
    # the colour bar: one row running through the viridis levels, dark to bright
    rows = [r for r in idx[meta["title_height"]:] if r[5:-5].min() == 0 and r[5:-5].max() == 254]
    bar = rows[-1]
    inner = bar[bar < 255]
    assert inner[0] == 0 and inner[-1] == 254 and np.all(np.diff(inner.astype(int)) >= 0)


def test_rename_rewrites_model_summary_csv_and_legends(run_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_dir[0], out)
    labels_before = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    from bigseg import store

    assert store.rename_phases(store.open_root(out / "store.zarr"), ["x", "y", "z"]) > 0   # the store has names
    res = _invoke("rename", out, "0=pores", "2=γ′ carbide")
    assert res.exit_code == 0, res.output
    names = json.loads((out / "model" / "model.json").read_text())["phase_names"]
    assert names[0] == "pores" and names[2] == "γ′ carbide"
    assert model.Model.load(out / "model").phase_names == names
    header = next(csv.reader(open(out / "phase_fractions.csv")))
    assert header == fractions.image_header(["pores", phases.csv_names(names)[1], "γ′_carbide"])
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["components"]] == names
    # the fractions across images follow: summary.json and the collection's table
    assert [p["phase"] for p in summary["fractions"]["phases"]] == names
    with open(out / "phase_fractions_summary.csv", newline="") as fh:
        assert [r["phase"] for r in csv.DictReader(fh)] == names
    for path in (out / "overlay").glob("*.png"):
        _check_legend(path, names)
    for path in (out / "activations").glob("*.png"):
        assert viz.read_meta(path)["names"] == names
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == labels_before   # no label moved
    # the store's label and membership metadata already carry the names: nothing left to rename there
    assert store.rename_phases(store.open_root(out / "store.zarr"), names) == 0


@pytest.mark.parametrize("args, words", [(["7=x"], "no phase 7"), (["0=a", "1=A"], "both named"),
                                         (["0=a", "0=b"], "twice"), (["matrix"], "INDEX=NAME")])
def test_a_bad_rename_fails_in_one_line_and_changes_nothing(run_dir, tmp_path, args, words):
    out = tmp_path / "out"
    shutil.copytree(run_dir[0], out)
    before = (out / "model" / "model.json").read_text(), (out / "phase_fractions.csv").read_text()
    res = _invoke("rename", out, *args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], \
        res.output
    assert ((out / "model" / "model.json").read_text(), (out / "phase_fractions.csv").read_text()) == before


def test_the_phase_names_setting_names_a_resumed_run_without_recomputing(run_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_dir[0], out)
    labels_before = {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    res = _invoke("run", "--input", run_dir[1], "--out", out, "-k", "3", "--quiet", "--set", "resize=native",
                  "--set", "sample_size=20000", "--set", "phase_names=[pore, matrix, rim]")
    assert res.exit_code == 0, res.output
    assert "0 segmented by this run" in res.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()} == labels_before
    assert next(csv.reader(open(out / "phase_fractions.csv"))) == fractions.image_header(["pore", "matrix", "rim"])
    assert model.Model.load(out / "model").phase_names == ["pore", "matrix", "rim"]
    for path in (out / "overlay").glob("*.png"):
        _check_legend(path, ["pore", "matrix", "rim"])
    # a count that is not the model's is one line
    res = _invoke("run", "--input", run_dir[1], "--out", out, "-k", "3", "--quiet", "--set", "resize=native",
                  "--set", "sample_size=20000", "--set", "phase_names=[a, b]")
    assert res.exit_code != 0 and "phase_names: 2 name(s) for 3 phase(s)" in res.output


# --- exports of a montage ---------------------------------------------------------------------

def test_a_montage_gets_a_downsampled_overlay(tmp_path):
    h, w, k = 2100, 300, 2
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    labels = root.create_array("labels", shape=(h, w), chunks=(512, 512), dtype="uint8")
    labels[...] = (np.arange(w)[None, :] >= w // 2).astype(np.uint8).repeat(h, axis=0)
    acts = root.create_array("acts", shape=(k, h, w), chunks=(k, 512, 512), dtype="float32")
    acts[...] = np.stack([1 - labels[...], labels[...]]).astype(np.float32)
    grey = root.create_array("grey", shape=(h, w), chunks=(512, 512), dtype="uint16")
    grey[...] = np.linspace(0, 60000, h * w).reshape(h, w).astype(np.uint16)
    export.export_large(labels, acts, tmp_path, "big", [0, 1], names=["left", "right"], grey=grey)
    path = tmp_path / "overlay" / "big.png"
    meta = viz.read_meta(path)
    assert meta["picture_height"] == 1050 and _rgb(path).shape[1] == 150          # stride 2: at most 2048
    _check_legend(path, ["left", "right"])
