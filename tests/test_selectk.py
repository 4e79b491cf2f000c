import numpy as np

from bigseg import config, selectk


def _three_phase_pixels(rng, n=4000):
    """Pixels that are each mostly one of three distinct fingerprints, plus noise."""
    H = np.array([[1.0, 0.1, 0.0, 0.3, 0.0, 0.2],
                  [0.0, 1.0, 0.2, 0.0, 0.4, 0.0],
                  [0.2, 0.0, 1.0, 0.0, 0.1, 0.8]])
    phase = rng.integers(0, 3, n)
    W = np.eye(3)[phase] * rng.uniform(0.5, 1.5, (n, 1)) + 0.05 * rng.random((n, 3))
    return np.clip(W @ H + rng.normal(0, 0.03, (n, 6)), 0, None)


def test_select_k_finds_the_true_k(rng, tmp_path):
    X = _three_phase_pixels(rng)
    s = config.validate({"max_iter": 300})
    result = selectk.scan(X, range(2, 7), s, n_seeds=3)
    assert result["recommended"] == 3, result
    errors = [r["error"] for r in result["results"]]
    assert errors[1] < errors[0]                       # k = 3 explains more than k = 2
    selectk.plot(result, tmp_path / "k.png")
    assert (tmp_path / "k.png").stat().st_size > 1000


def test_matched_cosine_ignores_row_order():
    A = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert selectk.matched_cosine(A, A[::-1]) == 1.0
