"""What a run prints: one labelled progress bar per stage on stderr, results on stdout, each warning once."""

import json
import re
import shutil
import subprocess

import dask
import pytest

from bigseg.cluster import Runner
from conftest import bigseg_cmd, env_for_subprocess

FAST = ["--set", "resize=native", "--set", "chunk_size=64", "--set", "sample_size=6000", "--set", "max_iter=100",
        "-k", "3"]
#: what a tqdm bar draws; none of it may reach stdout, where results go
BAR_MARKS = ("\r", "█", "%|", "it/s", "s/it", "image/s", "s/image")
#: the rate a stage's bar ends with: tqdm writes images a second, or seconds an image when a stage is slower
#: than one image a second (a busy machine), so no assertion may pick one
RATE = re.compile(r"(\d+(\.\d+)?|\?)(image/s|s/image)")


def _bigseg(*args):
    res = subprocess.run(bigseg_cmd() + [str(a) for a in args], env=env_for_subprocess(), capture_output=True,
                         timeout=300)
    # decoded by hand: text mode would turn the bar's \r into \n
    res.stdout, res.stderr = res.stdout.decode("utf-8"), res.stderr.decode("utf-8")
    assert res.returncode == 0, res.stderr
    return res


def _bar_lines(stderr: str, stage: str) -> list[str]:
    """The lines of ``stderr`` that hold ``stage``'s bar, each as last drawn (a bar redraws after ``\\r``)."""
    return [line.split("\r")[-1] for line in stderr.split("\n") if line.split("\r")[-1].startswith(f"{stage}:")]


@pytest.fixture(scope="module")
def finished(synth_dir, tmp_path_factory):
    """One run with features stored (three stages with bars), without --quiet: its output and folder."""
    out = tmp_path_factory.mktemp("console") / "out"
    return _bigseg("run", "--input", synth_dir / "images", "--out", out, "--set", "store_features=true", *FAST), out


def test_progress_goes_to_stderr_as_one_labelled_line_per_stage_with_the_overall_count(finished, synth_dir):
    res, _ = finished
    n = len(list((synth_dir / "images").iterdir()))
    assert res.stdout.splitlines() == [f"{n} image(s) done ({n} segmented by this run)"]
    assert not [m for m in BAR_MARKS if m in res.stdout]
    for stage in ("ingest", "features", "segment"):
        lines = _bar_lines(res.stderr, stage)
        assert len(lines) == 1, (stage, res.stderr)
        # the whole stage's count (not a batch's), the elapsed<remaining time and the rate
        assert "100%" in lines[0] and f"{n}/{n} [" in lines[0] and "<" in lines[0] and RATE.search(lines[0]), lines
    # dask's own bar (unlabelled "[####  ] | 40% Completed") is gone
    assert "Completed" not in res.stderr + res.stdout


def test_each_warning_is_one_bigseg_line_shown_once(finished):
    res, _ = finished
    text = [line.split("\r")[-1] for line in res.stderr.split("\n")]
    words = [line for line in text if line and not line.startswith(("ingest:", "features:", "segment:", "fit:"))]
    assert all(line.startswith("bigseg: ") for line in words), words
    assert sum("stopped at max_iter" in line for line in words) == 1
    assert "Warning:" not in res.stderr


def test_quiet_prints_only_the_closing_line(synth_dir, tmp_path):
    res = _bigseg("run", "--input", synth_dir / "images", "--out", tmp_path / "out", *FAST, "--quiet")
    n = len(list((synth_dir / "images").iterdir()))
    assert res.stderr == ""
    assert res.stdout == f"{n} image(s) done ({n} segmented by this run)\n"


