"""Chip models (paper / empirical / copula), SAR offset vectors measured in SPICE, held-out validation chips,
per-chip content hashes, and the NeuroSim V1.5 output-noise file."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from circuits.adc import sar_codes_from_decisions
from pipeline.artifacts import ArtifactError
from pipeline.chip_models import MeasuredOffsets, draw_offsets_a
from pipeline.chip_validation import write_neurosim_csv
from pipeline.chips import ChipsConfig, _chip_frame, _write_offsets, chips
from pipeline.config import CharacterizeConfig, ConfigError
from pipeline.offset_table import OffsetTable, chip_digest
from pipeline.paths import RunPaths

N_THR = 31


def _measured(vectors: np.ndarray | None, n_comp: int = 50, seed: int = 0) -> MeasuredOffsets:
    rng = np.random.default_rng(seed)
    comps = tuple(rng.normal(j * 1e-8, 1e-7, n_comp) for j in range(N_THR))
    return MeasuredOffsets(np.linspace(1e-6, 3e-5, N_THR), np.zeros(N_THR), np.full(N_THR, 1e-7), comps, vectors)


def _correlated_vectors(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Offset vectors with a known covariance: a common SA term plus a part that grows with the reference."""
    rng = np.random.default_rng(seed)
    j = np.arange(N_THR)
    load = np.stack([np.full(N_THR, 2e-7), 1e-8 * j, 5e-8 * np.sin(j / 5)], axis=1)  # [thr, 3 factors]
    cov = load @ load.T + np.diag(np.full(N_THR, 1e-16))
    return rng.multivariate_normal(np.linspace(0, 3e-7, N_THR), cov, n), cov


def test_empirical_sar_draws_whole_measured_vectors_and_flash_draws_measured_samples():
    vectors, _ = _correlated_vectors(12)
    m = _measured(vectors)
    off = draw_offsets_a("empirical", "sar", m, np.random.default_rng(3), (40, 16)).reshape(-1, N_THR)
    match = (off[:, None, :] == vectors[None, :, :]).all(axis=2)  # [adc, measured vector]
    assert match.any(axis=1).all()  # every ADC is exactly one measured vector, never a mixture
    assert match.any(axis=0).all()  # and 640 draws of 12 vectors reach all of them
    flash = draw_offsets_a("empirical", "flash", m, np.random.default_rng(3), (40, 16)).reshape(-1, N_THR)
    for j in (0, 17, 30):
        assert np.isin(flash[:, j], m.comparators_a[j]).all()
    # Flash comparators are drawn independently: two ADCs rarely share the sample index at every threshold
    assert len({tuple(r) for r in flash}) == len(flash)


def test_copula_sample_covariance_converges_to_the_measured_one():
    vectors, _ = _correlated_vectors(60)
    m = _measured(vectors)
    measured_cov = np.cov(vectors, rowvar=False)
    errs = []
    for n in (200, 20000):
        d = draw_offsets_a("copula", "sar", m, np.random.default_rng(5), (n, 1)).reshape(-1, N_THR)
        errs.append(np.linalg.norm(np.cov(d, rowvar=False) - measured_cov) / np.linalg.norm(measured_cov))
        assert np.allclose(d.mean(axis=0), vectors.mean(axis=0), atol=5 * np.sqrt(measured_cov.diagonal().max() / n))
    assert errs[1] < 0.05 and errs[1] < errs[0] / 3, errs  # 1/sqrt(n) convergence
    # not limited to the measured samples (unlike empirical)
    assert not (d[:, None, :] == vectors[None]).all(axis=2).any()


