import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from bigseg import config, features
from conftest import raise_if_dask_computes


@pytest.mark.parametrize("chunks", [(37, 53), (29, 101), (143, 31), (100, 143)])
def test_chunked_equals_unchunked_at_odd_chunks(rng, chunks):
    s = config.validate({"blur_sigmas": [1.5, 5.0]})
    img = rng.random((143, 160)).astype(np.float32)
    whole = features.feature_block(img, features.feature_params(s))
    with raise_if_dask_computes():
        lazy = features.compute_features(da.from_array(img, chunks=chunks), s)
    assert lazy.shape == (143, 160, len(features.feature_names(s)))
    np.testing.assert_allclose(lazy.compute(), whole, rtol=0, atol=1e-6)


def test_kernel_matches_scipy_directly(rng):
    s = config.defaults()
    img = rng.random((80, 90)).astype(np.float32)
    f = features.compute_features(da.from_array(img, chunks=(33, 41)), s).compute()
    names = features.feature_names(s)
    np.testing.assert_allclose(f[..., names.index("intensity")], img)
    np.testing.assert_allclose(f[..., names.index("gradient_s1")],
                               ndi.gaussian_gradient_magnitude(img, 1.0, mode="reflect"), atol=1e-6)
    np.testing.assert_allclose(f[..., names.index("blur_s8")], ndi.gaussian_filter(img, 8.0, mode="reflect"),
                               atol=1e-6)
    var = ndi.uniform_filter(img * img, 7) - ndi.uniform_filter(img, 7) ** 2
    np.testing.assert_allclose(f[..., names.index("variance_w7")], np.maximum(var, 0), atol=1e-6)


def test_halo_follows_sigma():
    s = config.validate({"blur_sigmas": [2.0, 10.0], "truncate": 3.0})
    assert features.halo(s) == 30
    assert features.halo(config.validate({"features": ["intensity"], "n_components": 1, "void_class": "off"})) == 0
    # the void level is smoothed at the smaller blur sigma: its radius is the stack's halo then
    assert features.halo(config.validate({"features": ["intensity"], "n_components": 1})) == 8


def test_image_smaller_than_halo_is_a_clear_error():
    s = config.defaults()
    with pytest.raises(features.ImageTooSmallError, match="tiny.*halo of 32"):
        features.compute_features(np.zeros((20, 300), np.float32), s, "tiny")


def test_images_in_one_graph_keep_their_own_blocks(rng):
    import dask

    s = config.defaults()
    a, b = (rng.random((96, 96)).astype(np.float32) for _ in range(2))
    fa, fb = (features.compute_features(da.from_array(x, chunks=48), s) for x in (a, b))
    both = dask.compute(fa, fb)
    np.testing.assert_array_equal(both[0], features.feature_block(a, features.feature_params(s)))
    np.testing.assert_array_equal(both[1], features.feature_block(b, features.feature_params(s)))


@pytest.mark.parametrize("chunks", [(37, 53), (61, 47)])
def test_extended_bank_chunked_equals_unchunked(rng, chunks):
    s = config.validate({"features": "extended", "blur_sigmas": [1.5, 3.0], "local_std_sigmas": [3.0],
                         "structure_sigmas": [1.0, 2.5]})
    img = rng.random((120, 150)).astype(np.float32)
    whole = features.feature_block(img, features.feature_params(s))
    lazy = features.compute_features(da.from_array(img, chunks=chunks), s)
    assert lazy.shape[2] == len(features.feature_names(s)) == 11
    np.testing.assert_allclose(lazy.compute(), whole, rtol=0, atol=1e-6)


def test_hessian_and_structure_respond_to_shapes():
    s = config.validate({"features": ["hessian", "structure"], "hessian_sigmas": [3.0], "n_components": 3})
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 3.0 ** 2)).astype(np.float32)
    f = features.feature_block(blob, features.feature_params(s))
    names = features.feature_names(s)
    centre = f[32, 32]
    # a bright blob: both Hessian eigenvalues strongly negative at its centre
    assert centre[names.index("hessian_max_s3")] < -0.1 and centre[names.index("hessian_min_s3")] < -0.1
    stripes = np.tile((np.arange(64) % 8 < 4).astype(np.float32), (64, 1))
    g = features.feature_block(stripes, features.feature_params(s))[16:48, 16:48]
    # vertical stripes: one strong gradient direction, the other eigenvalue near zero
    big, small = g[..., names.index("structure_max_s1_4")], g[..., names.index("structure_min_s1_4")]
    assert big.mean() > 20 * small.mean()


def test_auto_chunk_side_follows_the_image_up_to_a_cap():
    s = config.validate({"chunk_size": "auto"})
    assert features.chunk_side((512, 512), s) == 512          # a resized micrograph is one chunk
    assert features.chunk_side((703, 1024), s) == 1024
    assert features.chunk_side((300, 200), s) == 512
    assert features.chunk_side((20000, 20000), s) == features.AUTO_CHUNK_MAX
    assert features.chunk_side((20000, 20000), config.validate({"chunk_size": 300})) == 300


