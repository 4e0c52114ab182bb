"""The characterize stage end to end on real ngspice: artifacts, physics checks, resume, executors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline import schemas
from pipeline.artifacts import read_json, read_table
from pipeline.characterize import characterize
from pipeline.config import CharacterizeConfig
from pipeline.executor import make_executor
from pipeline.paths import RunPaths

pytestmark = pytest.mark.spice


def _tables(run_dir):
    p = RunPaths(run_dir)
    fix = "re-run"
    return {name: read_table(path, schema, fix=fix)[0] for name, path, schema in (
        ("samples", p.samples, schemas.SAMPLES), ("pass_rate", p.pass_rate, schemas.PASS_RATE),
        ("adc_codes", p.adc_codes, schemas.ADC_CODES), ("currents", p.currents, schemas.CURRENTS))}


def test_small_run_artifacts(small_run):
    t = _tables(small_run)
    p = RunPaths(small_run)
    assert p.pass_rate_png.stat().st_size > 0 and p.adc_codes_png.stat().st_size > 0
    manifest = read_json(p.characterize_manifest, fix="re-run")
    assert manifest["summary"]["chunks_total"] > 0 and len(manifest["config_hash"]) == 16
    rates = t["pass_rate"]
    assert set(rates.wl_ratio) == {4.0, 10.0} and len(rates) == 2 * 32
    assert ((rates.pass_rate >= 0) & (rates.pass_rate <= 1)).all()
    assert (rates.n_samples + rates.n_failed == 16).all()
    # the column current is monotone in the partial sum and its steps shrink (bitline/SA resistance)
    for _, sub in rates.groupby("wl_ratio"):
        steps = np.diff(sub.sort_values("level").psum_current_a.to_numpy())
        assert (steps > 0).all() and steps[-1] < 0.7 * steps[0]
    codes = t["adc_codes"]
    assert set(codes.adc) == {"flash", "sar"}
    assert codes.groupby(["adc", "wl_ratio"]).chip.nunique().eq(16).all()
    ok = t["samples"][t["samples"].circuit == "sa"]
    assert ok.offset_a[ok.censor == "none"].notna().all()


def test_sar_offsets_share_one_direction_and_flash_do_not(small_run):
    """SAR code errors of one chip have one sign across levels; Flash chips mix signs more often."""
    codes = _tables(small_run)["adc_codes"]
    codes = codes[(codes.code >= 0) & (codes.wl_ratio == 4.0)]
    mixed = {}
    for adc, sub in codes.groupby("adc"):
        err = (sub.code - sub.level).to_numpy().reshape(-1, 32)[:, 1:-1]  # drop clipped end levels
        mixed[adc] = float(np.mean([(e > 0).any() and (e < 0).any() for e in err]))
    assert mixed["sar"] < mixed["flash"], mixed


def test_nominal_adcs_are_ideal(tmp_path):
    cfg = CharacterizeConfig(wl_ratios=(4.0,), samples=1, mismatch=False, resolution_bits=1)
    with make_executor(1) as ex:
        characterize(cfg, tmp_path, ex)
    t = _tables(tmp_path)
    assert (t["pass_rate"].pass_rate == 1.0).all()
    codes = t["adc_codes"]
    assert set(codes.adc) == {"flash", "sar"}
    assert (codes.code == codes.level).all()
    comp = t["samples"][t["samples"].circuit == "sa"]
    assert np.allclose(comp.trip_level, comp.ref_index + 0.5, atol=0.25)


def test_resume_reuses_chunks_and_recomputes_corrupt_ones(small_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(small_run, run)
    before = _tables(run)
    chunks = sorted(RunPaths(run).characterize_chunks.glob("*.parquet"))
    victim = chunks[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated by a crash
    (RunPaths(run).samples).unlink()
    cfg = CharacterizeConfig(wl_ratios=(4.0, 10.0), samples=16, resolution_bits=2, chunk_size=16)
    with make_executor(1) as ex:
        summary = characterize(cfg, run, ex)
    assert summary.chunks_reused == len(chunks) - 1
    after = _tables(run)
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name])


def test_same_seed_bit_identical_across_executors_and_prefix_stable(small_run, tmp_path):
    """Inline executor, fewer samples: every common sample is bit-identical to the 2-process run."""
    cfg = CharacterizeConfig(wl_ratios=(10.0,), samples=5, resolution_bits=2, chunk_size=16, adc=("flash",))
    with make_executor(1) as ex:
        characterize(cfg, tmp_path, ex)
    small = _tables(tmp_path)["samples"]
    big = _tables(small_run)["samples"]
    big = big[(big.wl_ratio == 10.0) & (big.circuit == "sa") & (big["sample"] < 5)].reset_index(drop=True)
    pd.testing.assert_frame_equal(small.reset_index(drop=True), big)


def test_dask_scheduler_gives_same_results(small_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    cfg = CharacterizeConfig(wl_ratios=(4.0,), samples=2, resolution_bits=2, chunk_size=16, adc=("sar",))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            make_executor(1, scheduler=cluster.scheduler_address) as ex:
        characterize(cfg, tmp_path, ex)
    got = _tables(tmp_path)["samples"]
    ref = _tables(small_run)["samples"]
    ref = ref[(ref.wl_ratio == 4.0) & (ref["sample"] < 2)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref)
