"""PhaseSegmenter: the per-image path as a scikit-learn estimator, equal to the CLI bit for bit."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import bigseg
import bigseg.cli
from bigseg import config, io, regions, synth
from bigseg.estimator import NotFittedError, PhaseSegmenter, grey_array, memberships, segment_image
from bigseg.model import ModelError

from conftest import env_for_subprocess

#: quick settings shared by the CLI runs and the estimators they are compared with
QUICK = {"resize": "native", "sample_size": 6000, "max_iter": 200}


def _islands(n=2):
    return [img for img, _ in synth.family("islands", n, shape=(192, 256))]


def _write_pngs(folder: Path, images) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"islands{i:02d}.png")
        Image.fromarray((img * 255).round().astype(np.uint8)).save(paths[-1])
    return paths


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def fitted():
    """A segmenter fitted on two in-memory island images (one boundary component is refitted away)."""
    images = _islands()
    return PhaseSegmenter(n_components=3, **QUICK).fit(images), images


# --- (1) the CLI's labels, bit for bit -----------------------------------------------------------------

@pytest.mark.parametrize("data, sets, params", [
    # the demo set: 8-bit PNG, 16-bit TIFF and RGB JPEG with SEM data bars (crop_bottom auto)
    ("demo", [], {}),
    # islands: a boundary component, and features the run reads back rounded from store.zarr (without
    # store_features=True the estimator's float32 features move 28 and 14 of the 49,152 labels)
    ("islands", ["store_features=true"], {"store_features": True}),
], ids=["demo-formats-crop", "islands-stored-features"])
def test_predict_equals_cli_labels_bit_for_bit(data, sets, params, synth_dir, tmp_path):
    if data == "demo":
        src = synth_dir / "images"
    else:
        src = tmp_path / "images"
        _write_pngs(src, _islands())
    out = tmp_path / "out"
    args = ["run", "--input", str(src), "--out", str(out), "-k", "3", "--quiet"]
    for item in [f"{k}={v}" for k, v in QUICK.items()] + sets:
        args += ["--set", item]
    result = CliRunner().invoke(bigseg.cli.main, args)
    assert result.exit_code == 0, result.output

    seg = PhaseSegmenter.load(out / "model").set_params(**params)
    paths = io.find_images([src])
    assert len(paths) >= 2
    for path in paths:
        expected = _png(out / "labels" / f"{path.stem}.png")
        labels = seg.predict(path)
        assert labels.dtype == np.uint8 and labels.shape == expected.shape
        assert np.array_equal(labels, expected), f"{path.name}: {(labels != expected).sum()} pixels differ"

    # a fit on the same folder with the same settings is the CLI's fit
    again = PhaseSegmenter(**dict(seg.get_params(), **params)).fit(src)
    assert np.array_equal(again.model_.H, seg.model_.H)
    assert again.model_.transitions == seg.model_.transitions
    assert np.array_equal(again.predict(paths[0]), _png(out / "labels" / f"{paths[0].stem}.png"))


# --- (2) fit on arrays; what each method returns ---------------------------------------------------------

def test_fit_on_arrays_sets_the_fitted_attributes(fitted):
    seg, _ = fitted
    m = seg.model_
    assert seg.n_phases_ == m.n_phases == len(seg.components_)
    assert seg.components_.shape == (seg.n_phases_, seg.n_features_in_)
    np.testing.assert_array_equal(seg.components_, m.phase_H)
    assert seg.boundary_components_.shape == (len(m.transitions), seg.n_features_in_)
    assert list(seg.feature_names_in_) == m.feature_names and seg.n_features_in_ == len(m.feature_names)
    assert m.report["images"] == 2


def test_predict_transform_and_memberships_agree(fitted):
    seg, images = fitted
    image = images[1]
    labels = seg.predict(image)
    acts = seg.transform(image)
    proba = seg.predict_proba(image)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(seg.n_phases_))
    m = seg.model_
    assert proba.shape == (seg.n_phases_,) + image.shape and acts.shape == (len(m.phases),) + image.shape
    assert acts.dtype == proba.dtype == np.float32 and (acts >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, rtol=1e-5)
    all_acts, same_labels = segment_image(grey_array(image, seg._settings()), m, seg._settings())
    # native grid: no resampling, so the labels are the argmax of the phases' scores and memberships, after
    # the boundary pixels are settled; elsewhere, those of the activations as they are
    scores, settled_proba, before, after = regions.settled_maps(m, all_acts, seg._settings())
    kept = before == after
    assert np.array_equal(labels, scores.argmax(axis=0)) and np.array_equal(labels, after)
    assert np.array_equal(labels[kept], m.phase_scores(all_acts).argmax(axis=0)[kept])
    top2 = np.sort(proba, axis=0)[-2:]
    clear = top2[1] > top2[0]
    assert clear.mean() > 0.99
    assert np.array_equal(labels[clear], proba.argmax(axis=0)[clear])
    assert np.array_equal(same_labels, labels) and all_acts.shape[0] == m.n_components
    np.testing.assert_array_equal(settled_proba, proba)
    np.testing.assert_array_equal(m.phase_memberships(all_acts)[:, kept], proba[:, kept])
    np.testing.assert_array_equal(all_acts[m.phases], acts)


def test_phases_as_rows_label_by_the_winning_component():
    images = _islands()
    seg = PhaseSegmenter(n_components=3, **dict(QUICK, assignment="components")).fit(images)
    m = seg.model_
    assert m.centres is None
    all_acts, labels = segment_image(grey_array(images[1], seg._settings()), m, seg._settings())
    # where a phase wins outright, it is the label (but on a band the boundary-pixel step gave to a region);
    # boundary components label nothing
    _, _, before, after = regions.settled_maps(m, all_acts, seg._settings())
    kept = before == after
    assert 0 < (~kept).mean() < 0.2
    winner = all_acts.argmax(axis=0)
    phase_wins = np.isin(winner, m.phases) & kept
    assert np.array_equal(np.asarray(m.phases)[labels][phase_wins], winner[phase_wins])
    assert np.array_equal(labels[kept], seg.transform(images[1]).argmax(axis=0)[kept])
    np.testing.assert_array_equal(memberships(all_acts[m.phases])[:, kept], seg.predict_proba(images[1])[:, kept])


def test_a_resized_grid_gives_activations_there_and_labels_at_full_size():
    images = _islands()
    seg = PhaseSegmenter(n_components=3, **dict(QUICK, resize=128)).fit(images)
    assert seg.transform(images[0]).shape == (seg.n_phases_, 96, 128)
    assert seg.predict_proba(images[0]).shape == (seg.n_phases_, 96, 128)
    assert seg.predict(images[0]).shape == (192, 256)


def test_chunked_computation_equals_one_block(fitted):
    seg, images = fitted
    tiled = copy.deepcopy(seg).set_params(chunk_size=64)   # a dask graph of 3 x 4 chunks with halos
    np.testing.assert_array_equal(tiled.transform(images[0]), seg.transform(images[0]))
    assert np.array_equal(tiled.predict(images[0]), seg.predict(images[0]))


def test_in_memory_features_equal_the_lazy_ones():
    """image_features, which compare's baselines and feature_ceiling.py read, is lazy_features in one block:
    a resized grid, a native one cut into chunks with halos, and the extended bank."""
    from bigseg.estimator import image_features, lazy_features

    grey = (_islands(1)[0] * 255).round().astype(np.uint8)
    for over in ({"resize": [100, 140], "chunk_size": 64}, {"resize": "native", "chunk_size": 64},
                 {"resize": "native", "chunk_size": 96, "features": "extended"}):
        s = config.validate(over)
        pre, feats = image_features(grey, s)
        lazy = lazy_features(grey, s)
        assert lazy.npartitions > 1 and pre.shape == feats.shape[:2] == lazy.shape[:2]
        np.testing.assert_array_equal(feats, lazy.compute())


def test_a_tiled_tiff_is_read_as_the_array(fitted, tmp_path):
    import tifffile

    seg, images = fitted
    grey16 = (images[0] * 65535).round().astype(np.uint16)
    tifffile.imwrite(tmp_path / "tiled.tif", grey16, tile=(64, 64))
    assert io.is_chunked_input(tmp_path / "tiled.tif")
    no_crop = copy.deepcopy(seg).set_params(crop_bottom=0)
    assert np.array_equal(no_crop.predict(tmp_path / "tiled.tif"), seg.predict(grey16))


def test_rgb_arrays_are_read_as_their_luma(fitted):
    seg, images = fitted
    grey8 = (images[0] * 255).round().astype(np.uint8)
    rgb = np.repeat(grey8[..., None], 3, axis=2)
    assert np.array_equal(seg.predict(rgb), seg.predict(grey8))


# --- (3) parameters, scikit-learn style ---------------------------------------------------------------------

def test_get_params_holds_every_setting_as_given():
    blur = [1.0, 3.0]
    seg = PhaseSegmenter(n_components=4, blur_sigmas=blur, resize="native")
    params = seg.get_params()
    assert set(params) == set(config.OPTIONS)
    assert params["n_components"] == 4 and params["blur_sigmas"] is blur
    assert params["solver"] == config.OPTIONS["solver"].default
    assert seg.get_params(deep=False) == params
    assert repr(seg) == "PhaseSegmenter(n_components=4, resize='native', blur_sigmas=[1.0, 3.0])"


def test_set_params_and_clone():
    from sklearn.base import clone

    seg = PhaseSegmenter(n_components=3, resize="native")
    assert seg.set_params(spatial_weight=0.5, n_components=2) is seg
    assert seg.spatial_weight == 0.5 and seg.get_params()["n_components"] == 2
    twin = clone(seg)
    assert type(twin) is PhaseSegmenter and twin is not seg
    assert twin.get_params() == seg.get_params()
    with pytest.raises(ValueError, match="Invalid parameter 'spatial_wieght'.*did you mean 'spatial_weight'"):
        seg.set_params(spatial_wieght=1.0)
    with pytest.raises(TypeError, match="'resise'.*did you mean 'resize'"):
        PhaseSegmenter(resise=256)


def test_clone_of_a_fitted_segmenter_is_unfitted(fitted):
    from sklearn.base import clone

    seg, images = fitted
    twin = clone(seg)
    assert twin.get_params() == seg.get_params() and not hasattr(twin, "model_")
    with pytest.raises(NotFittedError, match="not fitted"):
        twin.predict(images[0])


def test_values_are_checked_when_used_not_when_set(fitted):
    seg = PhaseSegmenter(n_components=3, spatial_sweeps=-1)     # stored as given
    with pytest.raises(config.ConfigError, match="spatial_sweeps"):
        seg.fit(_islands(1))
    fitted_seg, images = fitted
    # a feature setting changed after the fit would compute other features than the model's
    other = copy.deepcopy(fitted_seg).set_params(blur_sigmas=[3.0, 8.0])
    with pytest.raises(config.ConfigError, match="blur_sigmas"):
        other.predict(images[0])


def test_physical_resize_needs_a_pixel_size():
    with pytest.raises(ValueError, match="image 0: resize is 'physical' but the pixel size is unknown"):
        PhaseSegmenter(n_components=3, resize="physical", target_pixel_size=0.1).fit(_islands(1))


def test_fit_takes_a_sequence_not_one_array():
    with pytest.raises(TypeError, match="sequence of images"):
        PhaseSegmenter(n_components=3, **QUICK).fit(_islands(1)[0])


# --- (4) save and load ----------------------------------------------------------------------------------------

def test_save_load_round_trip_predicts_the_same(fitted, tmp_path):
    seg, images = fitted
    seg.save(tmp_path / "model")
    back = PhaseSegmenter.load(tmp_path / "model")
    assert back.get_params() == seg.get_params()
    np.testing.assert_array_equal(back.model_.H, seg.model_.H)
    for image in images:
        assert np.array_equal(back.predict(image), seg.predict(image))
        np.testing.assert_array_equal(back.transform(image), seg.transform(image))


def test_save_keeps_the_segment_settings_of_now(fitted, tmp_path):
    seg, images = fitted
    uncoupled = copy.deepcopy(seg).set_params(spatial_weight=0.0)
    uncoupled.save(tmp_path / "model")
    back = PhaseSegmenter.load(tmp_path / "model")
    assert back.spatial_weight == 0.0
    assert np.array_equal(back.predict(images[0]), uncoupled.predict(images[0]))
    assert not np.array_equal(back.predict(images[0]), seg.predict(images[0]))


def test_a_model_saved_before_newer_keys_still_loads(fitted, tmp_path):
    seg, images = fitted
    folder = tmp_path / "model"
    seg.save(folder)
    meta = json.loads((folder / "model.json").read_text())
    for key in ("minibatch_fraction", "transition_share", "crop_bottom"):
        meta["settings"].pop(key)
    (folder / "model.json").write_text(json.dumps(meta))
    (folder / "fingerprints.png").unlink()
    back = PhaseSegmenter.load(folder)
    assert back.minibatch_fraction == config.OPTIONS["minibatch_fraction"].default
    assert np.array_equal(back.predict(images[0]), seg.predict(images[0]))


def test_load_of_a_damaged_model_names_the_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{")
    (tmp_path / "model" / "model.npz").write_bytes(b"")
    with pytest.raises(ModelError, match="model.json"):
        PhaseSegmenter.load(tmp_path / "model")


# --- (5) paths and arrays ---------------------------------------------------------------------------------------

def test_fit_on_paths_equals_fit_on_the_same_arrays(tmp_path):
    paths = _write_pngs(tmp_path / "images", _islands())
    arrays = [_png(p) for p in paths]
    by_path = PhaseSegmenter(n_components=3, crop_bottom=0, **QUICK).fit(paths)
    by_array = PhaseSegmenter(n_components=3, crop_bottom=0, **QUICK).fit(arrays)
    by_folder = PhaseSegmenter(n_components=3, crop_bottom=0, **QUICK).fit(iter([str(tmp_path / "images")]))
    for other in (by_array, by_folder):
        np.testing.assert_array_equal(other.model_.H, by_path.model_.H)
        np.testing.assert_array_equal(other.model_.scale_lo, by_path.model_.scale_lo)
        assert other.model_.transitions == by_path.model_.transitions
    assert np.array_equal(by_path.predict(paths[0]), by_array.predict(arrays[0]))


def test_arrays_are_cropped_only_by_a_number_of_rows(fitted):
    seg, images = fitted
    image = images[0]
    assert seg.crop_bottom == "auto" and seg.predict(image).shape == image.shape
    cropping = copy.deepcopy(seg).set_params(crop_bottom=12)
    assert cropping.predict(image).shape == (image.shape[0] - 12, image.shape[1])
    assert np.array_equal(cropping.predict(image), seg.predict(image[:-12]))


# --- (6) import bigseg stays light ---------------------------------------------------------------------------------

def test_import_bigseg_is_light_and_names_its_api():
    code = ("import sys, bigseg; heavy = [m for m in ('numpy', 'dask', 'sklearn', 'scipy', 'distributed', "
            "'xarray', 'pandas', 'zarr') if m in sys.modules]; print(heavy); print(sorted(bigseg.__all__)); "
            "print(callable(bigseg.load_settings), bigseg.PhaseSegmenter.__name__, 'PhaseSegmenter' in dir(bigseg))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env_for_subprocess()).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == str(sorted(["PhaseSegmenter", "Settings", "load_settings", "__version__"]))
    assert out[2] == "True PhaseSegmenter True"


def test_load_settings_gives_the_settings_config_load_reads(tmp_path):
    (tmp_path / "s.yaml").write_text("resize: native\nspatial_weight: 1.0\n")
    settings = bigseg.load_settings(tmp_path / "s.yaml")
    assert settings == config.load(tmp_path / "s.yaml")
    assert PhaseSegmenter(**settings).get_params()["spatial_weight"] == 1.0


def test_docstring_examples_run():
    import doctest

    import bigseg.estimator

    result = doctest.testmod(bigseg.estimator, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
