"""An output folder never holds results of two different things; one image failing costs only itself."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bigseg.cli import EXIT_SKIPPED, main
from bigseg.lock import LOCK_NAME
from conftest import ROOT, env_for_subprocess

ARGS = ["--set", "resize=native", "--set", "chunk_size=64", "--set", "sample_size=6000", "--set", "max_iter=100",
        "--quiet"]


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _labels(out):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((out / "labels").glob("*.png"))}


def _images(synth_dir, tmp_path, n=3):
    d = tmp_path / "images"
    d.mkdir()
    for p in sorted((synth_dir / "images").iterdir())[:n]:
        shutil.copy2(p, d / p.name)
    return d


def _csv_rows(out):
    """The header and rows of phase_fractions.csv up to its fraction columns (the areas follow them)."""
    lines = (out / "phase_fractions.csv").read_text().splitlines()
    k = lines[0].split(",").index("pixel_size_um")
    return lines[0].split(",")[:k], [line.split(",")[:k] for line in lines[1:]]


def test_second_run_on_a_busy_folder_names_the_holder_and_a_killed_holder_frees_it(tmp_path, synth_dir):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bigseg.lock import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)", str(out)],
        env=env_for_subprocess(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(out), "-k", "3"]
                                 + ARGS)
        assert res.exit_code != 0
        assert f"in use by process {holder.pid}" in res.output and str(out) in res.output
        assert "Traceback" not in res.output
        assert not (out / "store.zarr").exists()          # refused before any work
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the dead holder's lock: the stale lock file does not block
    assert (out / LOCK_NAME).exists()
    images = _images(synth_dir, tmp_path, 2)
    assert _run("run", "--input", str(images), "--out", str(out), "-k", "3", *ARGS).exit_code == 0


def test_segmenting_with_another_model_forgets_the_first_models_labels(tmp_path, synth_dir):
    images = _images(synth_dir, tmp_path, 3)
    a, b, shared = tmp_path / "a", tmp_path / "b", tmp_path / "shared"
    assert _run("run", "--input", str(images), "--out", str(a), "-k", "3", *ARGS).exit_code == 0
    assert _run("run", "--input", str(images), "--out", str(b), "-k", "4", *ARGS).exit_code == 0
    assert _run("segment", str(a / "model"), "--input", str(images), "--out", str(shared), "--quiet").exit_code == 0
    one = sorted(images.iterdir())[0]
    res = _run("segment", str(b / "model"), "--input", str(one), "--out", str(shared), "--quiet")
    assert res.exit_code == 0
    summary = json.loads((shared / "summary.json").read_text())
    assert summary["segmented_this_run"] == 1 and len(summary["components"]) == 4
    # only model b's label map is left; the csv's rows are model b's and sum to one
    assert set(_labels(shared)) == {one.stem}
    np.testing.assert_array_equal(_labels(shared)[one.stem], _labels(b)[one.stem])
    header, rows = _csv_rows(shared)
    assert len(header) == 5 and [r[0] for r in rows] == [one.stem]
    assert abs(sum(float(v) for v in rows[0][1:]) - 1) < 1e-5
    assert len(list((shared / "records" / "segment").glob("*.json"))) == 1


def test_an_input_replaced_in_place_is_read_again_and_the_fit_redone(tmp_path, synth_dir):
    images = _images(synth_dir, tmp_path, 3)
    out, clean = tmp_path / "out", tmp_path / "clean"
    assert _run("run", "--input", str(images), "--out", str(out), "-k", "3", *ARGS).exit_code == 0
    first = sorted(images.iterdir())[0]
    # the same name, other content (another synthetic micrograph, written over it)
    other = sorted((synth_dir / "images").iterdir())[4]
    arr = np.asarray(Image.open(other).convert("L"))
    Image.fromarray(arr).save(first, format=Image.open(first).format)
    res = _run("run", "--input", str(images), "--out", str(out), "-k", "3", *ARGS)
    assert res.exit_code == 0
    assert "3 segmented by this run" in res.output      # a new image set: refit, every map redone
    assert _run("run", "--input", str(images), "--out", str(clean), "-k", "3", *ARGS).exit_code == 0
    got, want = _labels(out), _labels(clean)
    assert got.keys() == want.keys()
    for stem in want:
        np.testing.assert_array_equal(got[stem], want[stem], err_msg=stem)
    # unchanged inputs: nothing is redone
    assert "0 segmented by this run" in _run("run", "--input", str(images), "--out", str(out), "-k", "3",
                                             *ARGS).output


def test_a_fit_on_a_subset_is_redone_once_the_failed_image_reads(tmp_path, synth_dir):
    images = _images(synth_dir, tmp_path, 3)
    out, clean = tmp_path / "out", tmp_path / "clean"
    victim = sorted(images.iterdir())[1]
    good = victim.read_bytes()
    victim.write_bytes(b"not an image")                  # a transient failure: unreadable for now
    res = _run("run", "--input", str(images), "--out", str(out), "-k", "3", *ARGS)
    assert res.exit_code == EXIT_SKIPPED and victim.name in res.output
    victim.write_bytes(good)
    assert _run("run", "--input", str(images), "--out", str(out), "-k", "3", *ARGS).exit_code == 0
    assert _run("run", "--input", str(images), "--out", str(clean), "-k", "3", *ARGS).exit_code == 0
    got, want = _labels(out), _labels(clean)
    assert got.keys() == want.keys() and len(want) == 3
    for stem in want:
        np.testing.assert_array_equal(got[stem], want[stem], err_msg=stem)
    assert (json.loads((out / "model" / "model.json").read_text())["report"]["inputs"]
            == json.loads((clean / "model" / "model.json").read_text())["report"]["inputs"])


def test_one_image_failing_at_export_is_skipped_and_the_batch_completes(tmp_path, synth_dir):
    images = _images(synth_dir, tmp_path, 3)
    out = tmp_path / "out"
    blocked = sorted(images.iterdir())[0].stem
    (out / "labels" / f"{blocked}.png").mkdir(parents=True)     # an output path that is a folder
    res = _run("run", "--input", str(images), "--out", str(out), "-k", "3", *ARGS)
    assert res.exit_code == EXIT_SKIPPED
    assert "skipped [segment]" in res.output and blocked in res.output and "Traceback" not in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and [s["id"] for s in summary["skipped"]] == [blocked]
    header, rows = _csv_rows(out)
    assert sorted(r[0] for r in rows) == sorted(p.stem for p in images.iterdir() if p.stem != blocked)
    # fixed, the re-run does only that image
    (out / "labels" / f"{blocked}.png").rmdir()
    res = _run("run", "--input", str(images), "--out", str(out), "-k", "3", *ARGS)
    assert res.exit_code == 0 and "1 segmented by this run" in res.output


def test_a_read_only_output_folder_is_one_clear_line(tmp_path, synth_dir):
    import os

    if os.geteuid() == 0:
        # root writes into read-only folders; under a file no one can create a folder
        (tmp_path / "a_file").write_text("not a folder")
        out = tmp_path / "a_file" / "out"
    else:
        out = tmp_path / "ro" / "out"
        out.parent.mkdir()
        out.parent.chmod(0o500)
    res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(out)] + ARGS)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert f"output folder {out}: cannot write there" in res.output


@pytest.mark.timeout(120)
def test_ctrl_c_stops_a_run(tmp_path, synth_dir):
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bigseg.cli", "run", "--input", str(synth_dir / "images"),
                             "--out", str(tmp_path / "out"), "-k", "3"] + ARGS,
                            env=env_for_subprocess(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    store = tmp_path / "out" / "store.zarr"
    t0 = time.time()
    while not store.exists() and time.time() - t0 < 60:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run went on after Ctrl-C: " + (tmp_path / "log.txt").read_text()[-2000:])
    assert proc.returncode != 0
    assert not (tmp_path / "out" / "summary.json").exists()
