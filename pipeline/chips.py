"""Stage ``chips``: per-chip ADC offset tables drawn from the fitted Gaussian model, and their validation.

A chip is one draw of every physical ADC on the die (``n_macros`` x ``adcs_per_macro``). Flash: each of
the 2**bits - 1 comparators gets its own shift mu_j + sigma_j * z_j. SAR: one standard normal z per ADC
scales every level's sigma, mu_j + sigma_j * z, so all references shift in the same direction
(seed 001, Sec. III). Draws come from SeedSequence(seed, spawn_key=(stage, kind, chip)): chip k does not
depend on how many chips are asked for, and one chip id uses the same normal draws at every W/L.

Validation predicts, from the sampled tables, every ADC's output-code distribution per input level and
compares it with the direct full-ADC SPICE Monte Carlo (``characterize/adc_codes.parquet``) by total
variation distance; the TV expected from the finite number of SPICE chips alone is reported beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from circuits.adc import flash_codes, sar_codes_from_decisions
from pipeline import schemas
from pipeline.artifacts import META_KEY, ArtifactError, atomic_write, read_json, read_table, versions, write_json
from pipeline.config import ADC_KINDS, ConfigError, config_hash
from pipeline.fit import SIGMA
from pipeline.offset_table import OFFSETS, OFFSETS_SCHEMA_VERSION
from pipeline.paths import RunPaths

logger = logging.getLogger(__name__)

STAGE_CHIPS = 2
FIX_FIT = "run `cimcosim fit --run-dir RUN` first"


@dataclass(frozen=True)
class ChipsConfig:
    """Configuration of the chips stage."""

    n_chips: int = 100
    """Chips to draw per design (ADC kind x W/L)."""
    adc: tuple[str, ...] = ADC_KINDS
    """ADC kinds to draw."""
    wl_ratios: tuple[float, ...] | None = None
    """W/L values to draw (None: every characterized W/L)."""
    n_macros: int = 8
    """Macros (sub-arrays) on the die."""
    columns_per_macro: int = 128
    """Bitline columns per macro."""
    columns_per_adc: int = 8
    """Columns sharing one ADC through a column mux."""
    sigma_source: str = "direct"
    """'direct' (mean and sigma from the measured trip points; defined at every level) or 'probit'
    (the paper's back-calculation, zero mean; undefined where the pass rate is <= 1/2)."""
    seed: int = 1
    """Root seed of the chip draws."""

    def __post_init__(self) -> None:
        for name in ("n_chips", "n_macros", "columns_per_macro", "columns_per_adc"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if self.columns_per_macro % self.columns_per_adc:
            raise ConfigError(f"columns_per_macro={self.columns_per_macro} is not a multiple of "
                              f"columns_per_adc={self.columns_per_adc}")
        unknown = set(self.adc) - set(ADC_KINDS)
        if unknown or not self.adc:
            raise ConfigError(f"unknown ADC kind(s) {sorted(unknown)}; choose from {list(ADC_KINDS)}")
        if self.sigma_source not in ("direct", "probit"):
            raise ConfigError(f"sigma_source={self.sigma_source!r}; choose 'direct' or 'probit'")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")

    @property
    def adcs_per_macro(self) -> int:
        return self.columns_per_macro // self.columns_per_adc


def current_to_lsb(current_a: np.ndarray, x: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Invert the measured (monotone) current curve: partial-sum units of a current, extrapolated linearly."""
    out = np.interp(current_a, cur, x)
    lo, hi = current_a < cur[0], current_a > cur[-1]
    out[lo] = x[0] + (current_a[lo] - cur[0]) * (x[1] - x[0]) / (cur[1] - cur[0])
    out[hi] = x[-1] + (current_a[hi] - cur[-1]) * (x[-1] - x[-2]) / (cur[-1] - cur[-2])
    return out


def reference_model(sigma: pd.DataFrame, wl: float, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iref_a, mu_a, sigma_a) per threshold j for one W/L."""
    sub = sigma[sigma.wl_ratio == wl].sort_values("level").drop_duplicates("ref_index").sort_values("ref_index")
    if source == "direct":
        return sub.iref_a.to_numpy(), sub.mu_direct_a.to_numpy(), sub.sigma_direct_a.to_numpy()
    s = sub.sigma_probit_a.to_numpy()
    if not np.isfinite(s).all():
        bad = sub.ref_index[~np.isfinite(s)].tolist()
        raise ConfigError(f"probit sigma is undefined at references {bad} (pass rate <= 1/2) for W/L={wl:g}; "
                          "use sigma_source='direct' or characterize with more samples")
    return sub.iref_a.to_numpy(), np.zeros_like(s), s


def draw_chip(cfg: ChipsConfig, kind: str, chip: int, mu: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Offsets (A) of one chip: [n_macros, adcs_per_macro, n_thresholds]."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(STAGE_CHIPS, ADC_KINDS.index(kind),
                                                                             chip)))
    shape = (cfg.n_macros, cfg.adcs_per_macro)
    if kind == "flash":
        z = rng.standard_normal((*shape, len(sig)))
    else:
        z = np.repeat(rng.standard_normal(shape)[..., None], len(sig), axis=-1)
    return mu + sig * z


def predicted_codes(offset_lsb: np.ndarray, kind: str, n_levels: int) -> np.ndarray:
    """Output codes [n_adcs, n_levels] of ADCs whose thresholds sit at j + 0.5 + offset_lsb[:, j]."""
    thresholds = np.arange(offset_lsb.shape[-1]) + 0.5 + offset_lsb  # [n_adcs, n_thr]
    levels = np.arange(n_levels)
    dec = (levels[None, :, None] >= thresholds[:, None, :]).astype(np.int8)  # [adc, level, thr]
    if kind == "flash":
        return flash_codes(dec)
    return np.stack([sar_codes_from_decisions(d) for d in dec])


def _dist(codes: np.ndarray, n_levels: int) -> np.ndarray:
    """P(code | level): [n_levels (level), n_levels (code)] from codes [n, n_levels]."""
    out = np.zeros((n_levels, n_levels))
    for k in range(n_levels):
        out[k] = np.bincount(np.clip(codes[:, k], 0, n_levels - 1), minlength=n_levels) / len(codes)
    return out


def _tv(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(axis=1)


def tv_noise_floor(codes: np.ndarray, n: int, reps: int = 300, seed: int = 0) -> tuple[float, float]:
    """Mean and 95th percentile of the mean-over-levels TV between the table prediction and ``n`` whole
    ADCs resampled from the table: what n SPICE chips would show if the table were exact. Whole ADCs are
    resampled (not levels independently), so the correlation of one chip's errors across levels -- strong
    for SAR -- is in the spread."""
    n_levels = codes.shape[1]
    pred = _dist(codes, n_levels)
    rng = np.random.default_rng(seed)
    vals = np.array([_tv(pred, _dist(codes[rng.integers(0, len(codes), n)], n_levels)).mean() for _ in range(reps)])
    return float(vals.mean()), float(np.quantile(vals, 0.95))


def chips(run_dir: Path, cfg: ChipsConfig) -> dict[str, Any]:
    """Draw the chips, write ``chips/offsets.parquet``, validate against SPICE, export NeuroSim CSVs."""
    paths = RunPaths(Path(run_dir))
    fit_doc = read_json(paths.offset_model, fix=FIX_FIT)
    sigma, sigma_meta = read_table(paths.sigma_table, SIGMA, fix=FIX_FIT)
    if sigma_meta.get("config_hash") != fit_doc.get("config_hash"):
        raise ArtifactError(f"{paths.sigma_table} is stale against {paths.offset_model}; re-run `cimcosim fit`")
    fix_char = "run `cimcosim characterize --run-dir RUN` first"
    currents, _ = read_table(paths.currents, schemas.CURRENTS, fix=fix_char)
    spice_codes, codes_meta = read_table(paths.adc_codes, schemas.ADC_CODES, fix=fix_char)
    if codes_meta.get("config_hash") != fit_doc.get("upstream_config_hash"):
        raise ArtifactError("characterization changed since `cimcosim fit`; re-run `cimcosim fit --run-dir RUN`")
    available = sorted(float(w) for w in sigma.wl_ratio.unique())
    wls = tuple(cfg.wl_ratios) if cfg.wl_ratios else tuple(available)
    missing = [w for w in wls if w not in available]
    if missing:
        raise ConfigError(f"W/L {missing} not characterized; available: {available}")
    n_thr = int(sigma.ref_index.max()) + 1
    n_levels = n_thr + 1
    bits = int(np.ceil(np.log2(n_levels)))
    chash = config_hash({"chips": asdict(cfg), "fit": fit_doc["config_hash"]})

    frames: list[pd.DataFrame] = []
    groups: list[tuple[str, float, int, int]] = []
    validation: dict[str, Any] = {}
    exports: dict[str, np.ndarray] = {}
    for kind in cfg.adc:
        for wl in wls:
            iref, mu, sig = reference_model(sigma, wl, cfg.sigma_source)
            cur = currents[currents.wl_ratio == wl].sort_values("x")
            x, i_curve = cur.x.to_numpy(), cur.current_a.to_numpy()
            all_lsb = []
            for chip in range(cfg.n_chips):
                off_a = draw_chip(cfg, kind, chip, mu, sig)
                off_lsb = current_to_lsb(iref + off_a, x, i_curve) - (np.arange(n_thr) + 0.5)
                all_lsb.append(off_lsb.reshape(-1, n_thr))
                m, a, j = np.meshgrid(np.arange(cfg.n_macros), np.arange(cfg.adcs_per_macro), np.arange(n_thr),
                                      indexing="ij")
                groups.append((kind, float(wl), chip, len(groups)))
                frames.append(pd.DataFrame({
                    "adc": kind, "wl_ratio": float(wl), "chip_id": chip, "macro_id": m.ravel().astype(np.int32),
                    "adc_id": a.ravel().astype(np.int32), "comparator_id": j.ravel().astype(np.int32),
                    "bits": np.int32(bits), "offset_a": off_a.ravel(), "offset_lsb": off_lsb.ravel(),
                    "seed": cfg.seed}))
            table_codes = predicted_codes(np.concatenate(all_lsb), kind, n_levels)
            pred = _dist(table_codes, n_levels)
            key = f"{kind}_wl{wl:g}"
            exports[key] = pred
            spice = spice_codes[(spice_codes.adc == kind) & (spice_codes.wl_ratio == wl) & (spice_codes.code >= 0)]
            if len(spice):
                emp = _dist(spice.pivot(index="chip", columns="level", values="code").to_numpy(), n_levels)
                n_sp = spice.chip.nunique()
                tv = _tv(pred, emp)
                floor, floor_p95 = tv_noise_floor(table_codes, n_sp)
                validation[key] = {"adc": kind, "wl_ratio": float(wl), "mean_tv": float(tv.mean()),
                                   "max_tv": float(tv.max()), "worst_level": int(tv.argmax()),
                                   "n_spice_chips": int(n_sp), "n_table_adcs": int(cfg.n_chips * cfg.n_macros
                                                                                 * cfg.adcs_per_macro),
                                   "tv_noise_floor": floor, "tv_noise_p95": floor_p95,
                                   "consistent": bool(tv.mean() <= floor_p95), "tv_per_level": tv.tolist()}

    meta = {"stage": "chips", "schema_version": OFFSETS_SCHEMA_VERSION, "config_hash": chash,
            "fit_config_hash": fit_doc["config_hash"], "config": asdict(cfg), "seed": cfg.seed,
            "sigma_source": cfg.sigma_source, "versions": versions(),
            "geometry": {"n_macros": cfg.n_macros, "adcs_per_macro": cfg.adcs_per_macro,
                         "columns_per_adc": cfg.columns_per_adc, "n_thresholds": n_thr, "bits": bits},
            "row_groups": [[k, w, c, g] for k, w, c, g in groups]}
    _write_offsets(pd.concat(frames, ignore_index=True), paths.offsets, meta, len(frames[0]))
    write_json(paths.validation, {"config_hash": chash, "designs": validation})
    for key, pred in exports.items():
        _write_neurosim_csv(paths.chips / f"neurosim_{key}.csv", pred)
    from pipeline.plots_fit import plot_validation

    plot_validation(exports, spice_codes, paths.chips / "validation.png")
    logger.info("chips: %s", {k: round(v["mean_tv"], 3) for k, v in validation.items()})
    return {"validation": validation, "config_hash": chash}


def _write_offsets(df: pd.DataFrame, path: Path, meta: dict[str, Any], rows_per_chip: int) -> None:
    table = pa.Table.from_pandas(df, schema=OFFSETS, preserve_index=False).replace_schema_metadata(
        {META_KEY: json.dumps(meta, default=str).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=rows_per_chip))


def _write_neurosim_csv(path: Path, pred: np.ndarray) -> None:
    codes = np.arange(pred.shape[1])
    mean = pred @ codes
    std = np.sqrt(np.maximum(pred @ codes**2 - mean**2, 0))
    text = "ideal_code,mean_code,std_code\n" + "".join(
        f"{k},{m:.6f},{s:.6f}\n" for k, (m, s) in enumerate(zip(mean, std, strict=True)))
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
