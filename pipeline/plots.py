"""Figures of the characterization (paper 001 Fig. 2b and a Fig. 4 analogue)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.artifacts import atomic_write  # noqa: E402


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically, through a temporary file of its own: two stages drawing the same
    figure at once (e.g. finetunes of two designs, each redrawing the tag's curves) cannot take each other's file."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_pass_rate(rates: pd.DataFrame, path: Path) -> None:
    """Sense pass rate vs partial sum, one curve per W/L; column current on a second panel."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for wl, sub in rates.groupby("wl_ratio"):
        n = int(sub.n_samples.min())
        ax.plot(sub.level, sub.pass_rate, marker="o", ms=3, label=f"W/L={wl:g} (N={n})")
        ax2.plot(sub.level, sub.psum_current_a * 1e6, marker=".", label=f"W/L={wl:g}")
    ax.set(xlabel="partial sum (cells on)", ylabel="sense pass rate", ylim=(0, 1.02),
           title="SA sense pass rate vs partial sum")
    ax.legend()
    ax2.set(xlabel="partial sum (cells on)", ylabel="bitline current at sense start (uA)",
            title="column current (nominal devices)")
    ax2.legend()
    save_figure(fig, path)


def plot_adc_codes(codes: pd.DataFrame, path: Path) -> None:
    """Output-code distribution per input level (2-D histogram) for every ADC kind and W/L."""
    groups = list(codes.groupby(["adc", "wl_ratio"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4), squeeze=False)
    for ax, ((adc, wl), sub) in zip(axes[0], groups, strict=True):
        sub = sub[sub.code >= 0]
        n_levels = int(codes.level.max()) + 1
        hist, _, _ = np.histogram2d(sub.level, sub.code, bins=[np.arange(n_levels + 1) - 0.5] * 2)
        hist = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
        ax.imshow(hist.T, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        std = sub.assign(err=sub.code - sub.level).groupby("level").err.std().mean()
        ax.set(title=f"{adc} W/L={wl:g}: mean std {std:.2f} LSB", xlabel="ideal level", ylabel="output code")
    save_figure(fig, path)


def plot_offset_correlation(mats: dict[float, np.ndarray], path: Path) -> None:
    """Correlation between one SAR SA's offsets at two references, one heat map per W/L."""
    fig, axes = plt.subplots(1, len(mats), figsize=(4.6 * len(mats), 4), squeeze=False)
    for ax, (wl, m) in zip(axes[0], sorted(mats.items()), strict=True):
        im = ax.imshow(m, origin="lower", cmap="RdBu_r", vmin=-1, vmax=1)
        off = m[~np.eye(len(m), dtype=bool)]
        med = float(np.nanmedian(off)) if np.isfinite(off).any() else float("nan")
        ax.set(title=f"SAR SA W/L={wl:g}: median off-diagonal {med:.2f}", xlabel="reference j",
               ylabel="reference i")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="corr(offset_i, offset_j) over SA samples")
    save_figure(fig, path)
