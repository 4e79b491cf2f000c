import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from bigseg import segment
from bigseg.model import apply_scaling, normalise_rows


def _noisy_two_phase(rng, shape=(96, 120), noise=0.35):
    """Two phases (left/right halves plus a disc) whose 3 features are buried in noise."""
    truth = np.zeros(shape, np.uint8)
    truth[:, shape[1] // 2:] = 1
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth[(yy - 48) ** 2 + (xx - 30) ** 2 < 15 ** 2] = 1
    prototypes = np.array([[0.8, 0.2, 0.5], [0.2, 0.8, 0.5]], np.float32)
    feats = prototypes[truth] + rng.normal(0, noise, shape + (3,)).astype(np.float32)
    return truth, np.clip(feats, 0, None), normalise_rows(prototypes.astype(np.float64))


def _fragments(labels):
    return sum(ndi.label(labels == c)[1] for c in np.unique(labels))


def test_spatial_coupling_reduces_fragmentation(rng):
    truth, feats, H = _noisy_two_phase(rng)
    lo, hi = np.zeros(3, np.float32), np.full(3, 2.0, np.float32)
    plain = segment.spatial_block(feats, H, lo, hi).argmax(-1)
    coupled = segment.spatial_block(feats, H, lo, hi, weight=2.0, sweeps=5).argmax(-1)
    assert _fragments(coupled) < _fragments(plain) / 3, (_fragments(coupled), _fragments(plain))
    assert (coupled == truth).mean() > (plain == truth).mean()


@pytest.mark.parametrize("chunks", [(37, 53, 3), (29, 120, 3), (96, 41, 3)])
def test_coupled_tiles_equal_the_whole_image(rng, chunks):
    _, feats, H = _noisy_two_phase(rng)
    lo, hi = np.zeros(3, np.float32), np.full(3, 2.0, np.float32)
    whole = segment.spatial_block(feats, H, lo, hi, weight=2.0, sweeps=4)
    tiled = segment.activations_graph(da.from_array(feats, chunks=chunks), H, lo, hi, weight=2.0, sweeps=4)
    np.testing.assert_allclose(tiled.compute(), whole, atol=1e-5)


def test_labels_at_native_size_interpolate_activations():
    acts = np.zeros((2, 4, 4), np.float32)
    acts[1, :, 2:] = 1.0
    lab = segment.labels_at(acts, (8, 8))
    assert lab.shape == (8, 8) and lab[:, :3].max() == 0 and lab[:, 5:].min() == 1


def test_images_in_one_graph_keep_their_own_activations(rng):
    import dask

    (_, fa, H), (_, fb, _) = _noisy_two_phase(rng), _noisy_two_phase(rng)
    lo, hi = np.zeros(3, np.float32), np.full(3, 2.0, np.float32)
    lazy = [segment.activations_graph(da.from_array(f, chunks=(48, 60, 3)), H, lo, hi, weight=1.0, sweeps=2)
            for f in (fa, fb)]
    out = dask.compute(*lazy)
    for f, got in zip((fa, fb), out):
        np.testing.assert_allclose(got, segment.spatial_block(f, H, lo, hi, weight=1.0, sweeps=2), atol=1e-5)


def test_compiled_and_numpy_solves_agree_on_a_coupled_solve(rng, monkeypatch):
    from bigseg import nnls
    from bigseg.segment import spatial_block

    if nnls._compiled() is None:
        pytest.skip("numba not installed")
    H = rng.random((5, 6))
    labels = rng.integers(0, 5, (40, 50))
    feats = np.abs(H[labels] + rng.normal(0, 0.2, (40, 50, 6))).astype(np.float32)
    lo, hi = np.zeros(6, np.float32), np.full(6, 2.0, np.float32)
    compiled = spatial_block(feats, H, lo, hi, 0.01, 0.02, 2.0, 5)
    monkeypatch.setattr(nnls, "_KERNEL", [None])
    reference = spatial_block(feats, H, lo, hi, 0.01, 0.02, 2.0, 5)
    np.testing.assert_allclose(compiled, reference, atol=1e-6)
    assert (compiled.argmax(-1) == reference.argmax(-1)).mean() > 0.999


def test_activation_panels_share_one_scale_and_show_as_viridis(tmp_path):
    from PIL import Image

    from bigseg import io, viz

    acts = np.zeros((3, 10, 12), np.float32)
    acts[0] = 1.0
    acts[1, :, 6:] = 0.5
    panels = viz.activation_panels(acts, gap=2)
    assert panels.shape == (10, 3 * 12 + 2 * 2)
    assert (panels[:, 12:14] == 255).all() and (panels[:, 26:28] == 255).all()      # white gaps
    assert (panels[:, :12] == 254).all()                  # the strongest component tops the shared scale
    assert (panels[:, 14:20] == 0).all() and (panels[:, 20:26] == 127).all()
    assert (panels[:, 28:] == 0).all()
    io.write_palette_png(tmp_path / "p.png", panels, viz.PANEL_PALETTE)
    rgb = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert tuple(rgb[0, 0]) == (253, 231, 37) and tuple(rgb[0, 14]) == (68, 1, 84)   # viridis ends
    assert tuple(rgb[0, 12]) == (255, 255, 255)


# --- the compiled kernels against their definitions ----------------------------------------------

def _needs_numba():
    from bigseg import nnls

    if nnls._compiled() is None:
        pytest.skip("numba not installed")


def _mixed_pixels(rng, shape, k, f):
    """Features of k random prototypes with noise: pixels use every kind of support, many near a face."""
    H = rng.random((k, f)) + 0.05 * (rng.random((k, f)) < 0.3)
    labels = rng.integers(0, k, shape)
    feats = np.abs(H[labels] * rng.random(shape + (1,)) + rng.normal(0, 0.25, shape + (f,))).astype(np.float32)
    return normalise_rows(H), feats


@pytest.mark.parametrize("shape, k, f, l1, l2, weight, sweeps", [
    ((37, 53), 5, 6, 0.0, 0.0, 2.0, 5),
    ((29, 41), 3, 4, 0.01, 0.02, 0.7, 3),
    ((1, 61), 4, 6, 0.0, 0.05, 2.0, 4),      # one row: above and below are the pixel itself
    ((47, 1), 2, 3, 0.0, 0.0, 1.5, 2),       # one column
    ((1, 1), 6, 8, 0.0, 0.0, 2.0, 3),
    ((23, 31), 8, 9, 0.003, 0.0, 3.0, 6),
    ((19, 26), 1, 3, 0.0, 0.0, 2.0, 2),
])
def test_fused_sweeps_equal_the_solve_loop_bit_for_bit(rng, shape, k, f, l1, l2, weight, sweeps):
    """The compiled kernel (solve, neighbour mean inline, sweeps) gives the loop of nnls.solve calls exactly."""
    _needs_numba()
    H, feats = _mixed_pixels(rng, shape, k, f)
    lo, hi = np.zeros(f, np.float32), np.full(f, 1.5, np.float32)
    fused = segment.spatial_block(feats, H, lo, hi, l1, l2, weight, sweeps)
    X = apply_scaling(feats.reshape(-1, f), lo, hi)
    loop = segment._spatial_loop(X, feats.shape, H, l1, l2, weight, sweeps)
    assert fused.dtype == loop.dtype == np.float32 and fused.shape == shape + (k,)
    np.testing.assert_array_equal(fused, loop)


def test_fused_sweeps_without_numba_are_the_numpy_loop(rng, monkeypatch):
    """Without numba, spatial_block runs the loop on the numpy solve: the compiled kernel's numbers to
    float rounding, the same labels."""
    _needs_numba()
    from bigseg import nnls

    H, feats = _mixed_pixels(rng, (33, 45), 5, 6)
    lo, hi = np.zeros(6, np.float32), np.full(6, 1.5, np.float32)
    fused = segment.spatial_block(feats, H, lo, hi, 0.0, 0.01, 2.0, 5)
    monkeypatch.setattr(nnls, "_KERNEL", [None])
    assert nnls.coupled_solve(feats.reshape(-1, 6), H, 33, 0.0, 0.01, 8.0, 5) is None
    plain = segment.spatial_block(feats, H, lo, hi, 0.0, 0.01, 2.0, 5)
    X = apply_scaling(feats.reshape(-1, 6), lo, hi)
    np.testing.assert_array_equal(plain, segment._spatial_loop(X, feats.shape, H, 0.0, 0.01, 2.0, 5))
    np.testing.assert_allclose(plain, fused, atol=1e-6)
    assert (plain.argmax(-1) == fused.argmax(-1)).mean() > 0.999


def _reference_labels(acts, shape):
    return np.argmax(segment.resample_linear(acts, shape), axis=0).astype(np.uint8)


@pytest.mark.parametrize("k, src, dst", [
    (3, (37, 53), (73, 101)),        # about 2x, not an integer factor
    (5, (29, 41), (100, 71)),        # 3.4x rows, 1.7x columns
    (2, (64, 48), (64, 97)),         # rows kept, columns up
    (4, (50, 70), (31, 45)),         # shrinking
    (1, (9, 13), (40, 27)),
    (7, (1, 17), (5, 40)),           # one row
    (3, (23, 1), (47, 3)),           # one column
])
def test_fast_labels_equal_argmax_of_the_resampled_stack(rng, k, src, dst):
    _needs_numba()
    acts = rng.random((k,) + src).astype(np.float32)
    acts[:, ::3] = np.round(acts[:, ::3] * 4) / 4      # ties: the first largest component wins
    acts[:, :, ::4] = 0.0
    np.testing.assert_array_equal(segment.labels_at(acts, dst), _reference_labels(acts, dst))
    # float64 activations are resampled in float32, as resample_linear does
    acts64 = rng.random((k,) + src)
    np.testing.assert_array_equal(segment.labels_at(acts64, dst), _reference_labels(acts64, dst))


def test_fast_labels_of_phase_rows_and_nan(rng):
    """The phase rows of activations with boundary components (a strided, non-contiguous view), and a NaN
    (np.argmax picks the first NaN)."""
    _needs_numba()
    acts = rng.random((5, 31, 44)).astype(np.float32)
    phases = [0, 2, 3]
    view = acts[phases][:, ::-1]
    np.testing.assert_array_equal(segment.labels_at(view, (62, 91)), _reference_labels(view, (62, 91)))
    acts[1, 10, 10] = np.nan
    acts[2, 20, 30:33] = np.nan
    np.testing.assert_array_equal(segment.labels_at(acts, (70, 95)), _reference_labels(acts, (70, 95)))


def test_labels_without_numba_are_the_numpy_path(rng, monkeypatch):
    from bigseg import nnls

    acts = rng.random((4, 27, 35)).astype(np.float32)
    fast = segment.labels_at(acts, (61, 80))
    monkeypatch.setattr(nnls, "_KERNEL", [None])
    assert nnls.compiled(segment._labels_kernel) is None
    np.testing.assert_array_equal(segment.labels_at(acts, (61, 80)), fast)
    np.testing.assert_array_equal(segment.labels_at(acts, (27, 35)), acts.argmax(0))     # same size: argmax


def test_coupled_solve_checks_its_rows(rng):
    _needs_numba()
    from bigseg import nnls

    with pytest.raises(ValueError, match="whole rows"):
        nnls.coupled_solve(rng.random((10, 3)).astype(np.float32), rng.random((2, 3)), 3, 0.0, 0.0, 1.0, 2)
