"""The same run through real ``dask scheduler`` and ``dask worker`` processes on loopback."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bigseg.cli import main
from conftest import bigseg_cmd, env_for_subprocess

ARGS = ["--set", "resize=native", "--set", "chunk_size=96", "--set", "sample_size=20000", "-k", "4", "--quiet"]


def _wait_for(path, seconds=300):    # a guard against a hang, not a speed limit
    t0 = time.time()
    while time.time() - t0 < seconds:
        if path.exists() and path.stat().st_size:
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not appear")


@pytest.fixture
def loopback_cluster(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    env = env_for_subprocess()
    dask_cli = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen(dask_cli + ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                          "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        address = _wait_for(sched_file)["address"]
        procs.append(subprocess.Popen(dask_cli + ["worker", "--scheduler-file", str(sched_file), "--nworkers", "2",
                                                  "--nthreads", "1", "--memory-limit", "2GiB", "--host", "127.0.0.1", "--no-dashboard",
                                                  "--local-directory", str(tmp_path / "worker")],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_run_on_scheduler_and_worker_processes_matches_threads(synth_dir, tmp_path, loopback_cluster):
    inputs = [str(p) for p in sorted((synth_dir / "images").iterdir())[:3]]
    in_args = sum((["--input", p] for p in inputs), [])
    dist_out, thread_out = tmp_path / "dist", tmp_path / "threads"
    proc = subprocess.run(bigseg_cmd() + ["run"] + in_args + ["--out", str(dist_out), "--scheduler", loopback_cluster]
                          + ARGS, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((dist_out / "summary.json").read_text())
    assert summary["scheduler"].startswith("distributed")
    # chunk_memory auto comes from the workers: a quarter of 2 GiB for their one thread each
    assert summary["settings"]["chunk_memory"] == 2**31 // 4
    res = CliRunner().invoke(main, ["run"] + in_args + ["--out", str(thread_out)] + ARGS, catch_exceptions=False)
    assert res.exit_code == 0
    for p in inputs:
        stem = p.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        a = np.asarray(Image.open(dist_out / "labels" / f"{stem}.png"))
        b = np.asarray(Image.open(thread_out / "labels" / f"{stem}.png"))
        assert np.mean(a == b) > 0.999, stem
