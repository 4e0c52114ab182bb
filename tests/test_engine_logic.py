"""Unit tests of the code around ngspice: bisection, decision masks, ADC encoders, seeds, artifacts.

``decide`` is replaced by a deterministic fake comparator here; the real-ngspice tests are in
test_spice_*.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import pipeline.montecarlo as mc
from circuits.adc import flash_codes, sar_codes_from_decisions, sar_convert
from circuits.bench import SenseTiming
from circuits.bitline import BitlineConfig
from circuits.ngspice import DECISION_HIGH, DECISION_LOW, FAILED, UNRESOLVED
from circuits.sense_amp import SenseAmpSizing
from pipeline.artifacts import ArtifactError, read_table, write_table
from pipeline.seeds import KIND_COMPARATOR, draw_mismatch


def _ctx(tech, bits=3):
    return mc.SpiceContext(tech, BitlineConfig(), SenseTiming(), 1.0, 8.0, 7, True, bits)


def _fake_decide(trips):
    """A comparator whose instance i decides 'above' iff x_bl >= trips[offset] (offset encoded in dvth)."""
    def decide(tech, sizing, bitline, timing, insts):
        out = []
        for inst in insts:
            t = inst.dvth_v[0]
            if np.isnan(t):
                out.append(FAILED)
            elif inst.x_bl == t:
                out.append(UNRESOLVED)
            else:
                out.append(DECISION_HIGH if inst.x_bl >= t else DECISION_LOW)
        return np.array(out, dtype=np.int8)
    return decide


def test_trip_search_recovers_grid_trip_and_all_level_decisions(tech, monkeypatch):
    ctx = _ctx(tech, bits=3)
    trips = np.array([-1.0, 0.01, 3.3, 10.51, 30.9, 40.0])  # below, near 0, mid, ..., above range
    dv = np.zeros((len(trips), 6))
    dv[:, 0] = trips
    monkeypatch.setattr(mc, "decide", _fake_decide(trips))
    trip, status, runs = mc.trip_search(ctx, SenseAmpSizing(4.0), 10, dv, np.zeros_like(dv))
    grid = np.arange(31 * 8 + 1) / 8
    expected = np.array([np.argmax(grid >= t) if (grid >= t).any() else len(grid) for t in trips])
    assert list(trip) == list(expected)
    assert set(status) == {mc.STATUS_OK}
    assert runs.max() <= int(np.ceil(np.log2(31 * 8 + 2)))
    masks = mc.decisions_from_trip(trip, 31, 3)
    for i, t in enumerate(trips):
        direct = sum(1 << k for k in range(32) if k >= t)
        assert masks[i] == direct


def test_trip_search_marks_metastable_and_failed(tech, monkeypatch):
    ctx = _ctx(tech, bits=0)
    trips = np.array([16.0, np.nan])  # 16.0: the first probe lands exactly on it -> unresolved
    dv = np.zeros((2, 6))
    dv[:, 0] = trips
    monkeypatch.setattr(mc, "decide", _fake_decide(trips))
    trip, status, _ = mc.trip_search(ctx, SenseAmpSizing(4.0), 10, dv, np.zeros_like(dv))
    assert status[0] == mc.STATUS_METASTABLE and trip[0] == 16
    assert status[1] == mc.STATUS_FAILED


def test_flash_ones_count_and_invalid():
    d = np.array([[1, 1, 0, 1, 0], [1, 1, 1, 0, 0], [1, FAILED, 0, 0, 0]])
    assert list(flash_codes(d)) == [3, 3, -1]


def test_sar_ideal_and_offset_shift():
    n_levels, n_refs = 32, 31
    levels = np.arange(n_levels)[:, None]
    refs = np.arange(n_refs)[None, :]
    ideal = (levels > refs).astype(np.int8)
    assert list(sar_codes_from_decisions(ideal)) == list(range(32))
    shifted = (levels > refs + 2).astype(np.int8)  # every reference 2 levels high (one SA, one direction)
    assert list(sar_codes_from_decisions(shifted)) == [max(0, k - 2) for k in range(32)]


def test_sar_convert_reports_failures():
    codes, steps = sar_convert(lambda ref: np.where(ref > 10, FAILED, DECISION_HIGH), 3, 5)
    assert list(codes) == [-1, -1, -1] and steps.shape == (3, 5)


def test_mismatch_draws_prefix_stable_and_seeded(tech):
    s = SenseAmpSizing(4.0)
    a = draw_mismatch(tech, s, 5, KIND_COMPARATOR, 3, np.arange(10))
    b = draw_mismatch(tech, s, 5, KIND_COMPARATOR, 3, np.arange(20))
    c = draw_mismatch(tech, s, 6, KIND_COMPARATOR, 3, np.arange(10))
    assert np.array_equal(a[0], b[0][:10]) and np.array_equal(a[1], b[1][:10])
    assert not np.array_equal(a[0], c[0])
    big = draw_mismatch(tech, SenseAmpSizing(16.0), 5, KIND_COMPARATOR, 3, np.arange(10))
    # common random numbers: same normal draws, sigma scaled by 1/sqrt(W*L) -> ratio 2 for 4x the area
    assert np.allclose(a[0] / big[0], 2.0)


def test_artifacts_roundtrip_and_corruption(tmp_path):
    schema = pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.float64())])
    df = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, np.nan]})
    path = tmp_path / "t.parquet"
    write_table(df, path, schema, {"config_hash": "x"})
    back, meta = read_table(path, schema, fix="re-run")
    pd.testing.assert_frame_equal(back, df)
    assert meta["config_hash"] == "x" and meta["rows"] == 3
    with pytest.raises(ArtifactError, match="columns do not match"):
        write_table(df.rename(columns={"b": "c"}), path, schema, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt"):
        read_table(path, schema, fix="re-run")
    with pytest.raises(ArtifactError, match="missing"):
        read_table(tmp_path / "nope.parquet", schema, fix="re-run")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
