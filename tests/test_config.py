from pathlib import Path

import pytest
import yaml

from bigseg import config

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_lists_every_key_with_its_default():
    text = (ROOT / "configs" / "default.yaml").read_text()
    assert text == config.default_yaml(), "regenerate: python -m bigseg.config > configs/default.yaml"
    data = yaml.safe_load(text)
    assert set(data) == set(config.OPTIONS)
    assert config.validate(data) == config.defaults()


def test_metaldam_yaml_is_valid():
    s = config.load(ROOT / "configs" / "metaldam.yaml")
    assert s["crop_bottom"] == 65


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("n_component: 4\n")
    with pytest.raises(config.ConfigError, match=r"unknown setting 'n_component'.*did you mean 'n_components'"):
        config.load(p)


@pytest.mark.parametrize("sets, key", [
    (["solver=adam"], "solver"), (["n_components=0"], "n_components"), (["resize=small"], "resize"),
    (["alpha_W=-1"], "alpha_W"), (["features=[intensity, colour]"], "features"), (["variance_size=4"], "variance_size"),
    (["solver=minibatch", "init=nndsvd"], "init"), (["crop_bottom=-3"], "crop_bottom"),
    (["store_features=maybe"], "store_features.*or auto"), (["chunk_size=8"], "chunk_size.*or auto"),
])
def test_bad_values_name_the_key(sets, key):
    with pytest.raises(config.ConfigError, match=key):
        config.load(None, sets=sets)


def test_overrides_apply_in_order(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("n_components: 3\nresize: native\n")
    s = config.load(p, {"n_components": 6}, ["blur_sigmas=[1, 3]", "resize=256x320"])
    assert s["n_components"] == 6 and s["blur_sigmas"] == [1.0, 3.0] and s["resize"] == [256, 320]


def test_check_same_names_the_setting():
    a = config.defaults()
    b = dict(a, gradient_sigma=2.0)
    with pytest.raises(config.ConfigError, match="gradient_sigma"):
        config.check_same(a, b, "the model")


def test_init_auto_follows_the_solver():
    assert config.resolved_init(config.validate({})) == "nndsvd"
    assert config.resolved_init(config.validate({"solver": "minibatch"})) == "nndsvda"
    assert config.resolved_init(config.validate({"init": "nndsvdar"})) == "nndsvdar"


def test_physical_resize_needs_a_target_pixel_size():
    with pytest.raises(config.ConfigError, match="target_pixel_size"):
        config.load(None, sets=["resize=physical"])
    assert config.load(None, sets=["resize=physical", "target_pixel_size=0.05"])["resize"] == "physical"


def test_model_key_groups_come_from_the_schema():
    assert config.FIT_KEYS == ("n_components", "solver", "beta_loss", "alpha_W", "alpha_H", "l1_ratio", "max_iter",
                               "tol", "init", "sample_size", "batch_size", "minibatch_fraction", "random_state",
                               "orthogonality", "transition_share")
    assert config.SEGMENT_KEYS == ("spatial_weight", "spatial_sweeps")
    assert config.MODEL_KEYS == config.MODEL_BOUND_KEYS + config.FIT_KEYS + config.SEGMENT_KEYS + ("crop_bottom",)
    assert all(o.role in config.ROLES + (None,) for o in config.OPTIONS.values())
    # where and how a run goes is never part of a model
    for key in ("cluster", "chunk_size", "chunk_memory", "store_features", "max_image_pixels", "pixel_size_csv"):
        assert key not in config.MODEL_KEYS
