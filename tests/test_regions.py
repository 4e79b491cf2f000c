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
