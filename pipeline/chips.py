"""Stage ``chips``: per-chip ADC offset tables drawn from what SPICE measured, and their validation.

A chip is one draw of every physical ADC on the die (``n_macros`` x ``adcs_per_macro``), under one of the
chip models of :mod:`pipeline.chip_models` (``paper``: seed 001's Gaussian model; ``empirical``: measured
samples and SAR offset vectors resampled whole; ``copula``: a multivariate normal of the SAR vectors;
``gaussian-copula``, the default: the SAR vectors' measured marginals joined by a Gaussian copula).
Draws come from SeedSequence(seed, spawn_key=(stage, kind, chip[, model])): chip k does not depend on how
many chips are asked for, and one chip id uses the same random numbers at every W/L.

Validation (:mod:`pipeline.chip_validation`) runs every model, whichever one writes the table: the
predicted output-code distribution per input level against full-ADC SPICE -- the held-out validation
chips (``characterize/validation_codes.parquet``) when characterize made them, else the in-sample chips
(``adc_codes.parquet``) -- by total variation, beside the floor the SPICE chip count alone would show.

Each chip's row group carries a SHA-256 of its values in the file metadata (``row_groups``), checked
whenever that chip is read (:class:`pipeline.offset_table.OffsetTable`).
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

from pipeline import schemas
from pipeline.artifacts import META_KEY, ArtifactError, atomic_write, read_json, read_table, versions, write_json
from pipeline.characterize import offset_vectors
from pipeline.chip_models import CHIP_MODELS, MeasuredOffsets, draw_offsets_a, measured_from_tables
from pipeline.chip_validation import code_dist, predicted_codes, spice_code_matrix, validate, write_neurosim_csv
from pipeline.config import ADC_KINDS, ConfigError, config_hash
from pipeline.fit import SIGMA
from pipeline.offset_table import OFFSETS, OFFSETS_SCHEMA_VERSION, chip_digest
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
    model: str = "gaussian-copula"
    """Chip model that draws the table: 'paper' | 'empirical' | 'copula' | 'gaussian-copula'
    (pipeline.chip_models); the default validated best or within 0.005 of the best at every design (README).
    Every model is validated whichever is chosen."""
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
        if self.model not in CHIP_MODELS:
            raise ConfigError(f"model={self.model!r} is not a chip model; choose from {list(CHIP_MODELS)}")
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


def draw_chip(cfg: ChipsConfig, kind: str, chip: int, measured: MeasuredOffsets,
              model: str | None = None) -> np.ndarray:
    """Offsets (A) of one chip: [n_macros, adcs_per_macro, n_thresholds]."""
    model = model or cfg.model
    key: tuple[int, ...] = (STAGE_CHIPS, ADC_KINDS.index(kind), chip)
    if model != "paper":  # the paper model keeps the stream of the tables drawn before the other models
        key += (CHIP_MODELS.index(model),)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))
    return draw_offsets_a(model, kind, measured, rng, (cfg.n_macros, cfg.adcs_per_macro))


def _resolution_bits(x: np.ndarray) -> int:
    return int(round(np.log2(1.0 / (x[1] - x[0]))))


def _measured(cfg: ChipsConfig, sigma: pd.DataFrame, samples: pd.DataFrame, currents: pd.DataFrame,
              wl: float) -> MeasuredOffsets:
    iref, mu, sig = reference_model(sigma, wl, cfg.sigma_source)
    cur = currents[currents.wl_ratio == wl]
    bits = _resolution_bits(np.sort(cur.x.to_numpy()))
    at_wl = samples[samples.wl_ratio == wl]
    comps = offset_vectors(at_wl, currents, bits, circuit="sa")
    vecs = offset_vectors(at_wl, currents, bits, circuit="sar_sa")
    return measured_from_tables(iref, mu, sig, comps, vecs)


def _n_measured(kind: str, m: MeasuredOffsets) -> int:
    """Measured samples behind one design's chip model: SAR vectors, or the fewest comparator samples."""
    if kind == "sar" and m.vectors_a is not None:
        return len(m.vectors_a)
    return min(len(c) for c in m.comparators_a)


def _model_available(model: str, kind: str, m: MeasuredOffsets) -> bool:
    return model == "paper" or kind == "flash" or m.has_vectors


