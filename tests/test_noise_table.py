"""Noise-table CSV: the shipped synthetic example, a round trip, and bad tables named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.noise_table import read_noise_table, write_noise_table
from pipeline.train import train_config

EXAMPLE = Path(__file__).parent.parent / "pipeline/examples/noise_table_psq1bit_synthetic.csv"


def test_example_is_marked_synthetic_and_fits_the_1bit_scheme():
    assert "SYNTHETIC" in EXAMPLE.read_text().splitlines()[0]
    lo, table = read_noise_table(EXAMPLE)
    assert lo == -256 and len(table) == 513 and all(len(r) == 2 for r in table)
    assert table[0][0] > 0.999 and table[-1][1] > 0.999  # saturates at both ends
    cfg = train_config("test_resnet", psq="1bit", weight_bits=1, noise_table=str(EXAMPLE))
    assert cfg.chip_path


def test_round_trip(tmp_path):
    rows = [[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.2, 0.8]]
    write_noise_table(tmp_path / "t.csv", -1, rows, "synthetic\nthree rows")
    lo, table = read_noise_table(tmp_path / "t.csv")
    assert lo == -1 and [list(r) for r in table] == rows


@pytest.mark.parametrize("body, needle", [
    ("psum,p0,p1\n0,0.5,0.6\n", "sum to 1"),
    ("psum,p0,p1\n0,1,0\n2,1,0\n", "partial sum 2, expected 1"),
    ("sum,p0,p1\n0,1,0\n", "header must be 'psum,p0,p1,...'"),
    ("psum,p0,p1\n0,1\n", "2 fields, expected 3"),
    ("psum,p0,p1\n0,x,1\n", "not a number"),
    ("psum,p0,p1\n", "no rows"),
])
def test_bad_tables_are_named(tmp_path, body, needle):
    (tmp_path / "bad.csv").write_text(body)
    with pytest.raises(ConfigError, match=needle):
        read_noise_table(tmp_path / "bad.csv")


def test_table_must_fit_the_array(tmp_path):
    write_noise_table(tmp_path / "short.csv", -4, [[1.0, 0.0]] * 9, "synthetic, 9 rows")
    with pytest.raises(ConfigError, match="row"):
        train_config("test_resnet", psq="1bit", weight_bits=1, noise_table=str(tmp_path / "short.csv"))
