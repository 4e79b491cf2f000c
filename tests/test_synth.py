"""The synthetic families: deterministic, right shapes, every class present, rims not a class."""

import numpy as np
import pytest

from bigseg import synth


@pytest.mark.parametrize("name", sorted(synth.GENERATORS))
def test_family_is_deterministic_and_complete(name):
    shape = (96, 128)
    a = synth.family(name, 2, seed=3, shape=shape)
    b = synth.family(name, 2, seed=3, shape=shape)
    for (ia, la), (ib, lb) in zip(a, b):
        assert ia.shape == la.shape == shape
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)
        assert 0.0 <= ia.min() and ia.max() <= 1.0
        assert la.max() < len({**synth.FAMILIES, **synth.CONSTITUENT_FAMILIES}[name])
    assert not np.array_equal(a[0][0], synth.family(name, 1, seed=4, shape=shape)[0][0])


def test_islands_have_bright_rims_that_belong_to_the_island():
    img, lab = synth.islands((192, 256), seed=1)
    assert set(np.unique(lab)) == {0, 1, 2}
    from scipy import ndimage as ndi
    island = lab == 1
    rim = island & ~ndi.binary_erosion(island, iterations=2, border_value=1)
    core = ndi.binary_erosion(island, iterations=4)
    assert img[rim].mean() > img[core].mean() + 0.2


def test_twoscale_alternates_magnification():
    _, small = synth.twoscale((128, 128), seed=0)
    _, large = synth.twoscale((128, 128), seed=1)
    assert (large == 2).sum() / max((large == 2).any(), 1) >= 0   # both render
    assert small.shape == large.shape


def test_write_family(tmp_path):
    imgs, labs = synth.write_family(tmp_path, "pores", 1, shape=(64, 64))
    assert len(list(imgs.glob("*.png"))) == 1 and len(list(labs.glob("*.png"))) == 1


def test_textured_islands_differ_by_texture_more_than_by_brightness():
    img, lab = synth.textured((192, 256), seed=2)
    from scipy import ndimage as ndi
    inner = ndi.binary_erosion(lab == 1, iterations=3)
    matrix = ndi.binary_erosion(lab == 0, iterations=3)
    # brightness apart by less than the noise and texture; local roughness apart by much more
    assert abs(img[inner].mean() - img[matrix].mean()) < 0.08
    rough = ndi.uniform_filter((img - ndi.gaussian_filter(img, 3)) ** 2, 5)
    assert rough[inner].mean() > 1.8 * rough[matrix].mean()


def test_constituent_family_has_mixed_regions_only_when_asked():
    img, lab = synth.constituents((192, 256), seed=1)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    inside = lab == 2
    # the particle grains hold both phases: bright particles in the dark matrix
    assert img[inside].std() > 2 * img[lab == 0].std()
    _, plain = synth.constituents((192, 256), seed=1, particles=False)
    assert 2 not in np.unique(plain)
