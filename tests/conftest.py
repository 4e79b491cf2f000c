"""Shared fixtures: a small synthetic collection on disk and fast settings."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bigseg import config
from bigseg.demo import make_dataset

ROOT = Path(__file__).resolve().parents[1]
METALDAM = ROOT.parent / "shared" / "data" / "MetalDAM"


def small_settings(**over):
    """Settings for tests: native size small images, small sample, quick fit."""
    base = {"resize": "native", "chunk_size": 64, "sample_size": 6000, "max_iter": 200,
            "n_components": 4}
    base.update(over)
    return config.validate(base)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """Six synthetic micrographs (PNG, 16-bit TIFF, RGB JPEG) with masks."""
    d = tmp_path_factory.mktemp("synth")
    make_dataset(d, n_images=6, seed=3)
    return d


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0):
    """Fail when a dask graph is computed while building a lazy result (after xarray's helper)."""
    import dask

    count = {"n": 0}

    def scheduler(dsk, keys, **kwargs):
        count["n"] += 1
        if count["n"] > max_computes:
            raise RuntimeError(f"dask computed {count['n']} time(s); expected at most {max_computes}")
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        yield count


#: set by .ci/run, which installs the [test-full] extra: a test that would skip for a package of that extra (or for
#: Chromium) fails instead, so CI runs every test a new user's light [test] extra skips
REQUIRE_FULL = os.environ.get("BIGSEG_REQUIRE_FULL", "") not in ("", "0")


def missing(what: str) -> None:
    """Skip the test for ``what`` (a package of the [test-full] extra, or Chromium), or fail it under
    BIGSEG_REQUIRE_FULL=1."""
    if REQUIRE_FULL:
        pytest.fail(f"{what}; BIGSEG_REQUIRE_FULL=1 runs every test", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def need(module: str, what: str):
    """``module`` imported, for a test of ``what`` that needs a package of the [test-full] extra; where it is not
    installed the test skips with the reason (the light [test] extra leaves it out), or fails under
    BIGSEG_REQUIRE_FULL=1."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(f"{what} needs {module.split('.')[0]} (pip install -e '.[test-full]'): {exc}")


def bigseg_cmd():
    """The CLI as a subprocess command, from this interpreter."""
    return [sys.executable, "-m", "bigseg.cli"]


def env_for_subprocess():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(autouse=True)
def _bigseg_log_reaches_caplog(monkeypatch):
    # the CLI's logging set-up (run by other tests in this process) stops the bigseg logger propagating
    import logging

    monkeypatch.setattr(logging.getLogger("bigseg"), "propagate", True)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
