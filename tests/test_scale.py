"""A model carries the scale it was fitted at: a montage of its frames is segmented as the frames are."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from bigseg import PhaseSegmenter, config, estimator, preprocess, synth
from bigseg.model import Model

FRAME = (256, 320)
#: the frames' longer side goes to 160 pixels: a native-to-processing factor of 0.5
FIT = dict(n_components=3, resize=160, sample_size=8000, max_iter=200, random_state=0)
#: pixels this far from a seam between frames may differ (the filters' and CLAHE's reach, in native pixels)
SEAM_BAND = 24


def _frames_and_montage():
    frames = [img for img, _ in synth.family("islands", 4, seed=3, shape=FRAME)]
    montage = np.block([[frames[0], frames[1]], [frames[2], frames[3]]])
    return frames, montage


def _agreement_away_from_seams(frame_labels, montage_labels) -> float:
    """Share of the montage's pixels, away from the seams, labelled as in their own frame."""
    h, w = FRAME
    same = np.block([[frame_labels[0], frame_labels[1]], [frame_labels[2], frame_labels[3]]]) == montage_labels
    away = np.ones(same.shape, bool)
    away[h - SEAM_BAND:h + SEAM_BAND] = False
    away[:, w - SEAM_BAND:w + SEAM_BAND] = False
    return float(same[away].mean())


@pytest.fixture(scope="module")
def fitted():
    frames, montage = _frames_and_montage()
    return PhaseSegmenter(**FIT).fit(frames), frames, montage


def test_a_montage_of_the_frames_gets_the_frames_labels(fitted):
    seg, frames, montage = fitted
    scale = seg.model_.settings["resize"]
    assert scale == {"factor": 0.5, "um_per_pixel": None}
    # scikit-image's default tile of the frames' processing grid (128 x 160), carried in processing pixels
    assert seg.model_.settings["clahe_kernel_size"] == [16, 20]
    frame_labels = [seg.predict(f) for f in frames]
    assert len(np.unique(np.concatenate([f.ravel() for f in frame_labels]))) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no scale warning: no image here has a pixel size
        montage_labels = seg.predict(montage)
    assert montage_labels.shape == montage.shape
    assert _agreement_away_from_seams(frame_labels, montage_labels) >= 0.97

    # what bigseg did before models carried their scale: the montage shrunk to 160 pixels like a frame, 4x
    # smaller than its frames, with a CLAHE tile of 1/8 of that grid; the test tells it apart
    old = dataclasses.replace(seg.model_, settings=dict(seg.model_.settings, resize=160, clahe_kernel_size=None))
    settings = config.validate(dict(old.settings, crop_bottom=0))
    old_labels = estimator.segment_image(montage, old, settings)[1]
    assert _agreement_away_from_seams(frame_labels, old_labels) < 0.9


def test_the_scale_travels_in_the_model_file_and_crop_does_not(fitted, tmp_path):
    seg, frames, montage = fitted
    seg.set_params(crop_bottom=12)
    seg.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "model.json").read_text())["settings"]
    assert saved["resize"] == {"factor": 0.5, "um_per_pixel": None} and "crop_bottom" not in saved
    loaded = PhaseSegmenter.load(tmp_path / "model")
    assert loaded.crop_bottom == "auto"          # the loaded estimator crops as it is told, not as the fit did
    np.testing.assert_array_equal(loaded.predict(montage), seg.set_params(crop_bottom="auto").predict(montage))
    # a model saved when a data bar's height travelled with it loads, and the height is not applied
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    meta["settings"]["crop_bottom"] = 65
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    assert "crop_bottom" not in Model.load(tmp_path / "model").settings