def chips(run_dir: Path, cfg: ChipsConfig) -> dict[str, Any]:
    """Draw the chips, write ``chips/offsets.parquet``, validate every model against SPICE, export NeuroSim CSVs."""
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
    samples, _ = read_table(paths.samples, schemas.SAMPLES, fix=fix_char)
    spice_set = "in_sample"
    if paths.validation_codes.exists():
        spice_codes, val_meta = read_table(paths.validation_codes, schemas.ADC_CODES, fix=fix_char)
        if val_meta.get("config_hash") != codes_meta.get("config_hash"):
            raise ArtifactError(f"{paths.validation_codes} is stale against {paths.adc_codes}; "
                                "re-run `cimcosim characterize`")
        spice_set = "validation"
    available = sorted(float(w) for w in sigma.wl_ratio.unique())
    wls = tuple(cfg.wl_ratios) if cfg.wl_ratios else tuple(available)
    missing = [w for w in wls if w not in available]
    if missing:
        raise ConfigError(f"W/L {missing} not characterized; available: {available}")
    n_thr = int(sigma.ref_index.max()) + 1
    n_levels = n_thr + 1
    bits = int(np.ceil(np.log2(n_levels)))
    chash = config_hash({"chips": asdict(cfg), "fit": fit_doc["config_hash"], "spice_set": spice_set,
                         "characterize": codes_meta.get("config_hash")})

    measured = {(kind, wl): _measured(cfg, sigma, samples, currents, wl) for kind in cfg.adc for wl in wls}
    for (kind, wl), m in measured.items():  # refuse before anything is written
        if not _model_available(cfg.model, kind, m):
            raise ConfigError(f"chip model {cfg.model!r} needs the SAR offset vectors, which {paths.samples} "
                              f"lacks for W/L={wl:g}; re-run `cimcosim characterize` (with --adc sar), "
                              "or draw Flash only (--adc flash), or use --model paper")

    frames: list[pd.DataFrame] = []
    groups: list[list[Any]] = []
    validation: dict[str, Any] = {}
    by_model: dict[str, dict[str, Any]] = {}
    exports: dict[str, np.ndarray] = {}
    table_lsb: dict[str, np.ndarray] = {}
    for (kind, wl), m in measured.items():
        cur = currents[currents.wl_ratio == wl].sort_values("x")
        curve = (cur.x.to_numpy(), cur.current_a.to_numpy())
        key = f"{kind}_wl{wl:g}"
        spice = spice_code_matrix(spice_codes, kind, wl)
        by_model[key] = {}
        for model in CHIP_MODELS:
            if not _model_available(model, kind, m):
                by_model[key][model] = {"available": False}
                continue
            chosen = model == cfg.model
            lsb, chip_frames = _draw_design(cfg, kind, wl, m, model, curve, bits, keep_frames=chosen)
            table_codes = predicted_codes(lsb, kind, n_levels)
            if chosen:
                for chip, frame in enumerate(chip_frames):
                    groups.append([kind, float(wl), chip, len(groups), chip_digest(frame)])
                frames += chip_frames
                exports[key] = code_dist(table_codes, n_levels)
                table_lsb[key] = lsb
            if len(spice):
                entry = {"adc": kind, "wl_ratio": float(wl), "model": model, "spice_set": spice_set,
                         **validate(table_codes, spice, _n_measured(kind, m))}
                by_model[key][model] = entry
                if chosen:
                    validation[key] = entry

    meta = {"stage": "chips", "schema_version": OFFSETS_SCHEMA_VERSION, "config_hash": chash,
            "fit_config_hash": fit_doc["config_hash"], "config": asdict(cfg), "seed": cfg.seed,
            "sigma_source": cfg.sigma_source, "chip_model": cfg.model, "versions": versions(),
            "geometry": {"n_macros": cfg.n_macros, "adcs_per_macro": cfg.adcs_per_macro,
                         "columns_per_adc": cfg.columns_per_adc, "n_thresholds": n_thr, "bits": bits},
            "row_groups": groups}
    _write_offsets(pd.concat(frames, ignore_index=True), paths.offsets, meta, len(frames[0]))
    write_json(paths.validation, {"config_hash": chash, "model": cfg.model, "spice_set": spice_set,
                                  "designs": validation, "models": by_model})
    for key, lsb in table_lsb.items():
        write_neurosim_csv(paths.chips / f"neurosim_{key}.csv", lsb, key.split("_wl")[0], bits)
    from pipeline.plots_fit import plot_validation

    plot_validation(exports, spice_codes, paths.chips / "validation.png")
    logger.info("chips (%s model, %s SPICE): %s", cfg.model, spice_set,
                {k: round(v["mean_tv"], 3) for k, v in validation.items()})
    return {"validation": validation, "models": by_model, "config_hash": chash}


def _draw_design(cfg: ChipsConfig, kind: str, wl: float, m: MeasuredOffsets, model: str,
                 curve: tuple[np.ndarray, np.ndarray], bits: int, keep_frames: bool
                 ) -> tuple[np.ndarray, list[pd.DataFrame]]:
    """Every chip of one design under ``model``: offsets in LSB of every ADC [n_adcs, n_thr], and (for the
    model that writes the table) one frame per chip."""
    n_thr = m.n_thr
    all_lsb, frames = [], []
    for chip in range(cfg.n_chips):
        off_a = draw_chip(cfg, kind, chip, m, model)
        off_lsb = current_to_lsb(m.iref_a + off_a, *curve) - (np.arange(n_thr) + 0.5)
        all_lsb.append(off_lsb.reshape(-1, n_thr))
        if keep_frames:
            frames.append(_chip_frame(cfg, kind, wl, chip, bits, off_a, off_lsb))
    return np.concatenate(all_lsb), frames


def _chip_frame(cfg: ChipsConfig, kind: str, wl: float, chip: int, bits: int, off_a: np.ndarray,
                off_lsb: np.ndarray) -> pd.DataFrame:
    m, a, j = np.meshgrid(np.arange(cfg.n_macros), np.arange(cfg.adcs_per_macro), np.arange(off_a.shape[-1]),
                          indexing="ij")
    return pd.DataFrame({
        "adc": kind, "wl_ratio": float(wl), "chip_id": chip, "macro_id": m.ravel().astype(np.int32),
        "adc_id": a.ravel().astype(np.int32), "comparator_id": j.ravel().astype(np.int32),
        "bits": np.int32(bits), "offset_a": off_a.ravel(), "offset_lsb": off_lsb.ravel(), "seed": cfg.seed})


def _write_offsets(df: pd.DataFrame, path: Path, meta: dict[str, Any], rows_per_chip: int) -> None:
    table = pa.Table.from_pandas(df, schema=OFFSETS, preserve_index=False).replace_schema_metadata(
        {META_KEY: json.dumps(meta, default=str).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=rows_per_chip))