def test_chunk_memory_shrinks_auto_chunks_to_fit():
    s = config.validate({"chunk_size": "auto", "chunk_memory": "2GiB"})
    assert features.chunk_side((20000, 20000), s) == 1024            # room to spare: the cap holds
    depth = features.halo(s) + s["spatial_sweeps"]
    s = config.validate({"chunk_size": "auto", "chunk_memory": "128MiB"})
    side = features.chunk_side((20000, 20000), s)
    assert side % features.AUTO_CHUNK_MIN == 0 and side < 1024
    assert (side + 2 * depth) ** 2 * features.CHUNK_BYTES_PER_PIXEL <= 128 * 2**20
    assert (side + features.AUTO_CHUNK_MIN + 2 * depth) ** 2 * features.CHUNK_BYTES_PER_PIXEL > 128 * 2**20
    tiny = config.validate({"chunk_size": "auto", "chunk_memory": 1000})
    assert features.chunk_side((20000, 20000), tiny) == features.AUTO_CHUNK_MIN      # never below the floor
    assert features.chunk_side((20000, 20000), dict(tiny, chunk_size=300)) == 300   # an explicit side wins


def test_chunk_memory_accepts_sizes_and_names_itself_when_wrong():
    assert config.validate({"chunk_memory": "256MiB"})["chunk_memory"] == 256 * 2**20
    assert config.validate({"chunk_memory": 4096})["chunk_memory"] == 4096
    with pytest.raises(config.ConfigError, match="chunk_memory.*or auto"):
        config.validate({"chunk_memory": "lots"})


@pytest.mark.parametrize("chunks", [(37, 53), (29, 101)])
def test_granulometry_chunked_equals_unchunked(rng, chunks):
    s = config.validate({"features": ["closing", "opening"], "closing_sizes": [3, 9], "opening_sizes": [5, 11],
                         "n_components": 3})
    assert features.halo(s) == 10
    img = rng.random((120, 150)).astype(np.float32)
    whole = features.feature_block(img, features.feature_params(s))
    with raise_if_dask_computes():
        lazy = features.compute_features(da.from_array(img, chunks=chunks), s)
    assert features.feature_names(s) == ["closing_w3", "closing_w9", "opening_w5", "opening_w11"]
    np.testing.assert_array_equal(lazy.compute(), whole)


def test_closing_and_opening_separate_regions_by_size():
    # a 5-px cell and a 25-px region on a frame of the other level: a 9-px window
    # removes the cell (narrower than the window) and keeps the region
    dark = np.ones((60, 60), np.float32)
    dark[10:15, 10:15] = 0.2
    dark[25:50, 25:50] = 0.2
    s = config.validate({"features": ["closing", "opening"], "closing_sizes": [9], "opening_sizes": [9],
                         "n_components": 2})
    f = features.feature_block(dark, features.feature_params(s))
    assert f[12, 12, 0] == 1.0 and f[37, 37, 0] == pytest.approx(0.2)
    f = features.feature_block(1.2 - dark, features.feature_params(s))
    assert f[12, 12, 1] == pytest.approx(0.2) and f[37, 37, 1] == 1.0


def test_granulometry_sizes_must_be_odd():
    with pytest.raises(config.ConfigError, match="closing_sizes.*odd.*8"):
        config.validate({"closing_sizes": [9, 8]})


# --- the registry of feature kinds ------------------------------------------------------------------------------

def test_registry_has_one_entry_per_kind_the_settings_allow():
    assert tuple(features.FEATURES) == config.FEATURE_NAMES
    for name, kind in features.FEATURES.items():
        assert kind.name == name and kind.says in ("brightness", "texture", None)
        # what a kind reads changes its numbers, so a model must be bound to it
        assert all(p in config.MODEL_BOUND_KEYS for p in kind.params), name
    assert features.FEATURE_PARAM_KEYS == ("features", "gradient_sigma", "laplacian_sigma", "variance_size",
                                           "blur_sigmas", "hessian_sigmas", "structure_sigmas", "local_std_sigmas",
                                           "closing_sizes", "opening_sizes", "void_class", "truncate")
    assert set(features.feature_params(config.defaults())) == set(features.FEATURE_PARAM_KEYS)
    from bigseg.phases import _kinds_saying

    assert set(_kinds_saying("texture")) == {"gradient", "variance", "local_std", "structure"}
    assert set(_kinds_saying("brightness")) == {"intensity", "blur"}