def test_gaussian_copula_keeps_the_measured_marginals_and_their_normal_score_correlation():
    """Skewed, partly censored vectors: each reference's draws follow its measured quantiles (censored mass at
    the edge included), the normal scores correlate as the measured ones, and no draw leaves the measured range."""
    from pipeline.chip_models import normal_scores

    vectors, _ = _correlated_vectors(400)
    vectors = vectors + 0.3 * np.abs(vectors - vectors.mean(0)) ** 1.5 / 1e-7**0.5  # skew the marginals
    edge = np.quantile(vectors[:, -1], 0.7)
    vectors[:, -1] = np.minimum(vectors[:, -1], edge)  # 30 % censored at the last reference
    m = _measured(vectors)
    d = draw_offsets_a("gaussian-copula", "sar", m, np.random.default_rng(8), (20000, 1)).reshape(-1, N_THR)
    for j in (0, 15, N_THR - 1):
        q = np.linspace(0.05, 0.95, 19)
        spread = np.quantile(vectors[:, j], 0.95) - np.quantile(vectors[:, j], 0.05)
        assert np.abs(np.quantile(d[:, j], q) - np.quantile(vectors[:, j], q)).max() < 0.05 * spread
    assert abs((d[:, -1] == edge).mean() - 0.3) < 0.02
    assert d.min() >= vectors.min() and d.max() <= vectors.max()
    target = np.corrcoef(normal_scores(vectors), rowvar=False)
    got = np.corrcoef(normal_scores(d), rowvar=False)
    off = ~np.eye(N_THR, dtype=bool)
    assert np.abs(got - target)[off].max() < 0.05


def test_paper_model_moves_every_sar_threshold_by_the_same_z():
    m = _measured(None)
    off = draw_offsets_a("paper", "sar", m, np.random.default_rng(0), (8, 4)).reshape(-1, N_THR)
    z = (off - m.mu_a) / m.sigma_a
    assert np.allclose(z, z[:, :1])
    with pytest.raises(ValueError, match="needs the measured SAR offset vectors"):
        draw_offsets_a("empirical", "sar", m, np.random.default_rng(0), (2, 2))


def _write_table(path: Path, n_chips: int = 3) -> ChipsConfig:
    cfg = ChipsConfig(n_chips=n_chips, n_macros=2, columns_per_macro=32, columns_per_adc=8)
    rng = np.random.default_rng(0)
    frames, groups = [], []
    for chip in range(n_chips):
        off_a = rng.normal(0, 1e-6, (2, 4, N_THR))
        frame = _chip_frame(cfg, "sar", 4.0, chip, 5, off_a, rng.normal(0, 2, (2, 4, N_THR)))
        groups.append(["sar", 4.0, chip, chip, chip_digest(frame)])
        frames.append(frame)
    meta = {"geometry": {"n_macros": 2, "adcs_per_macro": 4, "n_thresholds": N_THR, "bits": 5}, "row_groups": groups}
    _write_offsets(pd.concat(frames, ignore_index=True), path, meta, len(frames[0]))
    return cfg


def test_censored_trip_points_stay_outside_the_input_range():
    """An SA that never trips within the range (censored above) must keep its threshold above the top level
    after the amperes round trip (np.interp clamped it onto level 31, which then tripped at full scale: TV 0.45
    at that level against SPICE); one always tripping (censored below) stays below level 0."""
    from pipeline.characterize import offset_vectors
    from pipeline.chip_validation import predicted_codes
    from pipeline.chips import current_to_lsb

    bits, rows = 3, 31
    x = np.arange(rows + 1, dtype=float)
    currents = pd.DataFrame({"wl_ratio": 10.0, "x": x, "current_a": 2e-6 * np.sqrt(x + 1.0)})
    trip = np.array([0, 8 * 15 + 3, 8 * rows + 1])  # below, inside (ref 15), above
    samples = pd.DataFrame({
        "technology": "t", "wl_ratio": 10.0, "sample": 0, "circuit": "sar_sa", "ref_index": [0, 15, 30],
        "trip_index": trip, "trip_level": [np.nan, (trip[1] - 0.5) / 8, np.nan], "censor": ["below", "none", "above"],
        "offset_a": [np.nan, 1e-7, np.nan], "status": "ok"})
    vec = offset_vectors(samples, currents, bits)
    iref = np.interp(vec.ref_index.to_numpy() + 0.5, x, currents.current_a.to_numpy())
    level = current_to_lsb(vec.offset_a.to_numpy() + iref, x, currents.current_a.to_numpy())
    assert level[0] < 0 and level[2] > rows
    offsets = np.zeros((1, rows))
    offsets[0, rows - 1] = level[2] - (rows - 0.5)
    assert predicted_codes(offsets, "sar", rows + 1)[0, rows] == rows - 1  # full scale reads one code down


