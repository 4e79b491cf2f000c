import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from bigseg import segment
from bigseg.model import normalise_rows


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
