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
                               "orthogonality", "transition_share", "assignment", "n_constituents")
    assert config.SEGMENT_KEYS == ("spatial_weight", "spatial_sweeps", "boundary_radius")
    assert config.MODEL_KEYS == config.MODEL_BOUND_KEYS + config.FIT_KEYS + config.SEGMENT_KEYS
    assert all(o.role in config.ROLES + (None,) for o in config.OPTIONS.values())
    # where and how a run goes is never part of a model
    for key in ("cluster", "chunk_size", "chunk_memory", "store_features", "max_image_pixels", "pixel_size_csv"):
        assert key not in config.MODEL_KEYS
    # nor a fact of one collection's files: a data bar's height would crop a montage segmented with the model
    assert "crop_bottom" not in config.MODEL_KEYS


# --- Settings: the same schema, read-only ---------------------------------------------------------------------------

def test_settings_are_frozen_and_hand_out_copies():
    s = config.Settings(n_components=3)
    with pytest.raises(AttributeError, match="read-only.*replace"):
        s.n_components = 4
    with pytest.raises(TypeError):
        s["n_components"] = 4
    with pytest.raises(AttributeError):
        del s.n_components
    s.blur_sigmas.append(99.0)
    s["normalize_percentiles"][0] = 5.0
    assert s.blur_sigmas == [2.0, 8.0] and s["normalize_percentiles"] == [0.0, 100.0]
    assert s.n_components == s["n_components"] == 3


def test_settings_replace_validates_the_whole():
    s = config.Settings(n_components=3)
    t = s.replace(spatial_weight=0, blur_sigmas=[1, 3])
    assert (t.spatial_weight, t.blur_sigmas, t.n_components) == (0.0, [1.0, 3.0], 3)
    assert s.spatial_weight == 2.0                      # the original is untouched
    with pytest.raises(config.ConfigError, match="solver"):
        s.replace(solver="adam")
    with pytest.raises(config.ConfigError, match="n_components: 3 components but features"):
        s.replace(features=["intensity", "gradient"])   # checked together, not key by key
    with pytest.raises(config.ConfigError, match="did you mean 'n_components'"):
        s.replace(n_component=4)


def test_settings_stage_keys_are_the_module_constants():
    assert config.Settings.stage("features") is config.MODEL_BOUND_KEYS
    assert config.Settings.stage("fit") is config.FIT_KEYS
    assert config.Settings.stage("segment") is config.SEGMENT_KEYS
    assert config.Settings.stage("model") is config.MODEL_KEYS
    for role in config.ROLES:
        assert config.Settings.stage(role) == tuple(k for k, o in config.OPTIONS.items() if o.role == role)
    with pytest.raises(ValueError, match="unknown stage 'fitting'"):
        config.Settings.stage("fitting")


def test_settings_round_trip_to_and_from_dict(tmp_path):
    given = {"n_components": 3, "resize": "256x320", "blur_sigmas": [1, 3], "chunk_memory": "256MiB",
             "cluster": {"type": "slurm", "cores": 4, "memory": "8GB", "job_extra_directives": ["--gres=gpu:0"]}}
    plain = config.validate(given)
    s = config.Settings.from_dict(given)
    assert s.to_dict() == plain and type(s.to_dict()) is dict
    assert s == plain and plain == s and dict(s) == plain
    assert config.Settings(**plain) == s == config.Settings(plain)
    assert config.Settings.from_dict(s.to_dict()) == s
    assert s.resize == [256, 320] and s.chunk_memory == 256 * 2 ** 20 and s.cluster["jobs"] == 1
    assert yaml.safe_load(yaml.safe_dump(s.to_dict())) == plain
    assert config.Settings() == config.defaults() and config.Settings() != s
    # a Settings is immutable, so it can key a cache; equal ones hash alike whatever a dict's key order
    assert hash(s) == hash(config.Settings.from_dict(dict(given, cluster=dict(reversed(given["cluster"].items())))))
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(s)) == s and copy.deepcopy(s) == s
    assert repr(config.Settings(n_components=3)) == "Settings(n_components=3)"


@pytest.mark.parametrize("given", [{"solver": "adam"}, {"n_components": 0}, {"features": ["intensity", "colour"]},
                                   {"n_component": 4}, {"variance_size": 4}, {"resize": "physical"},
                                   {"solver": "minibatch", "init": "nndsvd"}])
def test_settings_errors_are_those_of_validate(given):
    with pytest.raises(config.ConfigError) as expected:
        config.validate(given)
    with pytest.raises(config.ConfigError) as got:
        config.Settings(**given)
    assert str(got.value) == str(expected.value) and "\n" not in str(got.value)
    with pytest.raises(config.ConfigError) as got:
        config.Settings.from_dict(given)
    assert str(got.value) == str(expected.value)


def test_unknown_attribute_names_the_nearest_setting():
    with pytest.raises(AttributeError, match="did you mean 'n_components'"):
        config.Settings().n_component


def test_load_settings_gives_settings_and_knows_shipped_names(tmp_path):
    import bigseg

    assert bigseg.Settings is config.Settings and "Settings" in dir(bigseg)
    (tmp_path / "s.yaml").write_text("resize: native\nspatial_weight: 1.0\n")
    s = bigseg.load_settings(tmp_path / "s.yaml", sets=["n_components=3"])
    assert isinstance(s, config.Settings) and s["resize"] == "native" and s.n_components == 3
    assert s == config.load(tmp_path / "s.yaml", sets=["n_components=3"])
    assert config.Settings.load("metaldam") == config.load(ROOT / "configs" / "metaldam.yaml")
    assert config.Settings.load() == config.defaults()
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.Settings.load(tmp_path / "missing.yaml")
