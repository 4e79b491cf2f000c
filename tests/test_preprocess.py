import numpy as np

from bigseg import config, preprocess


def test_constant_image_normalises_to_zero_without_warnings():
    img = np.full((40, 50), 9, np.uint8)
    with np.errstate(all="raise"):
        out = preprocess.preprocess_image(img, config.defaults())
    assert out.shape == (410, 512) and np.all(out == 0)      # the longer side at 512, aspect kept


def test_working_size_keeps_the_aspect_ratio():
    # MetalDAM's 1024x703 frame: squashed to 512x512 it was scaled 2.0 along x and 1.37 along y
    assert preprocess.target_shape((703, 1024), 512) == (352, 512)
    assert preprocess.target_shape((1280, 960), 512) == (512, 384)
    assert preprocess.target_shape((703, 1024), [512, 512]) == (512, 512)     # an exact grid stays exact
    assert config.validate({"resize": 512})["resize"] == 512 == config.defaults()["resize"]


def test_normalise_maps_range_and_clips():
    img = np.linspace(0, 100, 101, dtype=np.float32).reshape(1, -1)
    out = preprocess.normalize(img)
    assert out.min() == 0 and out.max() == 1
    robust = preprocess.normalize(img, (10, 90))
    assert robust[0, 10] == 0 and robust[0, 90] == 1 and robust[0, 50] == np.float32(0.5)


def test_native_keeps_shape_and_values_in_unit_range(rng):
    img = (rng.random((70, 90)) * 65535).astype(np.uint16)
    s = config.validate({"resize": "native"})
    out = preprocess.preprocess_image(img, s)
    assert out.shape == (70, 90) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1


def test_resize_target_from_settings():
    assert preprocess.target_shape((703, 1024), [512, 512]) == (512, 512)
    assert preprocess.target_shape((703, 1024), "native") == (703, 1024)
