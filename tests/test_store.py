import numpy as np
import pytest

from bigseg import store


@pytest.mark.parametrize("dtype,keep", [("float16", 8), ("float16", 5), ("float32", 12)])
def test_round_significand_keeps_the_promised_precision(dtype, keep):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(50_000) * 10.0 ** rng.uniform(-3, 3, 50_000)).astype(np.float32)
    x = x[np.abs(x) > 1e-4]          # float16 subnormals carry fewer bits by design
    exact = x.astype(dtype)
    r = store.round_significand(x, dtype, keep)
    assert r.dtype == np.dtype(dtype)
    rel = np.abs(r.astype(np.float64) - exact) / np.abs(exact.astype(np.float64))
    assert rel.max() <= 2.0 ** -(keep + 1) * (1 + 1e-6)
    low = (1 << ({"float16": 10, "float32": 23}[dtype] - keep)) - 1
    uint = np.uint16 if dtype == "float16" else np.uint32
    assert not np.any(r.view(uint) & uint(low))


def test_round_significand_full_width_is_identity_and_keeps_specials():
    x = np.array([0.0, -0.0, 1.5, np.inf, -np.inf, np.nan, 65504.0], np.float32)
    np.testing.assert_array_equal(store.round_significand(x, "float16", 10), x.astype(np.float16))
    r = store.round_significand(x, "float16", 3)
    assert np.isposinf(r[3]) and np.isneginf(r[4]) and np.isnan(r[5])
    assert r[6] == np.float16(65504.0)     # rounding up would overflow: kept
