"""Bad command lines end before any work with one line naming what to change."""

from click.testing import CliRunner

from bigseg.cli import main


def test_select_k_beyond_the_feature_count_is_refused_up_front(tmp_path, synth_dir):
    res = CliRunner().invoke(main, ["select-k", "--input", str(synth_dir / "images"), "--out", str(tmp_path / "k"),
                                    "--k-max", "7", "--set", "features=[intensity,blur]",
                                    "--set", "n_components=2"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--k-max (7) is above the 3 features" in res.output
    assert not (tmp_path / "k").exists()


def test_a_shipped_config_is_found_by_name(tmp_path):
    res = CliRunner().invoke(main, ["run", "metaldam", "--input", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert "metaldam" not in res.output and "is neither a file, a folder nor a glob" in res.output
    res = CliRunner().invoke(main, ["run", "no-such-config", "--input", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no-such-config" in res.output and "does not exist" in res.output


def test_evaluate_refuses_missing_and_non_mask_labels_in_one_line(tmp_path, synth_dir):
    import numpy as np
    from PIL import Image

    preds, masks = tmp_path / "pred", tmp_path / "masks"
    preds.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(preds / "a.png")
    res = CliRunner().invoke(main, ["evaluate", str(preds), "--labels", str(masks)])
    assert res.exit_code == 1 and "Traceback" not in res.output and "no prediction in" in res.output
    Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30).astype(np.uint8)).save(masks / "a.png")
    res = CliRunner().invoke(main, ["evaluate", str(preds), "--labels", str(masks)])
    assert res.exit_code == 1 and "distinct values, not class indices" in res.output
    res = CliRunner().invoke(main, ["evaluate", str(preds), "--labels", str(masks), "--n-classes", "3"])
    assert res.exit_code == 1 and "but --n-classes is 3" in res.output


def test_broken_yaml_is_one_line_naming_the_file_and_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("resize: [512\n")
    res = CliRunner().invoke(main, ["run", str(bad), "--input", str(tmp_path), "--out", str(tmp_path / "o")])
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 2 and len(error) == 1 and "line 2, column 1" in error[0] and str(bad) in error[0]
    assert res.output.rstrip().endswith(error[0])      # no caret lines after it


def test_when_every_input_is_skipped_the_error_says_why(tmp_path, synth_dir):
    res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(tmp_path / "o"),
                                    "--set", "resize=physical", "--set", "target_pixel_size=0.1", "--quiet"])
    assert res.exit_code == 1 and "every input was skipped (" in res.output and "pixel size is unknown" in res.output


def test_a_file_whose_name_zarr_reserves_is_skipped_by_name(tmp_path, synth_dir):
    import shutil

    images = tmp_path / "in"
    images.mkdir()
    for p in sorted((synth_dir / "images").glob("*.png"))[:2]:
        shutil.copy(p, images / p.name)
    shutil.copy(p, images / "zarr.json.png")
    res = CliRunner().invoke(main, ["run", "--input", str(images), "--out", str(tmp_path / "o"), "-k", "2",
                                    "--quiet", "--set", "resize=native", "--set", "sample_size=3000"])
    assert res.exit_code == 3 and "'zarr.json' is reserved by Zarr" in res.output and "Traceback" not in res.output