def test_bigseg_segment_uses_the_models_scale_and_its_own_crop(fitted, tmp_path):
    """``bigseg segment MODEL`` on a montage file: the model's scale, no crop the model's images had."""
    from click.testing import CliRunner

    from bigseg.cli import main

    seg, frames, montage = fitted
    seg.save(tmp_path / "model")
    (tmp_path / "new").mkdir()
    Image.fromarray((montage * 255).round().astype(np.uint8)).save(tmp_path / "new" / "montage.png")
    res = CliRunner().invoke(main, ["segment", str(tmp_path / "model"), "--input", str(tmp_path / "new"),
                                    "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    labels = np.asarray(Image.open(tmp_path / "out" / "labels" / "montage.png"))
    assert labels.shape == montage.shape                       # no row cropped
    frame_labels = [seg.predict((f * 255).round().astype(np.uint8)) for f in frames]
    assert _agreement_away_from_seams(frame_labels, labels) >= 0.97
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scale"]["resize"] == {"factor": 0.5, "um_per_pixel": None}


def test_frames_of_different_pixel_sizes_come_to_one_scale():
    # MetalDAM's two frame sizes at their pixel sizes: 1024 px at 0.0294 um, 1280 px at 0.02 um
    shapes, sizes = [(703, 1024), (703, 1024), (895, 1280)], [0.0294, 0.0294, 0.02]
    scale, kernel = preprocess.collection_scale(shapes, sizes, 512)
    assert scale == {"factor": 0.5, "um_per_pixel": pytest.approx(0.0588)}
    grids = [preprocess.target_shape(s, scale, px) for s, px in zip(shapes, sizes)]
    assert grids[0] == (352, 512)                              # the reference frames keep today's grid
    widths_um = [g[1] * scale["um_per_pixel"] for g in grids]
    assert widths_um[2] == pytest.approx(1280 * 0.02, rel=2e-3)   # the other frame, resampled to 0.0588 um
    assert kernel == [44, 64]
    # frames of one size and no pixel size: exactly today's grid and CLAHE tile
    scale, kernel = preprocess.collection_scale([(703, 1024)] * 3, [None] * 3, 512)
    assert scale == {"factor": 0.5, "um_per_pixel": None} and kernel == [44, 64]
    assert preprocess.target_shape((703, 1024), scale) == preprocess.target_shape((703, 1024), 512)


def test_an_image_whose_scale_cannot_be_matched_is_named():
    physical = {"factor": 0.5, "um_per_pixel": 0.06}
    assert preprocess.scale_mismatch(physical, 0.03, "a.tif") is None
    assert "a.tif" in preprocess.scale_mismatch(physical, None, "a.tif")
    assert "b.tif" in preprocess.scale_mismatch({"factor": 0.5, "um_per_pixel": None}, 0.03, "b.tif")
    assert preprocess.target_shape((100, 200), physical) == (50, 100)          # the factor, as said
    assert preprocess.target_shape((100, 200), physical, 0.12) == (200, 400)   # 0.12 um to 0.06 um


def test_an_image_without_pixel_size_under_a_physical_model_warns(fitted):
    seg, frames, _ = fitted
    physical = dataclasses.replace(seg.model_, settings=dict(seg.model_.settings,
                                                             resize={"factor": 0.5, "um_per_pixel": 0.1}))
    est = PhaseSegmenter(**dict(FIT, resize=physical.settings["resize"]))._adopt(physical)
    with pytest.warns(UserWarning, match="pixel size is unknown"):
        est.predict(frames[0])


def test_the_scale_form_of_resize_is_checked():
    assert config.validate({"resize": {"factor": 0.25}})["resize"] == {"factor": 0.25, "um_per_pixel": None}
    for bad in ({}, {"factor": 0}, {"um_per_pixel": -1}, {"factor": 0.5, "zoom": 2}):
        with pytest.raises(config.ConfigError, match="resize"):
            config.validate({"resize": bad})
    assert config.validate({"clahe_kernel_size": [16, 20]})["clahe_kernel_size"] == [16, 20]


def test_images_joining_a_folder_change_its_scale_and_the_stored_features_follow(tmp_path):
    """The scale is the images': a run with more of them refits and computes its stored features again, rather
    than refusing the folder's features as made with other settings."""
    from click.testing import CliRunner

    from bigseg.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for i, (img, _) in enumerate(synth.family("islands", 1, seed=5, shape=(192, 256))
                                 + synth.family("islands", 2, seed=6, shape=(256, 320))):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(images / f"frame{i}.png")
    args = ["--out", str(tmp_path / "out"), "-k", "3", "--set", "resize=native", "--set", "store_features=true",
            "--set", "solver=minibatch", "--set", "init=nndsvda", "--set", "max_iter=3", "--set", "sample_size=5000",
            "--quiet"]
    first = CliRunner().invoke(main, ["run", "--input", str(images / "frame0.png")] + args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["run", "--input", str(images)] + args)
    assert again.exit_code == 0, again.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scale"]["clahe_kernel_size"] == [32, 40] and summary["segmented_this_run"] == 3
    from bigseg.pipeline import stored_feature_settings

    assert stored_feature_settings(tmp_path / "out" / "store.zarr", "frame0")["clahe_kernel_size"] == [32, 40]


def test_a_run_names_the_images_it_cannot_bring_to_its_scale(tmp_path, synth_dir):
    """Frames with a pixel size set the scale in micrometres; one without is resampled by the factor and named."""
    from click.testing import CliRunner

    from bigseg.cli import main

    stems = sorted(p.stem for p in (synth_dir / "images").iterdir())
    sidecar = tmp_path / "px.csv"
    sidecar.write_text("image,pixel_size_um\n" + "".join(f"{s},0.05\n" for s in stems[1:]))
    res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(tmp_path / "o"), "-k",
                                    "3", "--set", "sample_size=6000", "--set", "max_iter=100", "--set", "resize=192",
                                    "--set", f"pixel_size_csv={sidecar}"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["scale"]["resize"]["um_per_pixel"] > 0.05 and list(summary["scale"]["unmatched"]) == [stems[0]]
    (warning,) = [w for w in summary["warnings"] if w["kind"] == "scale"]
    assert warning["images"] == [stems[0]] and stems[0] in warning["message"]
    assert f"{stems[0]}: its pixel size is unknown" in res.output


def test_a_model_saved_without_a_scale_still_segments_and_says_so(fitted, tmp_path):
    """A model from before models carried their scale: each image resized on its own, as then, with a warning."""
    from click.testing import CliRunner

    from bigseg.cli import main

    seg, frames, _ = fitted
    seg.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    meta["settings"].update(resize=160, clahe_kernel_size=None)
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    (tmp_path / "new").mkdir()
    Image.fromarray((frames[0] * 255).round().astype(np.uint8)).save(tmp_path / "new" / "frame.png")
    res = CliRunner().invoke(main, ["segment", str(tmp_path / "model"), "--input", str(tmp_path / "new"),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "carries no scale" in res.output
