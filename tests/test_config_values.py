"""Numbers that cannot pass silently: NaN, infinities and out-of-range sizes are refused up front."""

import math
import re

import pytest

from bigseg import config, features, nnls

PROBES = (1, 3, 0.5, 8, 64, 100, 1000)
BAD = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _accepts(check, key, value):
    try:
        check(key, value)
    except config.ConfigError:
        return False
    return True


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


#: every key that takes a number (found from the schema, so a new numeric key is covered too)
SCALAR_KEYS = [k for k, o in config.OPTIONS.items() if any(_accepts(o.check, k, p) for p in PROBES)]
#: every key that takes a list of numbers, with its default as a valid list to spoil
LIST_KEYS = [k for k, o in config.OPTIONS.items()
             if isinstance(o.default, list) and o.default and all(map(_is_number, o.default))]
CLUSTER_NUMERIC = [k for k, c in config.CLUSTER_KEYS.items() if any(_accepts(c, k, p) for p in PROBES)]


def test_the_numeric_keys_are_found():
    assert {"n_components", "spatial_weight", "truncate", "resize", "max_image_pixels", "crop_bottom",
            "chunk_size", "random_state", "pixel_size", "clahe_kernel_size"} <= set(SCALAR_KEYS)
    assert {"normalize_percentiles", "blur_sigmas", "closing_sizes"} <= set(LIST_KEYS)


@pytest.mark.parametrize("bad", [[float("nan"), 512], [512, float("inf")], 512.5, float("inf")])
def test_resize_refuses_non_finite_and_fractional_sides(bad):
    with pytest.raises(config.ConfigError, match="resize"):
        config.validate({"resize": bad})
    assert {"cores", "processes", "jobs"} <= set(CLUSTER_NUMERIC)


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize("key", SCALAR_KEYS)
def test_non_finite_number_is_refused(key, bad):
    with pytest.raises(config.ConfigError, match=rf"^{re.escape(key)}:"):
        config.validate({key: bad})


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1e400"])
@pytest.mark.parametrize("key", SCALAR_KEYS)
def test_non_finite_number_from_the_command_line_is_refused(key, text):
    # YAML reads .nan / .inf as floats: the way they reach a run
    with pytest.raises(config.ConfigError, match=rf"^{re.escape(key)}:"):
        config.load(None, sets=[f"{key}={text}"])


@pytest.mark.parametrize("key", SCALAR_KEYS)
def test_integer_beyond_float_range_is_refused(key):
    with pytest.raises(config.ConfigError, match=rf"^{re.escape(key)}:"):
        config.validate({key: 10 ** 400})


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize("key", LIST_KEYS)
@pytest.mark.parametrize("at", [0, -1])
def test_non_finite_number_in_a_list_is_refused(key, bad, at):
    value = list(config.OPTIONS[key].default)
    value[at] = bad
    with pytest.raises(config.ConfigError, match=rf"^{re.escape(key)}:"):
        config.validate({key: value})


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize("sub", CLUSTER_NUMERIC)
def test_non_finite_number_in_the_cluster_section_is_refused(sub, bad):
    with pytest.raises(config.ConfigError, match=rf"^cluster\.{sub}:"):
        config.validate({"cluster": {"type": "slurm", "cores": 4, "memory": "16GB", sub: bad}})


def test_nan_spatial_weight_no_longer_runs():
    with pytest.raises(config.ConfigError, match="spatial_weight: expected a finite number, got nan"):
        config.load(None, sets=["spatial_weight=.nan"])


@pytest.mark.parametrize("value", ["9" * 400 + "GB", "2000000TiB"])
def test_absurd_memory_size_is_refused(value):
    with pytest.raises(config.ConfigError, match="^chunk_memory:"):
        config.validate({"chunk_memory": value})


