"""PhaseSegmenter: the per-image path as a scikit-learn estimator, equal to the CLI bit for bit."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
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


def test_a_resized_grid_gives_activations_there_and_labels_and_memberships_at_full_size():
    images = _islands()
    seg = PhaseSegmenter(n_components=3, **dict(QUICK, resize=128)).fit(images)
    assert seg.transform(images[0]).shape == (seg.n_phases_, 96, 128)
    labels, proba = seg.predict(images[0]), seg.predict_proba(images[0])
    # predict and predict_proba answer on one grid, the image's
    assert labels.shape == (192, 256) and proba.shape == (seg.n_phases_, 192, 256) and proba.dtype == np.float32
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, rtol=1e-5)
    top2 = np.sort(proba, axis=0)[-2:]
    clear = top2[1] > top2[0] + 0.1
    assert clear.mean() > 0.8 and np.array_equal(labels[clear], proba.argmax(axis=0)[clear])


def test_chunked_computation_equals_one_block(fitted):
    seg, images = fitted
    tiled = copy.deepcopy(seg).set_params(chunk_size=64)   # a dask graph of 3 x 4 chunks with halos
    np.testing.assert_array_equal(tiled.transform(images[0]), seg.transform(images[0]))
    assert np.array_equal(tiled.predict(images[0]), seg.predict(images[0]))


def test_in_memory_features_equal_the_lazy_ones():
    """image_features, which compare's baselines read, is lazy_features in one block:
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


def test_rgb_arrays_named_by_channel_axis_are_read_as_their_luma(fitted):
    seg, images = fitted
    grey8 = (images[0] * 255).round().astype(np.uint8)
    rgb = np.repeat(grey8[..., None], 3, axis=2)
    assert np.array_equal(seg.predict(rgb, channel_axis=-1), seg.predict(grey8))
    rgba = np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], axis=2)
    assert np.array_equal(seg.predict(rgba, channel_axis=2), seg.predict(grey8))
    # channels first, named as such
    np.testing.assert_array_equal(seg.predict_proba(np.moveaxis(rgb, 2, 0), channel_axis=0), seg.predict_proba(grey8))
    refit = PhaseSegmenter(**seg.get_params()).fit([rgb, np.repeat(grey8[..., None], 3, axis=2)], channel_axis=-1)
    assert refit.n_phases_ >= 2


# --- (2b) stacks and lists: one answer per image -----------------------------------------------------------

def test_a_list_or_iterable_of_images_gives_a_list_of_maps(fitted, tmp_path):
    seg, images = fitted
    one = [seg.predict(img) for img in images]
    for many in (images, tuple(images), iter(images), (img for img in images)):
        labels = seg.predict(many)
        assert isinstance(labels, list) and len(labels) == 2
        for got, expected in zip(labels, one):
            assert np.array_equal(got, expected)
    proba, acts = seg.predict_proba(images), seg.transform(images)
    assert len(proba) == len(acts) == 2
    np.testing.assert_array_equal(proba[1], seg.predict_proba(images[1]))
    np.testing.assert_array_equal(acts[1], seg.transform(images[1]))
    # paths and arrays mixed, in order; a single path is one image
    paths = _write_pngs(tmp_path / "images", images)
    mixed = seg.predict([paths[0], _png(paths[1])])
    assert np.array_equal(mixed[0], seg.predict(paths[0])) and np.array_equal(mixed[1], seg.predict(_png(paths[1])))
    assert isinstance(seg.predict(str(paths[0])), np.ndarray)
    assert seg.predict([]) == []


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_3d_stack_is_refused_with_one_line_not_read_as_colour(fitted, n):
    """A stack of 2, 3 or 4 images once came back as image 0's map, or blended into one grey image as RGB."""
    seg, images = fitted
    stack = np.stack([images[i % 2] for i in range(n)])
    for method in (seg.predict, seg.predict_proba, seg.transform):
        with pytest.raises(ValueError, match=r"^image: a 3-D array of shape \(%d, 192, 256\) is a stack or a colour "
                                             r"image; pass a stack as a list of 2-D images \(list\(stack\)\), a "
                                             r"colour image with channel_axis=-1$" % n):
            method(stack)
    # colour-shaped (last axis 3 or 4) but not named as colour: refused the same way
    with pytest.raises(ValueError, match="3-D array of shape"):
        seg.predict(np.moveaxis(stack, 0, -1))
    with pytest.raises(ValueError, match="3-D array of shape"):
        PhaseSegmenter(**seg.get_params()).fit([np.moveaxis(stack, 0, -1)])
    # a list of the stack's images is what a stack means
    labels = seg.predict(list(stack))
    assert len(labels) == n and np.array_equal(labels[1], seg.predict(images[1]))


