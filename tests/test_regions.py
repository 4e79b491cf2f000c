"""Regions, not rims: crafted label maps where the right answer is known."""

import numpy as np
import pytest

from bigseg import regions


def two_regions_with_rim(width=2):
    """Left half label 0, right half label 1, a vertical rim of label 2 between them."""
    lab = np.zeros((40, 40), np.uint8)
    lab[:, 20:] = 1
    lab[:, 20 - width // 2: 20 + (width - width // 2)] = 2
    return lab


def island_with_rim():
    """A disc (label 1) in a matrix (label 0) ringed by a 2-px rim (label 2)."""
    yy, xx = np.mgrid[:60, :60]
    r = np.hypot(yy - 30, xx - 30)
    lab = np.zeros((60, 60), np.uint8)
    lab[r < 15] = 1
    lab[(r >= 13) & (r < 15)] = 2
    return lab


def test_window_radius_spans_derivative_response():
    assert regions.window_radius([1.0, 1.0]) == 2
    assert regions.window_radius([0.4]) == 1
    assert regions.window_radius([2.0, 1.0]) == 4


def test_rim_between_two_regions_goes_to_the_regions():
    lab = two_regions_with_rim()
    share = regions.between_share(lab, 3, radius=2)
    assert share[2] == pytest.approx(1.0)
    assert share[0] < 0.2 and share[1] < 0.2
    out, dropped, moved = regions.remove_transitions(lab, 3, radius=2)
    assert dropped == [2]
    assert moved == int((lab == 2).sum()) == 80
    assert not (out == 2).any()
    # split down the middle: the rim's left column joins the left region, its right column the right one
    assert (out[:, 19] == 0).all() and (out[:, 20] == 1).all()
    assert (out[lab != 2] == lab[lab != 2]).all()


def test_island_rim_dissolves_into_island_and_matrix():
    lab = island_with_rim()
    out, dropped, moved = regions.remove_transitions(lab, 3, radius=2)
    assert dropped == [2] and moved == int((lab == 2).sum())
    assert set(np.unique(out)) == {0, 1}


def test_nothing_moves_without_a_rim():
    lab = np.zeros((40, 40), np.uint8)
    lab[:, 20:] = 1
    for y, x in [(5, 5), (15, 8), (30, 12), (25, 4)]:           # precipitates inside region 0 only
        lab[y:y + 2, x:x + 2] = 2
    out, dropped, moved = regions.remove_transitions(lab, 3, radius=2)
    assert dropped == [] and moved == 0
    assert (out == lab).all()


def test_film_between_grains_of_one_phase_is_kept():
    """A thin real phase (grain-boundary network) lies between two grains of the same phase: not a rim."""
    lab = np.zeros((40, 40), np.uint8)
    lab[:, 19:21] = 2                      # film inside phase 0
    lab[:8, :] = 1                         # a phase-1 region touching the film's end only
    assert regions.transition_components(lab, 3, radius=2) == []


def test_absorb_with_activations_takes_the_best_kept_component():
    lab = two_regions_with_rim()
    acts = np.zeros((3,) + lab.shape, np.float32)
    acts[2] = 1.0
    acts[1, :, :] = 0.5                    # component 1 is the best of the kept ones everywhere
    out, moved = regions.absorb(lab, [2], acts)
    assert moved == 80
    assert (out[lab == 2] == 1).all()


def test_absorb_edge_cases():
    lab = two_regions_with_rim()
    out, moved = regions.absorb(lab, [])
    assert moved == 0 and (out == lab).all()
    out, moved = regions.absorb(np.full((5, 5), 2, np.uint8), [2])  # nothing to give the pixels to
    assert moved == 0


def test_transitions_pooled_over_a_collection_and_capped():
    lab = two_regions_with_rim()
    flat = np.zeros_like(lab)
    assert regions.transition_components(None, 3, 2, counts_from=[lab, flat]) == [2]
    # two labels only: nothing can lie between two others
    assert regions.transition_components((lab == 2).astype(np.uint8), 2, 2) == []


# --- boundary pixels: thin bands between two phases (settle_boundaries) ------------------------------------------

def test_band_between_two_regions_is_split_between_them():
    lab = two_regions_with_rim(width=4)
    out = regions.settle_boundaries(lab, 2)
    assert (out != 2).all()
    assert (out[:, :20] == 0).all() and (out[:, 20:] == 1).all()     # split down its middle


def test_island_rim_goes_to_island_and_matrix():
    lab = island_with_rim()
    out = regions.settle_boundaries(lab, 2)
    assert (out == 2).sum() == 0
    assert set(np.unique(out[lab == 2])) == {0, 1}


def test_film_precipitate_and_wide_regions_stay():
    film = np.zeros((40, 40), np.uint8)
    film[:, 19:21] = 2                                  # a film between two grains of one phase
    specks = np.zeros((40, 40), np.uint8)
    specks[10:12, 10:12] = 2                            # a precipitate inside the matrix
    specks[:, 30:] = 1                                  # near a wide region, but not between two
    halves = np.zeros((40, 40), np.uint8)
    halves[:, 20:] = 1
    for lab in (film, specks, halves):
        assert np.array_equal(regions.settle_boundaries(lab, 2), lab)


def test_a_band_wider_than_twice_the_radius_is_a_region():
    lab = two_regions_with_rim(width=8)
    assert np.array_equal(regions.settle_boundaries(lab, 2), lab)
    assert (regions.settle_boundaries(lab, 4) != 2).all()


def test_fixed_labels_never_move_and_radius_zero_is_off():
    lab = two_regions_with_rim(width=2)
    assert np.array_equal(regions.settle_boundaries(lab, 2, fixed=(2,)), lab)
    assert np.array_equal(regions.settle_boundaries(lab, 0), lab)
    # a band between a fixed label (a void) and a region still goes to the nearer of the two
    out = regions.settle_boundaries(two_regions_with_rim(width=2), 2, fixed=(0,))
    assert (out != 2).all()


def test_boundary_radius_setting():
    s = {"gradient_sigma": 1.0, "laplacian_sigma": 1.5, "boundary_radius": "auto"}
    assert regions.boundary_radius(s) == 3 and regions.boundary_halo(3) == 6
    assert regions.boundary_radius(dict(s, boundary_radius=0)) == 0 and regions.boundary_halo(0) == 0


def _speckled_map(seed=0, shape=(90, 110), k=4):
    """Blobs of ``k`` labels with rims and speckle: a label map where many pixels are decided."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    fields = ndi.gaussian_filter(rng.random((k,) + shape), (0, 4, 4))
    lab = fields.argmax(axis=0).astype(np.uint8)
    edges = ndi.morphological_gradient(lab, size=3) > 0
    lab[edges & (rng.random(shape) < 0.7)] = k - 1
    noise = rng.random(shape) < 0.03
    lab[noise] = rng.integers(0, k, noise.sum())
    return lab


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_chunked_settling_equals_the_whole_map(radius):
    import dask.array as da

    lab = _speckled_map()
    whole = regions.settle_boundaries(lab, radius, fixed=(1,))
    assert 0.01 < (whole != lab).mean() < 0.5
    chunked = da.map_overlap(regions.settle_boundaries, da.from_array(lab, chunks=(23, 31)),
                             depth=regions.boundary_halo(radius), boundary="none", dtype=np.uint8,
                             radius=radius, fixed=(1,))
    np.testing.assert_array_equal(chunked.compute(scheduler="sync"), whole)


def test_hand_over_moves_the_arg_max_and_keeps_each_pixels_values():
    import dask.array as da

    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 30, 20)).astype(np.float32)
    before = scores.argmax(axis=0).astype(np.uint8)
    after = before.copy()
    moved = rng.random(before.shape) < 0.3
    after[moved] = (before[moved] + 1 + rng.integers(0, 3, moved.sum())) % 4
    out = regions.hand_over(scores, before, after)
    assert out.dtype == np.float32 and np.array_equal(out.argmax(axis=0), after)
    np.testing.assert_array_equal(np.sort(out, axis=0), np.sort(scores, axis=0))
    np.testing.assert_array_equal(out[:, ~moved], scores[:, ~moved])
    lazy = regions.hand_over(da.from_array(scores, chunks=(4, 7, 9)), da.from_array(before, chunks=(7, 9)),
                             da.from_array(after, chunks=(7, 9)))
    np.testing.assert_array_equal(lazy.compute(), out)


class _RowsModel:
    """The part of a model settled_maps reads: phases as the activations' rows, no void."""
    void_below = None

    def phase_scores(self, acts):
        return acts

    def phase_memberships(self, acts):
        return acts / acts.sum(axis=0)


def test_settled_maps_of_chunked_activations_equal_the_whole():
    import dask.array as da

    lab = _speckled_map(seed=3)
    rng = np.random.default_rng(3)
    acts = (np.eye(4, dtype=np.float32)[lab].transpose(2, 0, 1) + 0.1 * rng.random((4,) + lab.shape)).astype(np.float32)
    settings = {"boundary_radius": 2}
    whole = regions.settled_maps(_RowsModel(), acts, settings)
    assert (whole[2] != whole[3]).any() and np.array_equal(whole[0].argmax(axis=0), whole[3])
    lazy = regions.settled_maps(_RowsModel(), da.from_array(acts, chunks=(4, 29, 37)), settings)
    for a, b in zip(lazy, whole):
        np.testing.assert_array_equal(a.compute(), b)
