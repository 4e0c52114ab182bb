"""Figures of the fit stage: pass rate with the Gaussian model (Fig. 3a), sigma/Iref vs Iref (Fig. 3b)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.plots import plt, save_figure


def predicted_pass_rate(df: pd.DataFrame) -> np.ndarray:
    """Pass rate implied by the direct Gaussian (mu, sigma) of each row's reference."""
    below = df.level <= df.ref_index  # level under its reference: correct iff offset > -delta
    z = np.where(below, (df.delta_a + df.mu_direct_a), (df.delta_a - df.mu_direct_a)) / df.sigma_direct_a
    return stats.norm.cdf(z)


def plot_fit(table: pd.DataFrame, models: list[dict[str, Any]], out_dir: Path) -> None:
    """Write ``pass_rate_fit.png`` and ``sigma_vs_iref.png`` into ``out_dir``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for wl, sub in table.groupby("wl_ratio"):
        line = ax.plot(sub.level, sub.pass_rate, "o", ms=4, label=f"SPICE W/L={wl:g}")[0]
        ax.plot(sub.level, predicted_pass_rate(sub), "-", color=line.get_color(), label=f"Gaussian W/L={wl:g}")
    ax.set(xlabel="partial sum", ylabel="sense pass rate", ylim=(0, 1.02),
           title="pass rate: SPICE vs Gaussian Iref model (direct sigma)")
    ax.legend(fontsize=8)
    save_figure(fig, out_dir / "pass_rate_fit.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        wl = model["wl_ratio"]
        sub = table[table.wl_ratio == wl].drop_duplicates("ref_index")
        line = ax.plot(sub.iref_a * 1e6, sub.sigma_over_iref, "o", ms=4, label=f"direct W/L={wl:g}")[0]
        ok = sub.probit_status == "ok"
        ax.plot(sub.iref_a[ok] * 1e6, sub.sigma_probit_a[ok] / sub.iref_a[ok], "x", color=line.get_color(),
                label=f"probit W/L={wl:g}")
        law = model["power_law_sigma_over_iref"]
        if np.isfinite(law["a"]):
            x = np.linspace(sub.iref_a.min(), sub.iref_a.max(), 100) * 1e6
            ax.plot(x, law["a"] * x ** law["b"], "-", color=line.get_color(),
                    label=f"a*Iref^b, b={law['b']:.2f}, R2={law['r2']:.2f}")
    ax.set(xlabel="Iref (uA)", ylabel="sigma / Iref", title="offset sigma relative to Iref")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "sigma_vs_iref.png")


def plot_validation(pred: dict[str, np.ndarray], spice: pd.DataFrame, path: Path) -> None:
    """Table-predicted vs SPICE output-code std per input level, per design (Fig. 4 check)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, p in pred.items():
        kind, wl = key.split("_wl")
        codes = np.arange(p.shape[1])
        mean = p @ codes
        std = np.sqrt(np.maximum(p @ codes**2 - mean**2, 0))
        line = ax.plot(codes, std, "-", label=f"table {kind} W/L={wl}")[0]
        s = spice[(spice.adc == kind) & (spice.wl_ratio == float(wl)) & (spice.code >= 0)]
        if len(s):
            ax.plot(s.groupby("level").code.std(ddof=0), "o", ms=3, color=line.get_color(),
                    label=f"SPICE {kind} W/L={wl}")
    ax.set(xlabel="ideal level", ylabel="std of output code (LSB)", title="ADC output spread: tables vs SPICE")
    ax.legend(fontsize=7)
    save_figure(fig, path)