@pytest.fixture(scope="module")
def two_images(synth_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("two")
    for sub in ("images", "labels"):
        (d / sub).mkdir()
    for p in sorted((synth_dir / "images").iterdir())[:2]:
        shutil.copy2(p, d / "images" / p.name)
        shutil.copy2(synth_dir / "labels" / f"{p.stem}.png", d / "labels" / f"{p.stem}.png")
    return d


def test_scikit_learns_convergence_warning_is_one_line_once_and_quiet_silences_it(two_images, tmp_path):
    # the plain NMF baseline stops at max_iter=5: scikit-learn warns (from Python's warnings module)
    args = ["compare", "--input", two_images / "images", "--labels", two_images / "labels",
            "--set", "resize=native", "--set", "chunk_size=64", "--set", "sample_size=3000", "--set", "max_iter=5",
            "-k", "3"]
    loud = _bigseg(*args, "--out", tmp_path / "loud")
    lines = [line for line in loud.stderr.splitlines() if "ConvergenceWarning" in line]
    assert len(lines) == 1 and lines[0].startswith("bigseg: "), loud.stderr
    assert "Warning:" not in loud.stderr and "warnings.warn" not in loud.stderr
    quiet = _bigseg(*args, "--out", tmp_path / "quiet", "--quiet")
    assert quiet.stderr == ""
    assert "Warning" not in quiet.stdout


def test_fit_warns_that_it_stopped_at_max_iter_where_max_iter_can_be_raised(finished):
    _, out = finished
    res = _bigseg("fit", "--out", out, "--set", "store_features=true", *FAST)     # reuses the run's fit
    assert json.loads(res.stdout)["converged"] is False
    assert sum("stopped at max_iter" in line for line in res.stderr.splitlines()) == 1


def test_segment_does_not_warn_about_a_fit_it_did_not_make(finished, synth_dir, tmp_path):
    _, out = finished
    res = _bigseg("segment", out / "model", "--input", synth_dir / "images", "--out", tmp_path / "new")
    assert "max_iter" not in res.stderr, res.stderr


# --- the Runner's bar, in process ---------------------------------------------------------------

def _stage(runner, monkeypatch, n_items=7, fail=(4,), done=(2,)):
    """compute_batches over ``n_items`` in batches of 2; ``fail`` items raise, ``done`` ones are not built."""
    monkeypatch.setattr(Runner, "batch_images", property(lambda self: 2))
    failed = []

    def build(i):
        if i in done:
            return None
        return dask.delayed(lambda x: 1 / 0 if x in fail else x * 10)(i)

    results = runner.compute_batches(range(n_items), build, "segment", on_error=lambda i, exc: failed.append(i))
    return results, failed


def test_the_stage_bar_counts_every_item_across_batches_and_results_stay_the_same(monkeypatch, capsys):
    results, failed = _stage(Runner(quiet=True), monkeypatch)
    assert capsys.readouterr().err == ""                           # quiet: no bar
    assert results == [0, 10, 30, 50, 60] and failed == [4]
    assert _stage(Runner(), monkeypatch) == (results, failed)
    (line,) = _bar_lines(capsys.readouterr().err, "segment")
    # resumed and failed items count too: the bar ends at the stage's total
    assert "7/7" in line and "1 failed" in line


def test_the_stage_bar_on_a_distributed_client(monkeypatch, capsys):
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        quiet = _stage(Runner(client, quiet=True), monkeypatch)
        assert quiet == ([0, 10, 30, 50, 60], [4])
        capsys.readouterr()
        assert _stage(Runner(client), monkeypatch) == quiet
    (line,) = _bar_lines(capsys.readouterr().err, "segment")
    assert "7/7" in line and "1 failed" in line


def test_computes_inside_one_progress_count_on_its_bar(capsys):
    import dask.array as da

    r = Runner()
    with r.progress("segment big", 3, unit="band"):
        assert r.compute([da.ones(10, chunks=5).sum()], "segment big: rows 0-5") == [10]
        assert r.compute([dask.delayed(int)(1), dask.delayed(int)(2)], "segment big: rows 5-10") == [1, 2]
    (line,) = _bar_lines(capsys.readouterr().err, "segment big")
    assert "3/3" in line and "band" in line


# --- the long steps: the fit, select-k, one large image -------------------------------------------------------

def test_a_step_bar_counts_computed_objects_only_up_to_its_counted_part(capsys):
    r = Runner()
    with r.progress("fit", 4 + 2, "step", counted=4, note="sampling pixels", after="NMF") as bar:
        assert r.compute([dask.delayed(int)(i) for i in range(3)]) == [0, 1, 2]
        assert bar.bar.n == 3
        r.compute([dask.delayed(int)(i) for i in range(5)])          # later computations: not counted past 4
        assert bar.bar.n == 4 and bar.bar.postfix == "NMF"
        bar.step("boundary components")
        assert bar.bar.n == 5 < bar.bar.total                         # never the total while a step is left
        bar.finish()
    (line,) = _bar_lines(capsys.readouterr().err, "fit")
    assert "100%" in line and "6/6" in line


def test_the_fit_shows_its_progress_and_reaches_its_total_only_when_the_model_is_saved(synth_dir, tmp_path,
                                                                                        monkeypatch, capsys):
    """The fit's bar while it runs: the sampled images, then a step each for the NMF and the boundary components;
    read where the fit calls its hooks, so the test does not depend on speed."""
    from bigseg import config, io, pipeline, regions

    runner = Runner()
    seen = []

    def spy(name, func):
        def call(*args, **kwargs):
            bar = runner._stage_bar
            seen.append((name, bar.bar.n, bar.bar.total, (tmp_path / "out" / "model").exists()))
            return func(*args, **kwargs)
        return call

    monkeypatch.setattr(regions, "find_transitions", spy("boundaries", regions.find_transitions))
    monkeypatch.setattr(regions, "choose_assignment", spy("assignment", regions.choose_assignment))
    settings = config.validate({"resize": "native", "chunk_size": 64, "sample_size": 6000, "max_iter": 100,
                                "n_components": 3})
    ids, _ = pipeline.ingest(io.find_images([synth_dir / "images"]), tmp_path / "out", settings, runner)
    capsys.readouterr()
    pipeline.fit_stage(tmp_path / "out", ids, settings, runner)
    n = len(ids)
    assert seen == [("boundaries", n + 1, n + 3, False), ("assignment", n + 2, n + 3, False)]
    (line,) = _bar_lines(capsys.readouterr().err, "fit")
    assert "100%" in line and f"{n + 3}/{n + 3}" in line


def test_the_fit_bar_tells_of_each_fit_of_the_auto_k_scan(synth_dir, tmp_path, monkeypatch):
    """``n_components: auto`` scans k before the NMF; the fit's bar says which fit of which k runs."""
    from bigseg import cluster, config, io, pipeline, selectk

    notes = []
    note = cluster.StepBar.note
    monkeypatch.setattr(cluster.StepBar, "note", lambda self, text: (notes.append(text), note(self, text)))
    runner = Runner()
    settings = config.validate({"resize": "native", "chunk_size": 64, "sample_size": 3000, "max_iter": 50,
                                "n_components": "auto", "void_class": "off"})
    ids, _ = pipeline.ingest(io.find_images([synth_dir / "images"]), tmp_path / "out", settings, runner)
    model = pipeline.fit_stage(tmp_path / "out", ids, settings, runner)
    ks = [row["k"] for row in model.report["n_components_auto"]["scan"]]
    assert ks and [n for n in notes if n.startswith("n_components auto")] == [
        f"n_components auto: k={k}, fit {seed} of {selectk.AUTO_SEEDS}" for k in ks for seed in range(1, selectk.AUTO_SEEDS + 1)]


def test_select_k_tells_of_each_fit():
    import numpy as np

    from bigseg import config, selectk

    X = np.random.default_rng(0).random((400, 6))
    calls = []
    selectk.scan(X, [2, 3], config.validate({"max_iter": 50}), n_seeds=2, progress=lambda k, s: calls.append((k, s)))
    assert calls == [(2, 0), (2, 1), (3, 0), (3, 1)]


def test_one_image_of_many_tiles_shows_its_tasks_on_the_stage_bar(capsys):
    import dask.array as da

    r = Runner()
    with r.progress("segment", 1) as bar:
        assert r.compute([(da.ones((64, 64), chunks=8) + 1).sum()]) == [2 * 64 * 64]
        done, total = (int(v) for v in re.fullmatch(r"(\d+)/(\d+) tasks", bar.postfix).groups())
        assert 0 < done <= total and total >= 64
    with r.progress("segment", 2) as bar:               # objects of a task or two: no tasks shown
        r.compute([dask.delayed(int)(1), dask.delayed(int)(2)])
        assert not bar.postfix
