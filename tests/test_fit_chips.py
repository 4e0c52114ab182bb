"""Fit and chips stages: probit edges, censored MLE, chip determinism/prefix stability, Flash vs SAR
structure, and the TV validation on a small real characterization."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts import ArtifactError
from pipeline.chips import ChipsConfig, chips, current_to_lsb
from pipeline.config import ConfigError
from pipeline.fit import censored_normal, fit, probit_sigma
from pipeline.offset_table import OffsetTable
from pipeline.paths import RunPaths


def test_probit_edges_are_explicit_and_finite_where_defined():
    s, lo, hi, st = probit_sigma(20, 20, 1e-6)
    assert st == "p_is_1" and lo == 0.0 and np.isfinite(s) and np.isfinite(hi) and s < hi
    s, lo, hi, st = probit_sigma(10, 20, 1e-6)
    assert st == "p_le_half" and np.isnan(s) and np.isinf(hi) and np.isfinite(lo)
    assert probit_sigma(0, 0, 1e-6)[3] == "no_samples"
    s1, lo1, hi1, st1 = probit_sigma(17, 20, 1e-6)
    s2 = probit_sigma(19, 20, 1e-6)[0]
    assert st1 == "ok" and lo1 < s1 < hi1 and s2 < s1  # more passes -> smaller sigma
    assert np.isclose(s1, 1e-6 / 1.0364333894937898, rtol=1e-9)  # Phi^-1(0.85)


def test_censored_normal_recovers_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 2.0, 4000)
    lo_c, hi_c = -1.5, 2.5
    mu, sigma = censored_normal(x[(x > lo_c) & (x < hi_c)], np.full((x <= lo_c).sum(), lo_c),
                                np.full((x >= hi_c).sum(), hi_c))
    assert abs(mu - 0.3) < 0.1 and abs(sigma - 2.0) < 0.1
    naive = x[(x > lo_c) & (x < hi_c)].std()
    assert naive < 1.6  # dropping censored points would badly underestimate sigma


def test_censored_normal_identical_trip_points_is_a_point_mass(recwarn):
    """Two samples that tripped at the same current (tiny --samples runs): sigma 0, not a 0/0 in the optimizer."""
    mu, sigma = censored_normal(np.array([2e-6, 2e-6]), np.array([]), np.array([]))
    assert (mu, sigma) == (2e-6, 0.0)
    mu, sigma = censored_normal(np.array([2e-6, 2e-6]), np.array([]), np.array([5e-6]))  # censored: a spread
    assert mu > 2e-6 and sigma > 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_current_to_lsb_inverts_and_extrapolates():
    x = np.linspace(0, 31, 249)
    cur = 1e-5 * np.sqrt(1 + x)
    assert np.allclose(current_to_lsb(1e-5 * np.sqrt(1 + np.array([0.0, 7.25, 31.0])), x, cur), [0, 7.25, 31],
                       atol=1e-3)
    assert current_to_lsb(np.array([cur[-1] * 1.01]), x, cur)[0] > 31


@pytest.fixture(scope="module")
def fitted(small_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("fitted") / "run"
    shutil.copytree(small_run, run)
    fit(run)
    return run


@pytest.mark.spice
def test_fit_outputs_and_estimates_agree(fitted):
    doc = json.loads((RunPaths(fitted).offset_model).read_text())
    assert {m["wl_ratio"] for m in doc["models"]} == {4.0, 10.0}
    assert set(doc["inputs_sha256"]) >= {"samples.parquet", "pass_rate.parquet"}
    t = pd.read_parquet(RunPaths(fitted).sigma_table)
    assert t.sigma_direct_a.notna().all() and (t.sigma_direct_a > 0).all()
    ok = t[t.probit_status != "p_le_half"]
    assert len(ok) > 10
    overlap = (ok.sigma_probit_lo_a <= ok.sigma_direct_hi_a) & (ok.sigma_direct_lo_a <= ok.sigma_probit_hi_a)
    assert overlap.mean() >= 0.85, overlap.mean()
    assert (RunPaths(fitted).fit / "sigma_vs_iref.png").stat().st_size > 0


@pytest.mark.spice
def test_chips_determinism_prefix_and_structure(fitted, tmp_path):
    cfg = ChipsConfig(n_chips=6, n_macros=2, columns_per_macro=32, columns_per_adc=8, model="paper")
    chips(fitted, cfg)
    a = OffsetTable(RunPaths(fitted).offsets)
    first = {(d, w): [a.chip(d, w, c) for c in range(6)] for d, w in a.designs}
    assert a.designs == [("flash", 4.0), ("flash", 10.0), ("sar", 4.0), ("sar", 10.0)]
    other = tmp_path / "again"
    shutil.copytree(fitted, other)
    chips(other, ChipsConfig(n_chips=9, n_macros=2, columns_per_macro=32, columns_per_adc=8, model="paper"))
    b = OffsetTable(RunPaths(other).offsets)
    for (d, w), frames in first.items():
        for c, df in enumerate(frames):
            pd.testing.assert_frame_equal(df, b.chip(d, w, c))  # bit-identical, and prefix-stable
    sigma = pd.read_parquet(RunPaths(fitted).sigma_table).drop_duplicates(["wl_ratio", "ref_index"])
    s10 = sigma[sigma.wl_ratio == 10.0].sort_values("ref_index")
    for kind in ("flash", "sar"):
        shifts = np.stack([a.chip(kind, 10.0, c).offset_a.to_numpy().reshape(-1, 31) for c in range(6)])
        z = ((shifts - s10.mu_direct_a.to_numpy()) / s10.sigma_direct_a.to_numpy()).reshape(-1, 31)
        if kind == "sar":  # one draw per ADC: every threshold moves by the same number of sigmas
            assert np.allclose(z, z[:, :1], atol=1e-9)
        else:  # independent per comparator
            corr = np.corrcoef(z.T)[np.triu_indices(31, 1)]
            assert abs(corr.mean()) < 0.1 and z.std(axis=1).mean() > 0.5
    lsb = a.threshold_shifts_lsb("sar", 10.0, 2)
    assert lsb.shape == (2, 4, 31) and lsb.dtype == np.float32


@pytest.mark.spice
def test_chips_validation_and_neurosim_export(fitted):
    out = chips(fitted, ChipsConfig(n_chips=40, n_macros=2, columns_per_macro=32, columns_per_adc=8, model="paper"))
    v = out["validation"]
    assert set(v) == {"flash_wl4", "flash_wl10", "sar_wl4", "sar_wl10"}
    for rec in v.values():
        assert 0 <= rec["mean_tv"] <= rec["max_tv"] <= 1 and len(rec["tv_per_level"]) == 32
        assert rec["spice_set"] == "in_sample" and rec["model"] == "paper"
    assert v["flash_wl10"]["consistent"], v["flash_wl10"]  # Flash: independent Gaussian comparators hold
    assert set(out["models"]["sar_wl4"]) == {"paper", "empirical", "copula", "gaussian-copula"}
    csv = pd.read_csv(RunPaths(fitted).chips / "neurosim_sar_wl10.csv")
    assert list(csv.columns) == ["output", "mean", "std"] and len(csv) == 33
    flash = pd.read_csv(RunPaths(fitted).chips / "neurosim_flash_wl10.csv")
    assert csv["std"].mean() > flash["std"].mean()  # SAR spreads more than Flash


def test_chips_bad_input(tmp_path, fitted):
    with pytest.raises(ConfigError, match="n_chips=0"):
        ChipsConfig(n_chips=0)
    with pytest.raises(ConfigError, match="model='gauss' is not a chip model"):
        ChipsConfig(model="gauss")
    with pytest.raises(ConfigError, match="not a multiple"):
        ChipsConfig(columns_per_macro=100, columns_per_adc=8)
    with pytest.raises(ConfigError, match=r"W/L \[7.0\] not characterized; available: \[4.0, 10.0\]"):
        chips(fitted, ChipsConfig(n_chips=1, wl_ratios=(7.0,)))
    with pytest.raises(ArtifactError, match="cimcosim fit"):
        chips(tmp_path, ChipsConfig(n_chips=1))
    with pytest.raises(ArtifactError, match="cimcosim characterize"):
        fit(tmp_path)
