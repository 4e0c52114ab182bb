"""Stage ``characterize``: ngspice Monte Carlo of the SA and of 5-bit Flash/SAR ADCs.

Inputs: a :class:`CharacterizeConfig`. Outputs (under ``RUN/characterize/``): ``samples.parquet``,
``currents.parquet``, ``pass_rate.parquet``, ``adc_codes.parquet``, ``sar_offsets.parquet`` (each SAR SA's
offset at every reference) and ``sar_offset_corr.png``, ``validation_codes.parquet`` (held-out chips, with
``validation_chips``), ``pass_rate.png``, ``adc_codes.png``, ``manifest.json``; finished chunks under
``chunks/`` make re-runs resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from circuits.ngspice import check_model_cards, column_currents_a, ngspice_version, require_ngspice
from circuits.technology import load_technology
from pipeline import schemas
from pipeline.artifacts import ArtifactError, read_table, versions, write_json, write_table
from pipeline.config import CharacterizeConfig, config_hash
from pipeline.executor import as_completed
from pipeline.montecarlo import COMPARATOR_KINDS, STATUS_FAILED, STATUS_OK, ChunkTask, SpiceContext, run_chunk
from pipeline.paths import RunPaths

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CharacterizeSummary:
    """What a characterize run did."""

    chunks_total: int
    chunks_reused: int
    transients: int
    n_failed: int
    n_metastable: int
    seconds: float


def build_context(cfg: CharacterizeConfig) -> SpiceContext:
    """Resolve the technology and bundle the worker context (validates before any long work)."""
    tech = load_technology(cfg.tech)
    ctx = SpiceContext(tech, cfg.bitline, cfg.timing, cfg.l_factor, cfg.precharge_wl_ratio, cfg.seed,
                       cfg.mismatch, cfg.resolution_bits)
    for wl in cfg.wl_ratios:
        ctx.sizing(wl)  # validates the sizing of every W/L up front
    return ctx


def plan_tasks(cfg: CharacterizeConfig) -> list[ChunkTask]:
    """Every chunk of the run. Chunk boundaries are multiples of chunk_size, independent of ``samples``."""
    tasks: list[ChunkTask] = []
    n_levels = cfg.bitline.n_levels
    sar_chunk = max(1, cfg.chunk_size // n_levels)

    def per_ref(kind: str, wl: float, n: int) -> None:
        for ref in range(cfg.bitline.rows):
            for start in range(0, n, cfg.chunk_size):
                tasks.append(ChunkTask(kind, wl, ref, start, min(start + cfg.chunk_size, n)))

    def conversions(kind: str, wl: float, n: int) -> None:
        for start in range(0, n, sar_chunk):
            tasks.append(ChunkTask(kind, wl, -1, start, min(start + sar_chunk, n)))

    n_val = cfg.validation_chips
    for wl in cfg.wl_ratios:
        per_ref("sa", wl, cfg.samples)
        if "sar" in cfg.adc:
            conversions("sar", wl, cfg.samples)
            per_ref("sar_sa", wl, cfg.samples)
        if n_val and "flash" in cfg.adc:
            per_ref("flash_val", wl, n_val)
        if n_val and "sar" in cfg.adc:
            conversions("sar_val", wl, n_val)
    return tasks


def _chunk_path(paths: RunPaths, ctx: SpiceContext, task: ChunkTask) -> Path:
    key = config_hash({"ctx": asdict(ctx), "task": asdict(task), "schema": schemas.SCHEMA_VERSION})
    return paths.characterize_chunks / f"{task.name}_{key}.parquet"


def _load_done(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        df, _ = read_table(path, schemas.CHUNK, fix="it will be recomputed")
        return df
    except ArtifactError as exc:
        logger.warning("corrupt chunk, recomputing: %s", exc)
        path.unlink(missing_ok=True)
        return None


def run_chunks(
    ctx: SpiceContext, tasks: list[ChunkTask], paths: RunPaths, executor: Executor, chash: str,
    progress: Progress | None = None,
) -> tuple[list[pd.DataFrame], int]:
    """Run the tasks not yet on disk; persist each chunk atomically as it completes."""
    frames: list[pd.DataFrame] = []
    pending = {}
    reused = 0
    for task in tasks:
        path = _chunk_path(paths, ctx, task)
        done = _load_done(path)
        if done is not None:
            frames.append(done)
            reused += 1
        else:
            pending[executor.submit(run_chunk, ctx, task)] = (task, path)
    total = len(tasks)
    if progress:
        progress(reused, total)
    for n, future in enumerate(as_completed(pending), start=reused + 1):
        task, path = pending[future]
        df = future.result()
        write_table(df, path, schemas.CHUNK, {"config_hash": chash, "task": asdict(task)})
        frames.append(df)
        if progress:
            progress(n, total)
    return frames, reused


def measure_currents(ctx: SpiceContext, wl_ratios: tuple[float, ...]) -> pd.DataFrame:
    """Column current at every trip-search grid point, nominal devices, per W/L."""
    scale = 1 << ctx.resolution_bits
    xs = np.arange(ctx.bitline.rows * scale + 1) / scale
    rows = []
    for wl in wl_ratios:
        cur = column_currents_a(ctx.tech, ctx.sizing(wl), ctx.bitline, list(xs))
        rows.append(pd.DataFrame({"technology": ctx.tech.name, "wl_ratio": float(wl), "x": xs, "current_a": cur}))
    return pd.concat(rows, ignore_index=True)


def _curve(currents: pd.DataFrame, wl: float) -> tuple[np.ndarray, np.ndarray]:
    c = currents[currents.wl_ratio == wl].sort_values("x")
    return c.x.to_numpy(), c.current_a.to_numpy()


def level_to_current(level: np.ndarray, x: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Bitline current at partial-sum ``level`` on the measured curve, extrapolated linearly beyond its ends
    (the inverse of :func:`pipeline.chips.current_to_lsb`): a censored trip point just past the input range
    must stay past it, where np.interp alone would clamp it onto the last level, which then trips."""
    out = np.interp(level, x, cur)
    lo, hi = level < x[0], level > x[-1]
    out[lo] = cur[0] + (level[lo] - x[0]) * (cur[1] - cur[0]) / (x[1] - x[0])
    out[hi] = cur[-1] + (level[hi] - x[-1]) * (cur[-1] - cur[-2]) / (x[-1] - x[-2])
    return out


