"""A run killed mid-way and re-run gives the same outputs as an uninterrupted one."""

import json
import os
import signal
import subprocess
import time

import numpy as np
from click.testing import CliRunner
from PIL import Image

from bigseg.cli import main
from conftest import bigseg_cmd, env_for_subprocess

ARGS = ["--set", "resize=native", "--set", "chunk_size=64", "--set", "sample_size=20000", "-k", "4", "--quiet"]


def _labels(out):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((out / "labels").glob("*.png"))}


def test_killed_run_resumes_to_the_same_labels(synth_dir, tmp_path):
    images = str(synth_dir / "images")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    first = CliRunner().invoke(main, ["run", "--input", images, "--out", str(whole)] + ARGS)
    assert first.exit_code == 0, first.output

    proc = subprocess.Popen(bigseg_cmd() + ["run", "--input", images, "--out", str(resumed)] + ARGS,
                            env=env_for_subprocess(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = resumed / "records" / "segment"
    t0 = time.time()
    while not (records.exists() and any(records.glob("*.json"))):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() - t0 < 240
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.stem for p in records.glob("*.json")}
    assert not (resumed / "summary.json").exists()
    assert len(done_before) < 6, "everything finished before the kill"

    res = CliRunner().invoke(main, ["run", "--input", images, "--out", str(resumed)] + ARGS, catch_exceptions=False)
    assert res.exit_code == 0
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["segmented_this_run"] == 6 - len(done_before)
    a, b = _labels(whole), _labels(resumed)
    assert a.keys() == b.keys() and len(a) == 6
    for stem in a:
        np.testing.assert_array_equal(a[stem], b[stem], err_msg=stem)
    assert not list(resumed.rglob("*.tmp"))
