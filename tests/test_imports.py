"""What a run imports: nothing of distributed on threads (it cost every process 0.14 s and pandas)."""

import subprocess
import sys

from conftest import env_for_subprocess

SCRIPT = """
import sys
from click.testing import CliRunner
from bigseg.cli import main
res = CliRunner().invoke(main, ["run", "--input", sys.argv[1], "--out", sys.argv[2], "-k", "3", "--quiet",
                                "--set", "resize=native", "--set", "sample_size=3000", "--set", "max_iter=50"])
assert res.exit_code == 0, res.output
print(sorted(m for m in ("distributed", "bigseg.estimator") if m in sys.modules))
"""


def test_a_threaded_run_imports_no_distributed(tmp_path, synth_dir):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(synth_dir / "images"), str(tmp_path / "o")],
                         env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['bigseg.estimator']"


SEGMENT = """
import sys
from click.testing import CliRunner
from bigseg.cli import main
res = CliRunner().invoke(main, ["segment", sys.argv[1], "--input", sys.argv[2], "--out", sys.argv[3], "--quiet"])
assert res.exit_code == 0, res.output
print(sorted(m for m in ("dask.array", "xarray", "pandas", "distributed", "sklearn", "matplotlib") if m in sys.modules))
"""


def test_segmenting_micrographs_of_one_chunk_imports_no_dask_array(tmp_path, synth_dir):
    """Each image is one task of the API's per-image path: dask.array (which imports xarray and pandas
    whenever they are installed, 0.4 s a process) is not needed, nor is scikit-learn or matplotlib."""
    fit = tmp_path / "fit"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(synth_dir / "images"), str(fit)],
                         env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = subprocess.run([sys.executable, "-c", SEGMENT, str(fit / "model"), str(synth_dir / "images"),
                          str(tmp_path / "seg")], env=env_for_subprocess(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