def add_trip_currents(samples: pd.DataFrame, currents: pd.DataFrame) -> pd.DataFrame:
    """Trip point in amperes and the input-referred offset (trip current minus the reference current)."""
    samples = samples.copy()
    samples["trip_current_a"] = np.nan
    samples["offset_a"] = np.nan
    for wl in samples.wl_ratio.unique():
        x, cur = _curve(currents, wl)
        sel = (samples.wl_ratio == wl) & samples.circuit.isin(list(COMPARATOR_KINDS))
        trip = samples.loc[sel, "trip_level"].to_numpy()
        iref = np.interp(samples.loc[sel, "ref_index"].to_numpy() + 0.5, x, cur)
        itrip = np.where(np.isfinite(trip), np.interp(trip, x, cur), np.nan)
        samples.loc[sel, "trip_current_a"] = itrip
        samples.loc[sel, "offset_a"] = itrip - iref
    return samples


def _level_bit(decisions: np.ndarray, level: int) -> np.ndarray:
    return (np.asarray(decisions, dtype=np.int64) >> level) & 1


def pass_rates(samples: pd.DataFrame, currents: pd.DataFrame, rows: int) -> pd.DataFrame:
    """Per level: fraction of comparator samples at the nearest reference that decide correctly."""
    out = []
    comp = samples[samples.circuit == "sa"]
    for wl in sorted(comp.wl_ratio.unique()):
        x, cur = _curve(currents, wl)
        i_level = np.interp(np.arange(rows + 1), x, cur)
        i_ref = np.interp(np.arange(rows) + 0.5, x, cur)
        for k in range(rows + 1):
            cands = [j for j in (k - 1, k) if 0 <= j < rows]
            j = min(cands, key=lambda r: abs(i_level[k] - i_ref[r]))
            sel = comp[(comp.wl_ratio == wl) & (comp.ref_index == j)]
            valid = sel[sel.status != STATUS_FAILED]
            correct = _level_bit(valid.decisions.to_numpy(), k) == int(k > j)
            out.append({
                "technology": sel.technology.iloc[0] if len(sel) else "", "circuit": "sa", "wl_ratio": wl,
                "level": k, "ref_index": j, "psum_current_a": i_level[k], "iref_a": i_ref[j],
                "delta_a": abs(i_level[k] - i_ref[j]), "n_samples": len(valid), "n_pass": int(correct.sum()),
                "n_failed": int((sel.status == STATUS_FAILED).sum()),
                "pass_rate": float(correct.mean()) if len(valid) else np.nan,
            })
    return pd.DataFrame(out)