def test_flipped_byte_in_one_chip_is_caught_on_reading_that_chip_only(tmp_path):
    path = tmp_path / "offsets.parquet"
    _write_table(path)
    clean = OffsetTable(path).chip("sar", 4.0, 1)
    col = pq.ParquetFile(path).metadata.row_group(1).column(8)  # chip 1's offset_lsb column chunk
    assert col.path_in_schema == "offset_lsb"
    data = bytearray(path.read_bytes())
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    at = start + col.total_compressed_size // 2  # inside the chunk's pages (the dictionary holds the values)
    assert start < at < start + col.total_compressed_size
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    table = OffsetTable(path)
    with pytest.raises(ArtifactError, match="chip 1 of sar W/L=4"):
        table.chip("sar", 4.0, 1)
    for other in (0, 2):
        assert len(table.chip("sar", 4.0, other)) == len(clean)


def test_chip_digest_sees_one_changed_value():
    rng = np.random.default_rng(1)
    cfg = ChipsConfig(n_chips=1, n_macros=1, columns_per_macro=8, columns_per_adc=8)
    frame = _chip_frame(cfg, "flash", 10.0, 0, 5, rng.normal(size=(1, 1, N_THR)), rng.normal(size=(1, 1, N_THR)))
    before = chip_digest(frame)
    frame.loc[7, "offset_lsb"] = np.nextafter(frame.loc[7, "offset_lsb"], np.inf)
    assert chip_digest(frame) != before


NEUROSIM_SAMPLE = """output,mean,std
0,0.0,0.0
1,1.02,0.31
2,1.97,0.40
3,3.00,0.12
4,4.0,0.0
"""


def _neurosim_load(path: Path, adc_precision: int) -> tuple[list[float], list[float], list[float]]:
    """DNN+NeuroSim V1.5's output-noise loader, as its macro.py reads the file (csv.reader, the header's
    'output'/'mean'/'std' columns by name, at most 2**adc_precision + 1 rows), re-stated for the test."""
    with open(path) as fh:
        reader = csv.reader(fh)
        header = next(reader)
        assert "output" in header, "NeuroSim exits: the required column 'output' is not in the CSV file"
        vi, si, mi = header.index("output"), header.index("std"), header.index("mean")
        values, stds, means = [], [], []
        for row in reader:
            values.append(float(row[vi]))
            stds.append(float(row[si]))
            means.append(float(row[mi]))
    assert len(values) <= 2**adc_precision + 1, "NeuroSim exits: more outputs than the ADC precision"
    return values, means, stds


def test_neurosim_csv_reads_like_the_hand_written_sample(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text(NEUROSIM_SAMPLE)
    values, means, stds = _neurosim_load(sample, 2)
    assert values == [0, 1, 2, 3, 4] and len(means) == len(stds) == 5
    ours = tmp_path / "neurosim_sar_wl4.csv"
    rng = np.random.default_rng(0)
    write_neurosim_csv(ours, rng.normal(0, 1.5, (64, N_THR)), "sar", 5)
    assert next(csv.reader(open(ours))) == next(csv.reader(open(sample)))
    values, means, stds = _neurosim_load(ours, 5)
    # NeuroSim indexes the rows by clamp(psum, 0, 2**5): every one of the 33 ideal outputs needs its row
    assert values == list(range(33))
    assert all(0 <= m <= 31 for m in means) and all(s >= 0 for s in stds)
    assert np.mean(stds) > 0.3 and means[0] < 2 and means[-1] > 29  # a spread, anchored at the ends
    with pytest.raises(AssertionError, match="more outputs"):
        _neurosim_load(ours, 4)


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory) -> Path:
    """A tiny real characterization with SAR offset vectors and 4 held-out validation chips, fitted."""
    from pipeline.characterize import characterize
    from pipeline.executor import make_executor
    from pipeline.fit import fit

    run = tmp_path_factory.mktemp("val") / "run"
    cfg = CharacterizeConfig(wl_ratios=(4.0,), samples=6, resolution_bits=2, chunk_size=20, validation_chips=4)
    with make_executor(2) as ex:
        characterize(cfg, run, ex)
    fit(run)
    return run


