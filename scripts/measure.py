"""Helpers the benchmark scripts share: run one ``bigseg`` command in a fresh process and measure it."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def run_measured(args, quiet: bool = True, env=None) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of ``bigseg ARGS`` in a fresh process; exit 0 or 3 (skips) is success."""
    out = subprocess.DEVNULL if quiet else None
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bigseg.cli"] + list(args), stdout=out, stderr=out, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"bigseg {' '.join(args)} failed with status {proc.returncode}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024          # Linux reports KiB
