"""Multi-file updates of an output folder: checked before anything changes, finished by the next run when
stopped half-way, and no temporary file of a killed writer left behind."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bigseg import rename, viz
from bigseg.cli import main

ARGS = ["-k", "2", "--quiet", "--set", "resize=native", "--set", "sample_size=3000", "--set", "max_iter=60",
        "--set", "chunk_size=64"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synth_dir):
    base = tmp_path_factory.mktemp("half")
    images = base / "images"
    images.mkdir()
    for p in sorted((synth_dir / "images").glob("*.png"))[:2]:
        shutil.copy(p, images / p.name)
    out = base / "out"
    res = _invoke("run", "--input", images, "--out", out, *ARGS)
    assert res.exit_code == 0, res.output
    return out, images


@pytest.fixture
def run(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    return out, finished[1]


def _digests(out):
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".bigseg.lock"}


def _shown_names(out):
    return {p.name: viz.read_meta(p)["names"] for d in ("overlay", "activations") for p in (out / d).glob("*.png")}


def _consistent(out, names):
    assert set(map(tuple, _shown_names(out).values())) == {tuple(names)}
    assert json.loads((out / "model" / "model.json").read_text())["phase_names"] == names
    assert [c["name"] for c in json.loads((out / "summary.json").read_text())["components"]] == names
    assert not (out / rename.PENDING).exists()


def _error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code != 0 and "Traceback" not in res.output and len(lines) == 1, res.output
    return lines[0]


def test_a_rename_meeting_a_truncated_summary_changes_nothing_and_names_it(run):
    out, _ = run
    text = (out / "summary.json").read_text()
    (out / "summary.json").write_text(text[: len(text) // 2])
    before = _digests(out)
    line = _error_line(_invoke("rename", out, "0=matrix"))
    assert str(out / "summary.json") in line
    assert _digests(out) == before


def test_a_rename_meeting_a_damaged_overlay_changes_nothing_and_names_it(run):
    out, _ = run
    victim = sorted((out / "overlay").glob("*.png"))[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: data.index(b"IDAT") + 40])      # the layout is there, the pixels are not
    before = _digests(out)
    line = _error_line(_invoke("rename", out, "0=matrix"))
    assert str(victim) in line and "damaged" in line
    assert _digests(out) == before
    assert not list(out.rglob("*.tmp"))


def test_files_in_overlay_that_bigseg_did_not_draw_are_left_alone(run):
    out, _ = run
    (out / "overlay" / "notes.png").write_text("not a picture")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "overlay" / "mine.png")
    (out / "overlay" / "readme.txt").write_text("mine")
    res = _invoke("rename", out, "0=matrix", "1=pores")
    assert res.exit_code == 0, res.output
    assert (out / "overlay" / "notes.png").read_text() == "not a picture"
    for stray in ("notes.png", "mine.png"):
        (out / "overlay" / stray).unlink()
    _consistent(out, ["matrix", "pores"])


def test_a_rename_stopped_half_way_is_finished_by_the_next_run(run, monkeypatch):
    out, images = run
    from bigseg import store

    original = store.rename_phases

    def full_disk(root, names):
        if not names:               # the check before anything changes reads the store as it is
            return original(root, names)
        raise OSError(28, "No space left on device", str(out / "store.zarr"))

    monkeypatch.setattr(store, "rename_phases", full_disk)
    res = _invoke("rename", out, "0=matrix", "1=pores")
    assert "No space left on device" in _error_line(res) and str(out / "store.zarr") in res.output
    assert (out / rename.PENDING).exists()        # pictures renamed, the model not yet
    monkeypatch.undo()
    res = _invoke("run", "--input", images, "--out", out, *ARGS)
    assert res.exit_code == 0, res.output
    _consistent(out, ["matrix", "pores"])


def test_phase_names_of_a_run_stopped_half_way_are_finished_by_the_next_run(run, monkeypatch):
    out, images = run
    calls = []

    def fail_second(path, names, palette=viz.PALETTE):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt        # killed while drawing the legends
        return original(path, names, palette)

    original = viz.relegend_overlay
    monkeypatch.setattr(viz, "relegend_overlay", fail_second)
    res = _invoke("run", "--input", images, "--out", out, *ARGS, "--set", "phase_names=[matrix, pores]")
    assert res.exit_code != 0
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    res = _invoke("run", "--input", images, "--out", out, *ARGS)
    assert res.exit_code == 0, res.output
    _consistent(out, ["matrix", "pores"])


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_run_and_no_others(run):
    out, images = run
    left = [out / "overlay" / ".a.png.k3j_9x2q.tmp", out / "labels" / ".bigseg-0123456789abcdef.ab12cd34.tmp",
            out / ".summary.json.abcdefgh.tmp"]
    kept = [out / "overlay" / ".mine.tmp", out / "overlay" / "a.png.tmp", out / "notes.tmp"]
    for p in left + kept:
        p.write_text("x")
    res = _invoke("run", "--input", images, "--out", out, *ARGS)
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in left)
    assert all(p.exists() for p in kept)


def test_an_image_name_of_250_bytes_is_segmented(tmp_path, synth_dir):
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((synth_dir / "images").glob("*.png"))[:2]
    long_stem = "m" * 246
    shutil.copy(sources[0], images / f"{long_stem}.png")
    shutil.copy(sources[1], images / "short.png")
    res = _invoke("run", "--input", images, "--out", tmp_path / "out", *ARGS)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "overlay" / f"{long_stem}.png").exists()


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    import os

    from bigseg import io

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "labels" / "a.png"
    with pytest.raises(OSError) as info:
        io.atomic_write_bytes(target, b"x" * 100)
    assert info.value.filename == str(target) and info.value.errno == 28
    assert not list((tmp_path / "labels").iterdir())         # no temporary file left