@pytest.mark.spice
def test_sar_vectors_convert_to_the_spice_sar_codes_of_the_same_draws(validated_run):
    paths = RunPaths(validated_run)
    vec = pd.read_parquet(paths.sar_offsets)
    codes = pd.read_parquet(paths.adc_codes)
    assert vec["sample"].nunique() == 6 and vec.ref_index.nunique() == N_THR
    levels = np.arange(N_THR + 1)
    for s, sub in vec.groupby("sample"):
        thr = sub.sort_values("ref_index").trip_level.to_numpy()
        ours = sar_codes_from_decisions((levels[:, None] >= thr[None, :]).astype(int))
        spice = codes[(codes.adc == "sar") & (codes.chip == s)].sort_values("level").code.to_numpy()
        assert (ours == spice).all(), (s, ours, spice)  # one SA bisected per reference == real conversions
    doc = json.loads(paths.characterize_manifest.read_text())
    assert -1 <= doc["sar_offset_corr_median_offdiag"]["wl4"] <= 1
    assert paths.sar_offset_corr_png.stat().st_size > 0
    val = pd.read_parquet(paths.validation_codes)
    assert sorted(val.adc.unique()) == ["flash", "sar"] and val.groupby("adc").chip.nunique().tolist() == [4, 4]
    # held-out: no validation SAR chip repeats an in-sample chip's transfer curve by construction of the streams
    samples = pd.read_parquet(paths.samples)
    a = samples[samples.circuit == "sar"].drop_duplicates("sample").dvth_n1_v.to_numpy()
    b = samples[samples.circuit == "sar_val"].drop_duplicates("sample").dvth_n1_v.to_numpy()
    assert not np.isin(a, b).any()


@pytest.mark.spice
def test_chips_validates_every_model_against_the_held_out_chips(validated_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(validated_run, run)
    out = chips(run, ChipsConfig(n_chips=3, n_macros=2, columns_per_macro=32, columns_per_adc=8, model="copula"))
    doc = json.loads(RunPaths(run).validation.read_text())
    assert doc["model"] == "copula" and doc["spice_set"] == "validation"
    for key in ("flash_wl4", "sar_wl4"):
        assert set(doc["models"][key]) == {"paper", "empirical", "copula", "gaussian-copula"}
        for model, rec in doc["models"][key].items():
            assert rec["n_spice_chips"] == 4 and rec["model"] == model
            assert len(rec["code_error_std_spice"]) == len(rec["code_error_std_table"]) == N_THR + 1
            assert rec["within_goal"] == (rec["mean_tv"] <= 0.05)
            assert rec["consistent"] == (rec["mean_tv"] <= rec["tv_noise_p95"])
            assert rec["n_measured"] == 6  # 6 SAR vectors / 6 comparator samples per reference
            # a table built from 6 measured samples: its floor against 4 SPICE chips is above the 4-chip one
            assert rec["tv_two_sample_floor"] > rec["tv_noise_floor"]
            assert rec["consistent_two_sample"] == (rec["mean_tv"] <= rec["tv_two_sample_p95"])
        assert doc["designs"][key] == doc["models"][key]["copula"] == out["validation"][key]
    table = OffsetTable(RunPaths(run).offsets)
    assert table.meta["chip_model"] == "copula"
    assert table.threshold_shifts_lsb("sar", 4.0, 2).shape == (2, 4, N_THR)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120)


def test_bad_model_and_validation_count_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="validation_chips=0 must be a positive integer"):
        CharacterizeConfig(validation_chips=0)
    r = _cli("characterize", "--run-dir", str(tmp_path / "a"), "--validation-chips", "0")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "validation_chips=0" in r.stderr
    r = _cli("chips", "--run-dir", str(tmp_path / "b"), "--model", "gauss")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a chip model" in r.stderr
