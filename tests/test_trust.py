"""Untrusted files and folders: links inside OUT, the lock file, CSV formulas, devices, FIFOs and huge values.

Every bad file here is made by the test; each case must end in one line naming the file or key, with nothing
written or deleted outside the output folder.
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bigseg import safety, store
from bigseg.cli import main
from bigseg.lock import LOCK_NAME, output_lock

FAST = ["--set", "resize=native", "--set", "chunk_size=64", "--set", "sample_size=3000", "--set", "max_iter=60",
        "-k", "2", "--quiet"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(res) -> str:
    assert "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def _images(synth_dir, tmp_path, n=2, names=None):
    d = tmp_path / "images"
    d.mkdir()
    for i, p in enumerate(sorted((synth_dir / "images").glob("*.png"))[:n]):
        shutil.copy(p, d / ((names[i] + p.suffix) if names else p.name))
    return d


def _victim(tmp_path):
    """A folder outside OUT holding a file; it must be the same after the run."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.json").write_text('{"mine": true}')
    return victim


def _unchanged(victim):
    assert sorted(p.name for p in victim.iterdir()) == ["keep.json"]
    assert (victim / "keep.json").read_text() == '{"mine": true}'


# --- links inside the output folder ------------------------------------------------------

@pytest.mark.parametrize("entry", ["labels", "records/segment", "store.zarr", "overlay", "model"])
def test_a_link_inside_out_is_refused_before_anything_is_written(tmp_path, synth_dir, entry):
    images = _images(synth_dir, tmp_path)
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    (out / entry).parent.mkdir(parents=True)
    os.symlink(victim, out / entry)
    res = _invoke("run", "--input", images, "--out", out, *FAST)
    line = _one_error_line(res)
    assert res.exit_code == 1 and str(out / entry) in line and "symbolic link" in line
    _unchanged(victim)
    assert not (out / "store.zarr").exists() or entry == "store.zarr"


def test_a_link_deep_inside_the_store_is_refused(tmp_path, synth_dir):
    images = _images(synth_dir, tmp_path)
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    (out / "store.zarr" / "images").mkdir(parents=True)
    os.symlink(victim, out / "store.zarr" / "images" / "a")
    res = _invoke("run", "--input", images, "--out", out, *FAST)
    assert res.exit_code == 1 and str(out / "store.zarr" / "images" / "a") in _one_error_line(res)
    _unchanged(victim)


def test_forgetting_a_segmentation_never_deletes_through_a_link(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    os.symlink(victim, out / "records" / "segment")
    with pytest.raises(safety.UnsafeFileError, match="symbolic link"):
        store.clear_segmentation(out, ("labels",))
    os.unlink(out / "records" / "segment")
    os.symlink(victim, out / "labels")
    with pytest.raises(safety.UnsafeFileError, match="labels"):
        store.clear_segmentation(out, ("labels",))
    _unchanged(victim)


# --- the lock file ---------------------------------------------------------------------

def test_a_lock_file_hard_linked_to_another_file_is_refused_and_the_file_kept(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.link(victim, out / LOCK_NAME)
    with pytest.raises(safety.UnsafeFileError, match="hard links") as info:
        with output_lock(out):
            pass
    assert str(out / LOCK_NAME) in str(info.value)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_a_lock_file_that_is_no_regular_file_is_refused_naming_it(tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / LOCK_NAME
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    else:
        (tmp_path / "elsewhere").write_text("x")
        os.symlink(tmp_path / "elsewhere", lock)
    res = _invoke("run", "--input", tmp_path, "--out", out, *FAST)
    line = _one_error_line(res)
    assert res.exit_code == 1 and str(lock) in line, line
    if kind == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "x"


# --- CSV formulas ------------------------------------------------------------------------

def test_csv_cells_that_start_a_formula_are_guarded_and_read_back():
    cells = ["=HYPERLINK(\"http://x\")", "@SUM(1+1)*cmd|' /C calc'!A0", "+A1", "-x", "\tx", "\rx", "'q", "plain",
             "0.250000", "-1.5", 3]
    guarded = safety.csv_row(cells)
    assert guarded[:7] == ["'" + c for c in cells[:7]]
    assert guarded[7:] == cells[7:]
    assert [safety.csv_value(c) for c in guarded[:-1]] == cells[:-1]


def test_image_names_that_start_a_formula_are_guarded_in_phase_fractions_csv(tmp_path, synth_dir):
    names = ["=HYPERLINK(1)", "@SUM(1+1)*cmd"]
    images = _images(synth_dir, tmp_path, names=names)
    out = tmp_path / "out"
    res = _invoke("run", "--input", images, "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    with open(out / "phase_fractions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert sorted(r[0] for r in rows[1:]) == sorted("'" + n for n in names)
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    # the report reads the names as they are
    html = (out / "report.html").read_text()
    assert "'=HYPERLINK" not in html


def test_a_run_into_its_input_folder_never_ingests_its_own_outputs(tmp_path, synth_dir):
    folder = _images(synth_dir, tmp_path, n=3)
    first = _invoke("run", "--input", folder, "--out", folder, *FAST)
    assert first.exit_code == 0, first.output
    assert (folder / "fingerprints.png").exists()
    again = _invoke("run", "--input", folder, "--out", folder, *FAST)
    assert again.exit_code == 0, again.output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_images"] == 3 and summary["segmented_this_run"] == 0
    assert sorted(p.stem for p in (folder / "labels").glob("*.png")) == sorted(p.stem for p in folder.glob("*.png")
                                                                             if p.name != "fingerprints.png")


def test_every_output_folder_and_csv_is_checked_and_guarded():
    """A folder added to the exports is checked for links too; every CSV is written through the guard."""
    import re
    from pathlib import Path

    from bigseg.export import EXPORT_DIRS
    from bigseg.lock import OUTPUT_ENTRIES

    assert set(EXPORT_DIRS) <= set(OUTPUT_ENTRIES)
    package = Path(__file__).resolve().parents[1] / "bigseg"
    for path in package.glob("*.py"):
        text = path.read_text()
        if path.name != "safety.py":
            assert not re.search(r"csv\.writer|\.writerow", text), f"{path.name} writes CSV without safety.csv_text"
        for name in re.findall(r'"([a-z_]+\.csv)"', text):
            if name != "pixel_size_csv.csv":
                assert name in OUTPUT_ENTRIES, f"{path.name} writes {name}, which lock.OUTPUT_ENTRIES does not list"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", ["records/ingest/a.json", "store.zarr/zarr.json", "summary.json"])
def test_a_fifo_inside_out_is_refused_by_name_without_blocking(tmp_path, synth_dir, entry):
    images = _images(synth_dir, tmp_path)
    out = tmp_path / "out"
    (out / entry).parent.mkdir(parents=True)
    os.mkfifo(out / entry)
    line = _one_error_line(_invoke("run", "--input", images, "--out", out, *FAST))
    assert str(out / entry) in line and "FIFO" in line


def test_a_damaged_completion_record_is_redone_not_a_traceback(tmp_path, synth_dir):
    images = _images(synth_dir, tmp_path)
    out = tmp_path / "out"
    assert _invoke("run", "--input", images, "--out", out, *FAST).exit_code == 0
    record = sorted((out / "records" / "segment").glob("*.json"))[0]
    record.write_text('{"fractions": ')
    res = _invoke("run", "--input", images, "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    assert json.loads(record.read_text())["fractions"]
