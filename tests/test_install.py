"""Installing bigseg the README's way, and where its compiled numba kernel is cached.

The README installs a wheel (``pip install .``), runs the demo, then installs
editable (``pip install -e ".[test]"``) into the same environment. Numba's
default cache wrote into the wheel's package folder, pip left that folder
behind, and it then shadowed the editable install as an empty namespace
package: every later ``bigseg`` failed to import. These tests replay that
sequence in a fresh virtual environment and check the cache stays out of
every package folder.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from bigseg import __version__

ROOT = Path(__file__).resolve().parents[1]
CACHE_FILES = ("*.nbi", "*.nbc")


def _clean_env(tmp_path: Path, **extra: str) -> dict:
    """Environment for child processes: nothing that would pick a bigseg other than the installed one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NUMBA_CACHE_DIR", "PYTHONSTARTUP")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


def _run(cmd, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def _cache_files(folder: Path) -> list[Path]:
    return [p for pattern in CACHE_FILES for p in folder.rglob(pattern)] if folder.exists() else []


def _copy_checkout(dest: Path) -> Path:
    """The working tree as git would commit it (uncommitted edits included), without builds and caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = None                                          # not a git checkout (e.g. an sdist)
    if listed is None:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", "*.nbi", "*.nbc"))
        return dest
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():                                      # tracked files deleted in the tree are listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _fresh_venv(path: Path) -> tuple[Path, Path]:
    """A new virtual environment that sees this environment's packages but holds no bigseg.

    Without pip, so pip and setuptools are this environment's (ensurepip's bundled
    setuptools cannot build a wheel offline); this environment's site-packages are
    listed in a .pth file rather than ``--system-site-packages``, which would give the
    base interpreter's when the tests themselves run in a virtual environment (CI).
    A plain path in a .pth runs none of that folder's own .pth files, so this
    environment's editable bigseg stays invisible there.
    """
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                       capture_output=True, timeout=120)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a virtual environment with {sys.executable} -m venv: {exc}")
    bindir = Path(sysconfig.get_path("scripts", vars={"base": str(path), "platbase": str(path)}))
    python = bindir / Path(sys.executable).name
    if not python.exists():
        python = next(bindir.glob("python*"))
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    outer = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (purelib / "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in outer if os.path.isdir(p)))
    return python, purelib


def test_readme_install_sequence_leaves_a_working_editable_bigseg(tmp_path):
    python, purelib = _fresh_venv(tmp_path / "venv")
    bigseg = python.parent / "bigseg"
    src = _copy_checkout(tmp_path / "src")
    env = _clean_env(tmp_path)
    # offline: every dependency is already installed in this environment
    pip = [python, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-index"]

    # README, first line: the wheel, then the demo
    _run(pip + ["."], src, env)
    installed = purelib / "bigseg"
    assert (installed / "__init__.py").is_file()
    for name in ("default.yaml", "metaldam.yaml"):
        assert (installed / "configs" / name).is_file(), sorted(p.name for p in installed.iterdir())
    demo = _run([bigseg, "demo", "demo-out", "--n-images", "2", "--quiet"], tmp_path, env)
    assert "2 image(s) done" in demo.stdout
    assert not [p for d in purelib.glob("bigseg*") for p in _cache_files(d)], "numba cache in site-packages"
    assert _cache_files(tmp_path / "xdg-cache" / "bigseg" / "numba"), "the kernel was not cached per user"

    # README, second line: editable, in the same environment
    _run(pip + ["-e", ".[test]"], src, env)
    assert not installed.exists(), f"left behind by the wheel: {sorted(map(str, installed.rglob('*')))}"
    version = _run([bigseg, "--version"], tmp_path, env)
    assert __version__ in version.stdout
    where = _run([python, "-c", "import bigseg, importlib.resources as r; print(bigseg.__file__); "
                  "print(r.files('bigseg.configs').joinpath('default.yaml').is_file())"], tmp_path, env)
    assert where.stdout.split() == [str(src / "bigseg" / "__init__.py"), "True"], where.stdout
    # a command that runs the compiled kernel, from the editable source this time
    image = sorted((tmp_path / "demo-out" / "demo_data" / "images").iterdir())[0]
    _run([bigseg, "segment", tmp_path / "demo-out" / "run" / "model", "--input", image,
          "--out", tmp_path / "again", "--quiet"], tmp_path, env)
    assert (tmp_path / "again" / "labels").is_dir()
    assert not _cache_files(src / "bigseg"), "numba cache in the source tree"


KERNEL_CALL = textwrap.dedent("""
    import numpy as np
    from bigseg import nnls
    kernel = nnls._compiled()
    assert kernel is not None, "numba missing"
    W = nnls.solve(np.random.default_rng(0).random((50, 6)), np.random.default_rng(1).random((3, 6)))
    assert W.shape == (50, 3)
    print(type(kernel._cache).__name__, nnls.cache_dir())