def test_channel_axis_must_name_a_colour_axis(fitted):
    seg, images = fitted
    stack = np.stack(images)
    with pytest.raises(ValueError, match=r"^image: channel_axis=-1 has 256 entries in an array of shape "
                                         r"\(2, 192, 256\); a colour axis has 3 \(RGB\) or 4 \(RGBA\)$"):
        seg.predict(stack, channel_axis=-1)
    with pytest.raises(ValueError, match="channel_axis=-1 needs a 3-D colour image"):
        seg.predict(images[0], channel_axis=-1)
    with pytest.raises(ValueError, match="channel_axis must be an axis"):
        seg.predict(np.repeat(images[0][..., None], 3, axis=2), channel_axis=3)
    with pytest.raises(ValueError, match=r"^image 1: expected a 2-D grey image"):
        seg.predict([images[0], images[0][0]])


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
    with pytest.raises(TypeError, match="unexpected keyword argument 'resise'"):
        PhaseSegmenter(resise=256)


def test_clone_of_a_fitted_segmenter_is_unfitted(fitted):
    from sklearn.base import clone

    seg, images = fitted
    twin = clone(seg)
    assert twin.get_params() == seg.get_params() and not hasattr(twin, "model_")
    with pytest.raises(NotFittedError, match="not fitted"):
        twin.predict(images[0])


def test_the_signature_is_the_settings_schema():
    """One keyword per setting, with the schema's default (a list default as a tuple): they cannot drift.
    A key added to bigseg/config.py OPTIONS needs the same keyword in PhaseSegmenter.__init__."""
    import inspect

    params = inspect.signature(PhaseSegmenter).parameters
    assert list(params) == ["n_components"] + [k for k in config.OPTIONS if k != "n_components"]
    assert all(p.kind is p.KEYWORD_ONLY for name, p in params.items() if name != "n_components")
    for key, option in config.OPTIONS.items():
        default = params[key].default
        assert default == (tuple(option.default) if isinstance(option.default, list) else option.default), key
        assert config.validate({key: default})[key] == option.default, key
    assert PhaseSegmenter().get_params() == {k: params[k].default for k in params}


def test_not_fitted_is_scikit_learns_not_fitted(fitted):
    import pickle

    from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    from sklearn.utils.validation import check_is_fitted

    seg, images = fitted
    assert issubclass(NotFittedError, SklearnNotFittedError)
    assert pickle.loads(pickle.dumps(NotFittedError("x"))).__class__ is NotFittedError
    unfitted = PhaseSegmenter(n_components=3)
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(unfitted)
    for method in (unfitted.predict, unfitted.predict_proba, unfitted.transform, unfitted.save):
        with pytest.raises(SklearnNotFittedError, match="not fitted yet: call fit"):
            method(images[0]) if method != unfitted.save else method("never-written")
    check_is_fitted(seg)        # no error
    check_is_fitted(seg, ["model_", "components_", "n_phases_"])