def adc_codes(samples: pd.DataFrame, rows: int, comparators: str = "sa", conversions: str = "sar") -> pd.DataFrame:
    """Output code per chip and input level: Flash from the comparator samples (``circuit == comparators``;
    chip c = sample c of every reference), SAR from its conversions (``circuit == conversions``)."""
    frames = []
    tech = samples.technology.iloc[0]
    comp = samples[samples.circuit == comparators]
    for wl in sorted(comp.wl_ratio.unique()):
        sub = comp[comp.wl_ratio == wl].pivot(index="sample", columns="ref_index", values="decisions")
        bad = comp[(comp.wl_ratio == wl)].pivot(index="sample", columns="ref_index", values="status") == STATUS_FAILED
        dec = sub.to_numpy(dtype=np.int64)  # [chip, ref]
        chip_bad = bad.to_numpy().any(axis=1)
        levels = np.arange(rows + 1)
        code = ((dec[:, None, :] >> levels[None, :, None]) & 1).sum(axis=2)  # [chip, level]
        code[chip_bad] = -1
        frames.append(pd.DataFrame({
            "technology": tech, "adc": "flash", "wl_ratio": wl, "chip": np.repeat(sub.index.to_numpy(), rows + 1),
            "level": np.tile(levels, len(sub)), "code": code.ravel(),
            "status": np.repeat(np.where(chip_bad, STATUS_FAILED, STATUS_OK), rows + 1),
        }))
    sar = samples[samples.circuit == conversions]
    if len(sar):
        frames.append(pd.DataFrame({
            "technology": sar.technology, "adc": "sar", "wl_ratio": sar.wl_ratio, "chip": sar["sample"],
            "level": sar.level, "code": sar.code, "status": sar.status,
        }))
    return pd.concat(frames, ignore_index=True).sort_values(["adc", "wl_ratio", "chip", "level"], ignore_index=True)


def offset_vectors(samples: pd.DataFrame, currents: pd.DataFrame, resolution_bits: int,
                   circuit: str = "sar_sa") -> pd.DataFrame:
    """Per sample and reference, the SA's trip point and offset (``SAR_OFFSETS`` columns) from the rows of
    one comparator ``circuit`` ('sar_sa': each SAR SA at every reference; 'sa': the Flash comparator
    samples). A censored trip point (the SA decides the same way over the whole input range) is put at the
    edge of the bisection grid, half a grid step outside the range, which converts the same as any point
    beyond it."""
    vec = samples[samples.circuit == circuit].copy()
    if not len(vec):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in schemas.SAR_OFFSETS.names})
    scale = 1 << resolution_bits
    edge = (vec.trip_index.to_numpy() - 0.5) / scale
    level = np.where(vec.censor == "none", vec.trip_level.to_numpy(), edge)
    offset_a = vec.offset_a.to_numpy().copy()
    for wl in vec.wl_ratio.unique():
        x, cur = _curve(currents, wl)
        sel = (vec.wl_ratio == wl).to_numpy() & ~np.isfinite(offset_a)
        iref = np.interp(vec.ref_index.to_numpy()[sel] + 0.5, x, cur)
        offset_a[sel] = level_to_current(level[sel], x, cur) - iref
    return pd.DataFrame({
        "technology": vec.technology, "wl_ratio": vec.wl_ratio, "sample": vec["sample"],
        "ref_index": vec.ref_index.astype(np.int32), "trip_level": level, "censor": vec.censor,
        "offset_a": offset_a, "offset_lsb": level - (vec.ref_index.to_numpy() + 0.5), "status": vec.status,
    }).sort_values(["wl_ratio", "sample", "ref_index"], ignore_index=True)


