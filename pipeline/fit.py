"""Stage ``fit``: per-reference Gaussian offset model from the characterization (seed 001 Fig. 3).

Two estimates per (W/L, level/reference), side by side:

* **probit** (the paper's): the pass rate p at level k against its nearest reference j, a distance
  delta_a away in current, is read as P(Iref_j on the correct side) with Iref_j ~ N(ideal, sigma), so
  sigma = delta / Phi^-1(p). A 95 % Clopper-Pearson interval on p maps to an interval on sigma. Edges are
  explicit in ``probit_status``: ``p_is_1`` (no failure seen: the point estimate uses p = 1 - 0.5/n,
  the lower bound is 0), ``p_le_half`` (the zero-mean Gaussian cannot give p <= 1/2: no point estimate,
  upper bound unbounded), ``no_samples``.
* **direct**: the input-referred offsets measured in characterization (trip current minus reference
  current, one per comparator sample) give mean and sigma by a censored-normal maximum likelihood (trip
  points outside the input range are censored, not dropped); 95 % chi-square interval on sigma.

sigma/Iref vs Iref (Fig. 3b) is fitted with a power law, sigma/Iref = a * (Iref / 1 uA)^b, by least
squares in log-log space (R^2 reported).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import optimize, stats

from pipeline import schemas
from pipeline.artifacts import ArtifactError, read_json, read_table, versions, write_json, write_table
from pipeline.config import ConfigError, config_hash
from pipeline.paths import RunPaths

logger = logging.getLogger(__name__)

FIX_CHARACTERIZE = "run `cimcosim characterize --run-dir RUN` first"
CONFIDENCE = 0.95

SIGMA = pa.schema([
    pa.field("circuit", pa.string()),
    pa.field("wl_ratio", pa.float64()),
    pa.field("level", pa.int32()),
    pa.field("ref_index", pa.int32()),
    pa.field("iref_a", pa.float64()),
    pa.field("psum_current_a", pa.float64()),
    pa.field("delta_a", pa.float64()),
    pa.field("n_samples", pa.int64()),
    pa.field("n_pass", pa.int64()),
    pa.field("pass_rate", pa.float64()),
    pa.field("sigma_probit_a", pa.float64()),
    pa.field("sigma_probit_lo_a", pa.float64()),
    pa.field("sigma_probit_hi_a", pa.float64()),  # +inf when p's lower bound is <= 1/2 (see probit_status)
    pa.field("probit_status", pa.string()),
    pa.field("mu_direct_a", pa.float64()),
    pa.field("sigma_direct_a", pa.float64()),
    pa.field("sigma_direct_lo_a", pa.float64()),
    pa.field("sigma_direct_hi_a", pa.float64()),
    pa.field("n_direct", pa.int64()),
    pa.field("n_censored", pa.int64()),
    pa.field("sigma_over_iref", pa.float64()),  # of the direct estimate (defined for every reference)
])


@dataclass(frozen=True)
class FitConfig:
    """Configuration of the fit stage."""

    confidence: float = CONFIDENCE
    """Confidence level of the intervals."""

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence!r} must be in (0.5, 1)")


def probit_sigma(
    n_pass: int, n: int, delta_a: float, confidence: float = CONFIDENCE
) -> tuple[float, float, float, str]:
    """(sigma, lower, upper, status) of the reference sigma implied by ``n_pass`` correct out of ``n``."""
    if n <= 0:
        return np.nan, np.nan, np.nan, "no_samples"
    alpha = 1 - confidence
    p_lo = stats.beta.ppf(alpha / 2, n_pass, n - n_pass + 1) if n_pass > 0 else 0.0
    p_hi = stats.beta.ppf(1 - alpha / 2, n_pass + 1, n - n_pass) if n_pass < n else 1.0

    def sig(p: float) -> float:
        if p >= 1.0:
            return 0.0
        if p <= 0.5:
            return np.inf
        return float(delta_a / stats.norm.ppf(p))

    lo, hi = sig(p_hi), sig(p_lo)
    p = n_pass / n
    if p <= 0.5:
        return np.nan, lo, hi, "p_le_half"
    if n_pass == n:
        return sig(1 - 0.5 / n), 0.0, hi, "p_is_1"
    return sig(p), lo, hi, "ok"


def censored_normal(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """MLE (mu, sigma) of a normal from exact ``values`` plus left-censored (< low) and right-censored (> high)."""
    values = np.asarray(values, dtype=float)
    if len(values) + len(low) + len(high) < 2:
        return np.nan, np.nan
    if len(low) + len(high) == 0 and np.ptp(values) == 0:
        return float(values[0]), 0.0  # identical trip points, nothing censored: the MLE is a point mass
    scale = max(np.std(np.concatenate([values, low, high])), 1e-12)

    def nll(theta: np.ndarray) -> float:
        mu, log_s = theta
        s = np.exp(log_s) * scale
        ll = stats.norm.logpdf(values, mu * scale, s).sum()
        ll += stats.norm.logcdf((np.asarray(low) - mu * scale) / s).sum()
        ll += stats.norm.logsf((np.asarray(high) - mu * scale) / s).sum()
        return -float(ll)

    mu0 = np.mean(values) / scale if len(values) else 0.0
    res = optimize.minimize(nll, x0=np.array([mu0, 0.0]), method="Nelder-Mead",
                            options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    return float(res.x[0] * scale), float(np.exp(res.x[1]) * scale)


def _direct(samples: pd.DataFrame, currents: pd.DataFrame, wl: float, ref: int, confidence: float) -> dict[str, Any]:
    sel = samples[(samples.circuit == "sa") & (samples.wl_ratio == wl) & (samples.ref_index == ref)
                  & (samples.status != "failed")]
    cur = currents[currents.wl_ratio == wl].sort_values("x")
    iref = float(np.interp(ref + 0.5, cur.x, cur.current_a))
    exact = sel.offset_a[sel.censor == "none"].to_numpy()
    n_below = int((sel.censor == "below").sum())
    n_above = int((sel.censor == "above").sum())
    low = np.full(n_below, cur.current_a.iloc[0] - iref)
    high = np.full(n_above, cur.current_a.iloc[-1] - iref)
    mu, sigma = censored_normal(exact, low, high)
    n = len(sel)
    if n >= 2 and np.isfinite(sigma):
        alpha = 1 - confidence
        lo = sigma * np.sqrt((n - 1) / stats.chi2.ppf(1 - alpha / 2, n - 1))
        hi = sigma * np.sqrt((n - 1) / stats.chi2.ppf(alpha / 2, n - 1))
    else:
        lo = hi = np.nan
    return {"mu_direct_a": mu, "sigma_direct_a": sigma, "sigma_direct_lo_a": lo, "sigma_direct_hi_a": hi,
            "n_direct": n, "n_censored": n_below + n_above}


def power_law(iref_a: np.ndarray, ratio: np.ndarray) -> dict[str, float]:
    """Least-squares fit of log(sigma/Iref) = log(a) + b*log(Iref/1uA); returns a, b, r2, n_points."""
    ok = np.isfinite(ratio) & (ratio > 0) & (iref_a > 0)
    if ok.sum() < 3:
        return {"a": np.nan, "b": np.nan, "r2": np.nan, "n_points": int(ok.sum())}
    res = stats.linregress(np.log(iref_a[ok] / 1e-6), np.log(ratio[ok]))
    return {"a": float(np.exp(res.intercept)), "b": float(res.slope), "r2": float(res.rvalue ** 2),
            "n_points": int(ok.sum())}


def load_characterization(paths: RunPaths) -> tuple[dict[str, pd.DataFrame], dict[str, str], str]:
    """Read the characterization tables (schema- and hash-checked); stale mixes are refused."""
    manifest = read_json(paths.characterize_manifest, fix=FIX_CHARACTERIZE)
    tables, hashes = {}, {}
    for name, path, schema in (("samples", paths.samples, schemas.SAMPLES), ("currents", paths.currents,
                               schemas.CURRENTS), ("pass_rate", paths.pass_rate, schemas.PASS_RATE),
                               ("adc_codes", paths.adc_codes, schemas.ADC_CODES)):
        df, meta = read_table(path, schema, fix=FIX_CHARACTERIZE)
        if meta.get("config_hash") != manifest.get("config_hash"):
            raise ArtifactError(f"{path} is stale (config hash {meta.get('config_hash')} != manifest "
                                f"{manifest.get('config_hash')}); re-run `cimcosim characterize`")
        tables[name], hashes[path.name] = df, meta["sha256"]
    return tables, hashes, str(manifest["config_hash"])


def fit(run_dir: Path, cfg: FitConfig | None = None) -> dict[str, Any]:
    """Run the fit stage; writes ``fit/sigma.parquet``, ``fit/offset_model.json`` and two figures."""
    cfg = cfg or FitConfig()
    paths = RunPaths(Path(run_dir))
    tables, hashes, upstream = load_characterization(paths)
    rates, samples, currents = tables["pass_rate"], tables["samples"], tables["currents"]
    rows = []
    for r in rates.itertuples(index=False):
        sig, lo, hi, status = probit_sigma(int(r.n_pass), int(r.n_samples), float(r.delta_a), cfg.confidence)
        d = _direct(samples, currents, float(r.wl_ratio), int(r.ref_index), cfg.confidence)
        rows.append({"circuit": r.circuit, "wl_ratio": r.wl_ratio, "level": r.level, "ref_index": r.ref_index,
                     "iref_a": r.iref_a, "psum_current_a": r.psum_current_a, "delta_a": r.delta_a,
                     "n_samples": r.n_samples, "n_pass": r.n_pass, "pass_rate": r.pass_rate,
                     "sigma_probit_a": sig, "sigma_probit_lo_a": lo, "sigma_probit_hi_a": hi,
                     "probit_status": status, **d, "sigma_over_iref": d["sigma_direct_a"] / r.iref_a})
    table = pd.DataFrame(rows)
    chash = config_hash({"fit": asdict(cfg), "upstream": upstream})
    meta = {"stage": "fit", "config_hash": chash, "upstream_config_hash": upstream, "inputs_sha256": hashes,
            "schema_version": schemas.SCHEMA_VERSION, "versions": versions()}
    fit_dir = paths.fit
    write_table(table, paths.sigma_table, SIGMA, meta)
    models = []
    for wl, sub in table.groupby("wl_ratio"):
        per_ref = sub.sort_values("level").drop_duplicates("ref_index", keep="first")
        law = power_law(per_ref.iref_a.to_numpy(), per_ref.sigma_over_iref.to_numpy())
        models.append({"circuit": "sa", "wl_ratio": float(wl), "power_law_sigma_over_iref": law,
                       "references": _records(per_ref)})
    doc = {**meta, "config": asdict(cfg), "models": models,
           "columns": {f.name: str(f.type) for f in SIGMA}}
    write_json(paths.offset_model, doc)
    from pipeline.plots_fit import plot_fit

    plot_fit(table, models, fit_dir)
    logger.info("fit: %d levels over %d W/L -> %s", len(table), len(models), fit_dir)
    return doc


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and np.isnan(v) else
                        ("inf" if isinstance(v, float) and np.isinf(v) else v)) for k, v in rec.items()})
    return out