def test_n_components_is_bounded_by_the_exact_solver():
    with pytest.raises(config.ConfigError, match=rf"n_components: must be in \[1, {nnls.MAX_EXACT_K}\], got 11"):
        config.load(None, {"n_components": nnls.MAX_EXACT_K + 1})
    s = config.validate({"n_components": nnls.MAX_EXACT_K, "features": "extended"})
    assert s["n_components"] == nnls.MAX_EXACT_K


def test_n_components_over_the_feature_count_fails_up_front():
    with pytest.raises(config.ConfigError, match=r"n_components: 5 components but .* compute only 3"):
        config.load(None, {"n_components": 5}, ["features=[intensity, blur]"])
    s = config.load(None, {"n_components": 3}, ["features=[intensity, blur]"])
    assert len(features.feature_names(s)) == 3
    # the count follows the scales, not only the kinds
    assert config.load(None, {"n_components": 4}, ["features=[intensity, blur]", "blur_sigmas=[1, 2, 4]"])


@pytest.mark.parametrize("value", [32769, [512, 10 ** 6], "100000x512", [10 ** 9, 10 ** 9]])
def test_huge_resize_is_refused(value):
    with pytest.raises(config.ConfigError, match=rf"resize: must be in \[8, {config.MAX_RESIZE_SIDE}\]"):
        config.validate({"resize": value})


def test_largest_resize_is_accepted():
    assert config.validate({"resize": config.MAX_RESIZE_SIDE})["resize"] == config.MAX_RESIZE_SIDE


@pytest.mark.parametrize("key, too_big, largest", [
    ("sample_size", 10 ** 8 + 1, 10 ** 8),
    ("batch_size", 2 ** 20 + 1, 2 ** 20),
    ("max_iter", 100_001, 100_000),
    ("spatial_sweeps", 51, 50),
    ("boundary_radius", 51, 50),
    ("clahe_kernel_size", 8193, 8192),
    ("variance_size", config.MAX_WINDOW + 2, config.MAX_WINDOW),
    ("closing_sizes", [config.MAX_WINDOW + 2], [config.MAX_WINDOW]),
    ("opening_sizes", [9, config.MAX_WINDOW + 2], [9, config.MAX_WINDOW]),
    ("blur_sigmas", [2.0, 1e4], [2.0, config.MAX_SIGMA]),
    ("gradient_sigma", 1e4, config.MAX_SIGMA),
    ("truncate", 17.0, 16.0),
    ("chunk_size", 16385, 16384),
    ("random_state", 2 ** 32, 2 ** 32 - 1),
    ("crop_bottom", 2 ** 20 + 1, 2 ** 20),
    ("max_image_pixels", 2 ** 48 + 1, 2 ** 48),
    ("chunk_memory", 2 ** 60 + 1, 2 ** 60),
])
def test_upper_bounds(key, too_big, largest):
    with pytest.raises(config.ConfigError, match=rf"^{key}:"):
        config.validate({key: too_big})
    assert config.validate({key: largest})[key] == largest


def test_a_list_of_too_many_scales_is_refused():
    with pytest.raises(config.ConfigError, match="blur_sigmas: expected a non-empty list of at most"):
        config.validate({"blur_sigmas": [1.0] * (config.MAX_SCALES + 1)})


def test_max_image_pixels_default_and_accepted():
    assert config.defaults()["max_image_pixels"] == 2 ** 30
    assert config.OPTIONS["max_image_pixels"].stage == "ingest"
    assert config.validate({"max_image_pixels": 2 ** 40})["max_image_pixels"] == 2 ** 40
    assert config.load(None, sets=["max_image_pixels=1"])["max_image_pixels"] == 1
    assert "max_image_pixels" not in config.MODEL_KEYS          # where a run reads, not what it computes


@pytest.mark.parametrize("value", [0, -1, 1.5, "big", True, None, math.nan, math.inf])
def test_max_image_pixels_refused(value):
    with pytest.raises(config.ConfigError, match="^max_image_pixels:"):
        config.validate({"max_image_pixels": value})