""")


def _kernel_in_a_copy(tmp_path: Path, env: dict) -> tuple[str, Path]:
    """Run the kernel from a copy of the package, so any cache written beside it is seen (and ROOT stays clean)."""
    pytest.importorskip("numba")
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "bigseg", pkg / "bigseg", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(env, PYTHONPATH=str(pkg))
    out = _run([sys.executable, "-c", KERNEL_CALL], tmp_path, env, timeout=120).stdout
    return out, pkg


def test_kernel_caches_in_the_per_user_folder(tmp_path):
    out, pkg = _kernel_in_a_copy(tmp_path, _clean_env(tmp_path))
    assert out.split() == ["FunctionCache", str(tmp_path / "xdg-cache" / "bigseg" / "numba")]
    assert _cache_files(tmp_path / "xdg-cache" / "bigseg" / "numba")
    assert not _cache_files(pkg)


def test_kernel_respects_numba_cache_dir(tmp_path):
    out, pkg = _kernel_in_a_copy(tmp_path, _clean_env(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "mine")))
    assert out.split() == ["FunctionCache", str(tmp_path / "mine")]
    assert _cache_files(tmp_path / "mine") and not _cache_files(tmp_path / "xdg-cache")
    assert not _cache_files(pkg)


@pytest.mark.parametrize("blocked", ["file", "read-only"])
def test_unwritable_cache_folder_compiles_without_a_cache(tmp_path, blocked):
    """An unwritable cache folder costs compile time, never a crash nor a cache inside the package
    (numba itself would fall back to the package's __pycache__)."""
    home = tmp_path / "home"
    if blocked == "file":
        home.write_text("")                                   # a file where the folder should be: even root fails
    else:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        home.mkdir()
        home.chmod(0o555)
    env = _clean_env(tmp_path, HOME=str(home), XDG_CACHE_HOME=str(home))
    try:
        out, pkg = _kernel_in_a_copy(tmp_path, env)
    finally:
        if home.is_dir():
            home.chmod(0o755)
    assert out.split() == ["NullCache", "None"]
    assert not _cache_files(pkg) and not _cache_files(home if home.is_dir() else tmp_path / "none")


def test_every_package_is_listed_for_the_wheel():
    """pyproject lists its packages (find cannot map configs/ to bigseg.configs): a new one must be added."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = pytest.importorskip("setuptools")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(setuptools.find_packages(str(ROOT), include=["bigseg", "bigseg.*"]))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


#: the [test-full] extra's packages (import names): the README's light [test] leaves them out
HEAVY_TEST_MODULES = ("napari", "napari_ome_zarr", "playwright", "ome_zarr_models", "dask_jobqueue")


def test_the_test_extra_is_light_and_the_full_one_adds_the_viewer_browser_and_cluster_packages():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {key: {req.split(">")[0].split("[")[0].split("=")[0].strip().lower() for req in reqs}
             for key, reqs in extras.items()}
    heavy = {"napari-ome-zarr", "playwright", "ome-zarr-models", "dask-jobqueue", "napari"}
    assert not names["test"] & heavy and "pytest" in names["test"]
    assert "bigseg[test,cluster]" in extras["test-full"] and heavy - {"napari", "dask-jobqueue"} <= names["test-full"]
    # no test module imports them at its top: a test needing one asks conftest.need, so under [test] it skips
    # naming the package (and fails under BIGSEG_REQUIRE_FULL=1, as .ci/run sets it)
    for path in sorted((ROOT / "tests").glob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if line[:1].isalpha() and words[0] in ("import", "from"):
                assert words[1].split(".")[0] not in HEAVY_TEST_MODULES, f"{path.name}: {line}"