def offset_correlation(vectors: pd.DataFrame, wl: float) -> np.ndarray:
    """Sample correlation [ref, ref] of one SA's offsets (amperes) across references; censored and failed
    entries are left out pair by pair."""
    sub = vectors[(vectors.wl_ratio == wl)]
    val = sub.offset_a.where((sub.censor == "none") & (sub.status != STATUS_FAILED))
    wide = sub.assign(v=val).pivot(index="sample", columns="ref_index", values="v")
    return wide.corr(min_periods=3).to_numpy()


def characterize(
    cfg: CharacterizeConfig, run_dir: Path, executor: Executor, progress: Progress | None = None
) -> CharacterizeSummary:
    """Run (or resume) the characterization and write every artifact."""
    t0 = time.perf_counter()
    require_ngspice()
    ctx = build_context(cfg)
    check_model_cards(ctx.tech)
    paths = RunPaths(Path(run_dir))
    paths.characterize.mkdir(parents=True, exist_ok=True)
    chash = config_hash({"config": cfg.to_dict(), "tech": ctx.tech.to_dict()})
    meta = {"stage": "characterize", "config_hash": chash, "schema_version": schemas.SCHEMA_VERSION,
            "seed": cfg.seed, "versions": versions()}

    currents = measure_currents(ctx, cfg.wl_ratios)
    tasks = plan_tasks(cfg)
    frames, reused = run_chunks(ctx, tasks, paths, executor, chash, progress)
    samples = pd.concat(frames, ignore_index=True).sort_values(
        ["circuit", "wl_ratio", "ref_index", "sample", "level"], ignore_index=True)
    samples = add_trip_currents(samples, currents)
    rates = pass_rates(samples, currents, cfg.bitline.rows)
    codes = adc_codes(samples, cfg.bitline.rows)
    if "flash" not in cfg.adc:
        codes = codes[codes.adc != "flash"]
    vectors = offset_vectors(samples, currents, cfg.resolution_bits)

    write_table(currents, paths.currents, schemas.CURRENTS, meta)
    write_table(samples, paths.samples, schemas.SAMPLES, meta)
    write_table(rates, paths.pass_rate, schemas.PASS_RATE, meta)
    write_table(codes, paths.adc_codes, schemas.ADC_CODES, meta)
    outputs = [paths.samples, paths.currents, paths.pass_rate, paths.adc_codes, paths.pass_rate_png,
               paths.adc_codes_png]
    correlation: dict[str, float] = {}
    from pipeline.plots import plot_adc_codes, plot_offset_correlation, plot_pass_rate

    if len(vectors):
        write_table(vectors, paths.sar_offsets, schemas.SAR_OFFSETS, meta)
        mats = {float(wl): offset_correlation(vectors, wl) for wl in cfg.wl_ratios}
        for wl, m in mats.items():
            off = m[~np.eye(len(m), dtype=bool)]
            correlation[f"wl{wl:g}"] = float(np.nanmedian(off)) if np.isfinite(off).any() else float("nan")
        plot_offset_correlation(mats, paths.sar_offset_corr_png)
        outputs += [paths.sar_offsets, paths.sar_offset_corr_png]
    else:
        paths.sar_offsets.unlink(missing_ok=True)
    if cfg.validation_chips and cfg.adc:
        val = adc_codes(samples, cfg.bitline.rows, comparators="flash_val", conversions="sar_val")
        write_table(val, paths.validation_codes, schemas.ADC_CODES, meta)
        outputs.append(paths.validation_codes)
    else:
        paths.validation_codes.unlink(missing_ok=True)

    plot_pass_rate(rates, paths.pass_rate_png)
    plot_adc_codes(codes, paths.adc_codes_png)
    summary = CharacterizeSummary(
        chunks_total=len(tasks), chunks_reused=reused, transients=int(samples.transients.sum()),
        n_failed=int((samples.status == STATUS_FAILED).sum()), n_metastable=int((samples.status == "metastable").sum()),
        seconds=time.perf_counter() - t0,
    )
    write_json(paths.characterize_manifest, {
        **meta, "config": cfg.to_dict(), "technology": ctx.tech.to_dict(), "ngspice": ngspice_version(),
        "summary": asdict(summary), "sar_offset_corr_median_offdiag": correlation,
        "outputs": {p.name: str(p.relative_to(paths.root)) for p in outputs},
    })
    logger.info("characterize: %s", summary)
    return summary

