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