def _plain_scipy(img, s):
    """The feature bank written out as plain scipy.ndimage calls: what every registry kernel must equal bit for bit."""
    img = np.asarray(img, np.float32)
    t = s["truncate"]

    def eig2(a, b, c):
        mean, root = 0.5 * (a + c), np.sqrt(0.25 * (a - c) ** 2 + b * b)
        return [mean + root, mean - root]

    out = []
    for kind in config.feature_kinds(s):
        if kind == "intensity":
            out.append(img)
        elif kind == "gradient":
            out.append(ndi.gaussian_gradient_magnitude(img, s["gradient_sigma"], mode="reflect", truncate=t))
        elif kind == "laplacian":
            out.append(ndi.gaussian_laplace(img, s["laplacian_sigma"], mode="reflect", truncate=t))
        elif kind == "variance":
            w = s["variance_size"]
            mean, mean_sq = ndi.uniform_filter(img, w, mode="reflect"), ndi.uniform_filter(img * img, w, mode="reflect")
            out.append(np.maximum(mean_sq - mean * mean, 0.0))
        elif kind == "blur":
            out += [ndi.gaussian_filter(img, g, mode="reflect", truncate=t) for g in s["blur_sigmas"]]
        elif kind == "hessian":
            for g in s["hessian_sigmas"]:
                out += eig2(*[g * g * ndi.gaussian_filter(img, g, order=o, mode="reflect", truncate=t)
                              for o in ((2, 0), (1, 1), (0, 2))])
        elif kind == "structure":
            d, i = s["structure_sigmas"]
            gy = ndi.gaussian_filter(img, d, order=(1, 0), mode="reflect", truncate=t)
            gx = ndi.gaussian_filter(img, d, order=(0, 1), mode="reflect", truncate=t)
            out += [np.maximum(e, 0.0) for e in eig2(*[ndi.gaussian_filter(q, i, mode="reflect", truncate=t)
                                                       for q in (gy * gy, gy * gx, gx * gx)])]
        elif kind == "local_std":
            for g in s["local_std_sigmas"]:
                mean = ndi.gaussian_filter(img, g, mode="reflect", truncate=t)
                mean_sq = ndi.gaussian_filter(img * img, g, mode="reflect", truncate=t)
                out.append(np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)))
        else:
            op = ndi.grey_closing if kind == "closing" else ndi.grey_opening
            out += [op(img, size=(w, w), mode="reflect") for w in s[f"{kind}_sizes"]]
    return np.stack(out, axis=-1).astype(np.float32, copy=False)


#: settings whose numbers, names and halo were recorded before the registry replaced the string branches
REGISTRY_CASES = {
    "default": ({}, 32, ["intensity", "gradient_s1", "laplacian_s1", "variance_w7", "blur_s2", "blur_s8"]),
    "extended": ({"features": "extended"}, 32,
                 ["intensity", "gradient_s1", "laplacian_s1", "variance_w7", "blur_s2", "blur_s8", "hessian_max_s2",
                  "hessian_min_s2", "structure_max_s1_4", "structure_min_s1_4", "local_std_s8"]),
    "odd": ({"features": "extended", "gradient_sigma": 1.3, "laplacian_sigma": 0.7, "blur_sigmas": [0.6, 2.5, 5.3],
             "variance_size": 5, "hessian_sigmas": [1.7, 3.1], "structure_sigmas": [0.9, 2.3],
             "local_std_sigmas": [2.2, 4.7], "truncate": 3.3}, 17,
            ["intensity", "gradient_s1.3", "laplacian_s0.7", "variance_w5", "blur_s0.6", "blur_s2.5", "blur_s5.3",
             "hessian_max_s1.7", "hessian_min_s1.7", "hessian_max_s3.1", "hessian_min_s3.1",
             "structure_max_s0.9_2.3", "structure_min_s0.9_2.3", "local_std_s2.2", "local_std_s4.7"]),
    "every kind": ({"features": list(config.FEATURE_NAMES), "closing_sizes": [3, 7], "opening_sizes": [5, 9],
                    "blur_sigmas": [1.1]}, 32,
                   ["intensity", "gradient_s1", "laplacian_s1", "variance_w7", "blur_s1.1", "hessian_max_s2",
                    "hessian_min_s2", "structure_max_s1_4", "structure_min_s1_4", "local_std_s8", "closing_w3",
                    "closing_w7", "opening_w5", "opening_w9"]),
    "granulometry": ({"features": ["opening", "intensity", "closing"], "n_components": 3, "closing_sizes": [11],
                      "opening_sizes": [3]}, 10, ["opening_w3", "intensity", "closing_w11"]),
}


@pytest.mark.parametrize("case", REGISTRY_CASES)
def test_registry_kernels_equal_plain_scipy_bit_for_bit(case):
    given, depth, names = REGISTRY_CASES[case]
    s = config.validate(given)
    p = features.feature_params(s)
    rng = np.random.default_rng(1234)
    images = [rng.random((128, 150)).astype(np.float32), rng.random((67, 201)).astype(np.float32),
              rng.random((71, 73))]                       # an odd shape, and float64 converted as before
    for img in images:
        got = features.feature_block(img, p)
        assert got.dtype == np.float32 and got.shape == img.shape + (len(features.feature_names(s)),)
        assert np.array_equal(got, _plain_scipy(img, s)), case
    assert features.halo(s) == depth and features.feature_names(s) == names
