import numpy as np

from bigseg import diagnose

NAMES = ["intensity", "gradient_s1", "laplacian_s1", "variance_w7", "blur_s2", "blur_s8"]


def test_speckle_rate():
    assert diagnose.speckle_rate(np.zeros((10, 10))) == 0.0
    checker = np.indices((10, 10)).sum(0) % 2
    assert diagnose.speckle_rate(checker) == 1.0


def _kinds(warnings):
    return [w["kind"] for w in warnings]


def test_each_failure_mode_is_detected_on_a_crafted_case():
    healthy = diagnose.failure_modes(np.array([0.4, 0.35, 0.25]), {"a": 0.05}, {"converged": True})
    assert healthy == []
    assert _kinds(diagnose.failure_modes(np.array([0.95, 0.04, 0.01]), {}, {})) == ["dominant"]
    unused = diagnose.failure_modes(np.array([0.6, 0.4, 0.0005]), {}, {})
    assert _kinds(unused) == ["unused"] and unused[0]["component"] == 2
    speckled = diagnose.failure_modes(np.array([0.5, 0.5]), {"a": 0.1, "b": 0.4}, {})
    assert _kinds(speckled) == ["speckled"] and speckled[0]["images"] == ["b"]
    stuck = diagnose.failure_modes(np.array([0.5, 0.5]), {}, {"converged": False, "n_iter": 400})
    assert _kinds(stuck) == ["not_converged"] and "max_iter" in stuck[0]["suggestion"]


def test_fingerprint_chart_is_a_png():
    H = np.abs(np.random.default_rng(0).random((3, len(NAMES))))
    png = diagnose.fingerprint_figure(H, NAMES, ["dark", "mid", "bright"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_fewer_phases_than_asked_suggests_only_what_was_measured_to_help():
    """features: extended, once the first suggestion, lowered MetalDAM's mean IoU (0.390 -> 0.354)."""
    (w,) = diagnose.failure_modes(np.array([0.5, 0.3, 0.2]), {}, {"phases_asked": 5, "transitions": 2})
    assert w["kind"] == "boundaries" and w["suggestion"].startswith("lower n_components")
    assert "add features" not in w["suggestion"] and "extended lowered it" in w["suggestion"]
