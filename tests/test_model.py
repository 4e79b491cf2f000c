import dask.array as da
import numpy as np
import pytest
import zarr
from dask.callbacks import Callback

from bigseg import config, features, model
from conftest import small_settings


def _feature_store(tmp_path, rng, n_images=4, shape=(256, 256), chunk=64):
    """Lazy (y, x, f) features of synthetic images, read back from a Zarr v3 store on disk."""
    s = small_settings(chunk_size=chunk)
    root = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=3)
    arrays = []
    for i in range(n_images):
        img = rng.random(shape).astype(np.float32)
        f = features.compute_features(da.from_array(img, chunks=chunk), s).compute()
        z = root.create_array(f"im{i}", shape=f.shape, chunks=(chunk, chunk, f.shape[2]), dtype="float32")
        z[...] = f
        arrays.append(da.from_zarr(z))
    return arrays, s


class PeakHeld(Callback):
    """Largest number of bytes the scheduler held at once (results in its cache)."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        held = sum(v.nbytes for v in state["cache"].values() if isinstance(v, np.ndarray))
        self.peak = max(self.peak, held)


def test_minibatch_streams_and_never_holds_the_store(tmp_path, rng):
    arrays, s = _feature_store(tmp_path, rng)
    s = config.validate(dict(s, solver="minibatch", sample_size=2000, batch_size=512, max_iter=2))
    total = sum(a.nbytes for a in arrays)
    calls = []

    def compute(objs):
        import dask

        with PeakHeld() as cb:
            out = list(dask.compute(*objs, scheduler="threads"))
        calls.append(cb.peak)
        return out

    m = model.fit(arrays, features.feature_names(s), s, compute)
    assert m.H.shape == (4, len(features.feature_names(s)))
    assert len(calls) > 3                      # one sample pass, then blocks a few at a time
    assert max(calls) < total / 8, (max(calls), total)
    assert m.report["n_batches"] > 0 and np.isfinite(m.report["relative_error"])


def test_cd_and_minibatch_reach_similar_error(tmp_path, rng):
    arrays, s = _feature_store(tmp_path, rng, n_images=2, shape=(128, 128))
    run = lambda objs: list(__import__("dask").compute(*objs, scheduler="threads"))
    cd = model.fit(arrays, features.feature_names(s), s, run)
    mb = model.fit(arrays, features.feature_names(s),
                   config.validate(dict(s, solver="minibatch", batch_size=1024, max_iter=5)), run)
    assert mb.report["relative_error"] < 1.5 * cd.report["relative_error"]


def test_save_load_round_trip_without_pickle(tmp_path, rng):
    s = small_settings()
    names = features.feature_names(s)
    m = model.Model(H=model.normalise_rows(rng.random((4, len(names)))), scale_lo=np.zeros(len(names), np.float32),
                    scale_hi=np.ones(len(names), np.float32), feature_names=names, settings=config.model_bound(s),
                    report={"relative_error": 0.1})
    m.save(tmp_path / "model")
    m.save(tmp_path / "model")                      # overwriting an existing model is atomic too
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["fingerprints.png", "model.json", "model.npz"]
    back = model.Model.load(tmp_path / "model")
    np.testing.assert_array_equal(back.H, m.H)
    assert back.feature_names == names and back.report == m.report
    # the figure travels with the model, so segmenting with it draws nothing
    assert back.figure == m.figure and back.figure.startswith(b"\x89PNG")
    (tmp_path / "model" / "fingerprints.png").unlink()     # a model saved before the figure was kept
    assert model.Model.load(tmp_path / "model").fingerprint_png().startswith(b"\x89PNG")
    with np.load(tmp_path / "model" / "model.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    block = rng.random((10, 12, len(names))).astype(np.float32)
    from bigseg.segment import spatial_block

    np.testing.assert_array_equal(spatial_block(block, back.H, back.scale_lo, back.scale_hi),
                                  spatial_block(block, m.H, m.scale_lo, m.scale_hi))


def test_model_refuses_other_feature_settings(tmp_path, rng):
    s = small_settings()
    names = features.feature_names(s)
    m = model.Model(H=np.eye(len(names))[:4], scale_lo=np.zeros(len(names), np.float32),
                    scale_hi=np.ones(len(names), np.float32), feature_names=names, settings=config.model_bound(s))
    m.save(tmp_path / "m")
    other = config.validate(dict(s, laplacian_sigma=3.0))
    with pytest.raises(config.ConfigError, match="laplacian_sigma"):
        model.Model.load(tmp_path / "m").check_settings(other)


def test_damaged_model_is_a_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("{}")
    (tmp_path / "m" / "model.npz").write_bytes(b"junk")
    with pytest.raises(model.ModelError, match="damaged"):
        model.Model.load(tmp_path / "m")


def test_orthogonality_lowers_the_overlap_of_h_rows(rng):
    H_true = np.array([[1.0, 0.6, 0.2, 0.1], [0.5, 1.0, 0.6, 0.1], [0.1, 0.5, 1.0, 0.6]])
    W_true = rng.exponential(1.0, (3000, 3)) * (rng.random((3000, 3)) < 0.5)
    X = np.clip(W_true @ H_true + rng.normal(0, 0.02, (3000, 4)), 0, None)
    s = config.validate({"n_components": 3, "max_iter": 300})
    H, _ = model.fit_cd(X, s)
    overlaps = [model.overlap(H)]
    for beta in (0.003, 0.03):
        H_o, report = model.refine_orthogonal(X, H, dict(s, orthogonality=beta))
        overlaps.append(report["overlap_after"])
        assert np.allclose(np.linalg.norm(H_o, axis=1), 1.0)
    assert overlaps[0] > overlaps[1] > overlaps[2]
    assert overlaps[2] < overlaps[0] / 3


def test_sample_does_not_depend_on_how_many_images_share_a_graph(tmp_path, rng):
    arrays, s = _feature_store(tmp_path, rng, n_images=3, shape=(100, 90))
    calls = []

    def compute(objs):
        import dask

        calls.append(len(objs))
        return list(dask.compute(*objs, scheduler="threads"))

    one = model.sample_pixels(arrays, 5000, 7, compute, batch_images=1)
    assert calls == [1, 1, 1]
    every = model.sample_pixels(arrays, 5000, 7, compute, batch_images=32)
    np.testing.assert_array_equal(one, every)
    assert len(one) == 5000
    # nor on the chunking: pixels are drawn on the image grid and come back in raster order
    rechunked = [a.rechunk((37, 51, -1)) for a in arrays]
    np.testing.assert_array_equal(model.sample_pixels(rechunked, 5000, 7, compute), one)
