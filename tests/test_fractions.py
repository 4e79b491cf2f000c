"""Phase fractions with units and uncertainty: per image (fraction, area in um^2), across images (mean, standard
deviation, the 95 % interval of the mean as ASTM E562 reports point counts), in the CSVs, summary.json and the API."""

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from bigseg import fractions

FRACTIONS = np.array([[0.20, 0.80], [0.30, 0.70], [0.25, 0.75], [0.35, 0.65]])


def test_the_interval_is_the_t_interval_of_the_mean():
    stats = fractions.collection_statistics(FRACTIONS)
    # t(0.975, 3) from a table: 3.182
    assert fractions.t_quantile(0.975, 3) == pytest.approx(3.182446, abs=1e-6)
    s = np.std(FRACTIONS[:, 0], ddof=1)
    half = 3.182446 * s / math.sqrt(4)
    assert stats["mean"][0] == pytest.approx(0.275) and stats["std"][0] == pytest.approx(s)
    assert (stats["ci_low"][0], stats["ci_high"][0]) == pytest.approx((0.275 - half, 0.275 + half), abs=1e-6)
    assert list(stats["images"]) == [4, 4] and np.isnan(stats["mean_area_um2"]).all()
    # one image says nothing of the spread
    one = fractions.collection_statistics(FRACTIONS[:1])
    assert one["mean"][0] == 0.2 and np.isnan(one["std"]).all() and np.isnan(one["ci_low"]).all()


def test_areas_need_the_pixel_size():
    areas = fractions.image_areas(FRACTIONS[:2], [100, 400], [0.5, None])
    np.testing.assert_allclose(areas[0], [0.2 * 100 * 0.25, 0.8 * 100 * 0.25])
    assert np.isnan(areas[1]).all()


def test_tables_summary_and_dataframes_read_one_computation(tmp_path):
    ids = ["micrograph2", "micrograph10", "micrograph3", "micrograph4"]
    entry = fractions.write_tables(tmp_path, ids, ["matrix", "=island"], ["matrix", "_=island"], FRACTIONS,
                                   [100] * 4, [0.5, 0.5, None, 0.5])
    with open(tmp_path / "phase_fractions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", "matrix", "_=island", "pixel_size_um", "matrix_um2", "_=island_um2"]
    assert rows[1] == ["micrograph2", "0.200000", "0.800000", "0.5", "5", "20"]
    assert rows[3][3:] == ["", "", ""]                        # no pixel size: no area
    stats = fractions.collection_statistics(FRACTIONS, fractions.image_areas(FRACTIONS, [100] * 4,
                                                                             [0.5, 0.5, None, 0.5]))
    assert entry["phases"][0]["mean"] == round(stats["mean"][0], 6)
    assert entry["phases"][0]["ci95_high"] == round(stats["ci_high"][0], 6)
    assert entry["phases"][1]["mean_area_um2"] == pytest.approx((20 + 17.5 + 16.25) / 3, abs=1e-6)
    with open(tmp_path / "phase_fractions_summary.csv", newline="") as fh:
        summary_rows = list(csv.DictReader(fh))
    assert [r["phase"] for r in summary_rows] == ["matrix", "'=island"]     # a name is never a formula
    assert float(summary_rows[0]["ci95_low"]) == entry["phases"][0]["ci95_low"]

    (tmp_path / "summary.json").write_text(json.dumps({"components": [{"name": "matrix"}, {"name": "=island"}],
                                                       "fractions": entry}))
    import bigseg

    table = bigseg.fractions_table(tmp_path)
    assert list(table.columns) == ["image", "phase", "fraction", "area_um2"] and len(table) == 8
    assert table.loc[1, "phase"] == "=island" and table.loc[1, "area_um2"] == 20
    assert math.isnan(table.loc[4, "area_um2"])
    summary = bigseg.fractions_summary(tmp_path)
    assert list(summary["phase"]) == ["matrix", "=island"]
    np.testing.assert_allclose(summary["ci95_low"], stats["ci_low"], atol=1e-6)
    np.testing.assert_allclose(summary["std"], stats["std"], atol=1e-6)


def test_a_run_writes_fractions_with_units_and_intervals(tmp_path, synth_dir):
    from bigseg.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--input", str(synth_dir / "images"), "--out", str(out), "-k", "3",
                                    "--set", "resize=native", "--set", "sample_size=6000", "--set", "max_iter=100",
                                    "--set", "pixel_size=0.02", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    phases = summary["fractions"]["phases"]
    assert [p["phase"] for p in phases] == [c["name"] for c in summary["components"]]
    assert all(p["images"] == summary["n_images"] and p["ci95_low"] <= p["mean"] <= p["ci95_high"] for p in phases)
    assert abs(sum(p["mean"] for p in phases) - 1) < 1e-4
    with open(out / "phase_fractions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c["column"] for c in summary["components"]]
    for row in rows:
        pixels = sum(float(row[f"{c}_um2"]) for c in columns) / 0.02 ** 2
        assert row["pixel_size_um"] == "0.02" and pixels == pytest.approx(round(pixels), abs=0.05)
    assert (out / "phase_fractions_summary.csv").exists()
    page = (out / "report.html").read_text()
    assert "95 % interval of the mean" in page and "mean area per image (µm²)" in page
    assert page.count('<table class="stats">') == 1