class _AsTabular(PhaseSegmenter):
    """PhaseSegmenter claiming a ``(samples, features)`` input: scikit-learn's check_estimator runs no check at
    all for an estimator whose tags say it takes no such array (PhaseSegmenter's say so: it takes images), so
    this twin lets it run every check, and the ones that feed such arrays are expected to fail."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags


#: why each of scikit-learn's checks that fails here does: all of them fit on a (samples, features) array,
#: which PhaseSegmenter.fit refuses (it takes a list of images; a 2-D array is one picture, far smaller than
#: the features' halo). The checks that do apply pass (SKLEARN_CHECKS_PASSING); their image equivalents
#: (fit returns self and leaves its parameters as given, pickling, idempotent fits, check_is_fitted) are
#: tested with images in this file.
_TABULAR = "fits on a (samples, features) array; fit takes a list of images"
SKLEARN_EXPECTED_FAILURES = {name: _TABULAR for name in (
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_complex_data", "check_dtype_object",
    "check_estimators_empty_data_messages", "check_pipeline_consistency", "check_estimators_nan_inf",
    "check_estimator_sparse_tag", "check_estimator_sparse_array", "check_estimator_sparse_matrix",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array",
    "check_transformer_general", "check_transformer_preserve_dtypes", "check_transformer_n_iter",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit1d", "check_fit2d_predict1d")}
SKLEARN_CHECKS_PASSING = {
    "check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types", "check_estimator_repr",
    "check_no_attributes_set_in_init", "check_estimators_unfitted", "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order", "check_transformers_unfitted", "check_parameters_default_constructible",
    "check_get_params_invariance", "check_set_params"}


def test_scikit_learns_own_checks():
    from sklearn.utils import get_tags
    from sklearn.utils.estimator_checks import check_estimator

    tags = get_tags(PhaseSegmenter())
    assert tags.requires_fit and not tags.non_deterministic and not tags.input_tags.two_d_array
    assert tags.transformer_tags is not None and not tags.target_tags.required
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(_AsTabular(n_components=2, resize="native", sample_size=1000),
                                  expected_failed_checks=SKLEARN_EXPECTED_FAILURES, on_fail=None, on_skip=None)
    status = {}
    for r in results:
        status.setdefault(r["check_name"], set()).add(r["status"])
    failed = {name: [str(r["exception"])[:200] for r in results if r["check_name"] == name]
              for name, found in status.items() if "failed" in found}
    assert not failed
    assert {name for name, found in status.items() if found == {"passed"}} == SKLEARN_CHECKS_PASSING
    # an expected failure that passes is a list gone stale
    assert {name for name, found in status.items() if "xfail" in found} == set(SKLEARN_EXPECTED_FAILURES)


def test_fit_returns_self_and_keeps_its_parameters_as_given_and_pickles():
    """The image equivalents of scikit-learn's fit checks that feed (samples, features) arrays."""
    import pickle

    from sklearn.base import clone

    images = _islands()
    seg = PhaseSegmenter(n_components=3, blur_sigmas=[2.0, 8.0], **QUICK)
    before = copy.deepcopy(seg.get_params())
    blur = seg.blur_sigmas
    assert seg.fit(images) is seg
    assert seg.get_params() == before and seg.blur_sigmas is blur
    assert not any(k.startswith("_") or k.endswith("_") for k in vars(clone(seg)))
    again = clone(seg).fit(images)              # fitting twice gives the same model
    np.testing.assert_array_equal(again.model_.H, seg.model_.H)
    back = pickle.loads(pickle.dumps(seg))
    assert np.array_equal(back.predict(images[0]), seg.predict(images[0]))


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
    # the loaded estimator's resize and CLAHE tile are the scale its model carries (the fit's images')
    scale = {"resize": seg.model_.settings["resize"],
             "clahe_kernel_size": tuple(seg.model_.settings["clahe_kernel_size"])}
    assert back.get_params() == dict(seg.get_params(), **scale)
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
    for key in ("minibatch_fraction", "transition_share"):
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
    assert out[1] == str(sorted(["PhaseSegmenter", "Settings", "load_settings", "fractions_table", "fractions_summary",
                                 "__version__"]))
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
