import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from bigseg import nnls


@pytest.fixture(params=["compiled", "numpy"], autouse=True)
def solver_path(request, monkeypatch):
    """Every test runs on the numba kernel and on the vectorised numpy path."""
    if request.param == "numpy":
        monkeypatch.setattr(nnls, "_KERNEL", [None])
    elif nnls._compiled() is None:
        pytest.skip("numba not installed")
    return request.param


def test_matches_scipy_nnls(rng):
    H = rng.random((5, 8))
    V = rng.random((500, 8)) * 2
    W = nnls.solve(V, H)
    ref = np.array([scipy_nnls(H.T, v)[0] for v in V])
    np.testing.assert_allclose(W, ref, atol=1e-5)
    assert (W.argmax(1) == ref.argmax(1)).all()


def test_ridge_penalty_matches_augmented_nnls(rng):
    H = rng.random((4, 6))
    V = rng.random((200, 6))
    l2 = 0.3
    W = nnls.solve(V, H, l2=l2)
    A = np.vstack([H.T, np.sqrt(l2) * np.eye(4)])
    ref = np.array([scipy_nnls(A, np.concatenate([v, np.zeros(4)]))[0] for v in V])
    np.testing.assert_allclose(W, ref, atol=1e-5)


def test_l1_penalty_shrinks_to_zero(rng):
    H = np.eye(3)
    V = np.array([[0.5, 0.2, 0.05]])
    W = nnls.solve(V, H, l1=0.1)
    np.testing.assert_allclose(W, [[0.4, 0.1, 0.0]], atol=1e-7)


def test_hinted_supports_give_the_same_answer(rng):
    H = rng.random((5, 7))
    V = rng.random((3000, 7))
    W, support = nnls.solve(V, H, return_support=True)
    noisy = support.copy()
    noisy[::3] = rng.integers(-1, 31, noisy[::3].size)        # a third of the hints are wrong
    W2 = nnls.solve(V, H, hint=noisy)
    np.testing.assert_allclose(W2, W, atol=1e-6)


def test_offset_pulls_towards_a_target(rng):
    H = rng.random((3, 5))
    V = rng.random((50, 5))
    m = np.full((50, 3), 0.7)
    mu = 1e6                                                  # overwhelming pull: w -> m
    W = nnls.solve(V, H, l2=mu, offset=mu * m)
    np.testing.assert_allclose(W, m, atol=1e-3)


def test_staged_search_on_large_blocks_equals_full_enumeration(rng):
    H = rng.random((5, 6))
    # pixels drawn near a few phase fingerprints, as in a micrograph
    V = np.abs(rng.random((30000, 1)) * H[rng.integers(0, 5, 30000)] + rng.normal(0, 0.05, (30000, 6)))
    staged, support = nnls.solve(V, H, return_support=True)
    full, full_support = nnls._enumerate(V.astype(np.float64) @ H.T, nnls.subset_solvers(H))
    np.testing.assert_allclose(staged, full, atol=1e-6)
    assert np.mean(support == full_support) > 0.999



def test_coupled_solve_is_the_solve_then_sweeps_loop(rng, solver_path):
    """Compiled: the pixel-wise solve and the sweeps of the loop, bit for bit; numpy: None (the loop runs)."""
    H = rng.random((4, 5))
    rows, cols, mu, sweeps, l1, l2 = 13, 17, 3.0, 3, 0.01, 0.02
    V = np.abs(H[rng.integers(0, 4, rows * cols)] + rng.normal(0, 0.2, (rows * cols, 5))).astype(np.float32)
    got = nnls.coupled_solve(V, H, rows, l1, l2, mu, sweeps)
    if solver_path == "numpy":
        assert got is None
        return
    W, support = nnls.solve(V, H, l1, l2, return_support=True)
    solvers = nnls.subset_solvers(H, l1, l2 + mu)
    for _ in range(sweeps):
        P = np.pad(W.reshape(rows, cols, 4), ((1, 1), (1, 1), (0, 0)), mode="edge")
        mean = 0.25 * (P[:-2, 1:-1] + P[2:, 1:-1] + P[1:-1, :-2] + P[1:-1, 2:])
        W, support = nnls.solve(V, H, l1, l2 + mu, solvers, offset=mu * mean.reshape(-1, 4).astype(np.float64),
                                hint=support, return_support=True)
    np.testing.assert_array_equal(got, W)


def test_remembered_subset_solvers_are_the_computed_ones(rng):
    H = rng.random((4, 6))
    first = nnls._solvers_for(H, 0.0, 0.5)
    np.testing.assert_array_equal(first, nnls.subset_solvers(H, 0.0, 0.5))
    assert nnls._solvers_for(H.copy(), 0.0, 0.5) is first
    assert nnls._solvers_for(H, 0.0, 0.6) is not first
