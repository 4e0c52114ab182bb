"""Figures of the network stages: training curve, finetune curves (seed 001 Fig. 5a/b), accuracy histograms
(Fig. 5c/d)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.plots import plt, save_figure


def plot_train_curve(history: pd.DataFrame, path: Path, title: str) -> None:
    """Loss and train/test accuracy per epoch."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    h = history[history.epoch > 0]
    ax.plot(h.epoch, h.loss, marker="o")
    ax.set(xlabel="epoch", ylabel="training loss", title=title)
    ax2.plot(h.epoch, h.train_acc, marker="o", label="train (running)")
    ax2.plot(history.epoch, history.test_acc, marker="s", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    ax2.legend()
    save_figure(fig, path)


def plot_finetune_curves(curves: pd.DataFrame, path: Path, baseline: float | None) -> None:
    """On-chip test accuracy vs finetune iteration, one panel per design, one line per chip (Fig. 5a/b)."""
    designs = list(curves.groupby(["adc", "wl_ratio"]))
    fig, axes = plt.subplots(1, max(len(designs), 1), figsize=(4.6 * max(len(designs), 1), 3.8), squeeze=False)
    for ax, ((adc, wl), sub) in zip(axes[0], designs, strict=False):
        for _chip, c in sub.groupby("chip_id"):
            ax.plot(c.iteration, c.acc_chip, color="tab:blue", alpha=0.35, lw=1)
        mean = sub.groupby("iteration").acc_chip.mean()
        ax.plot(mean.index, mean.values, color="k", lw=2, label=f"mean of {sub.chip_id.nunique()} chips")
        if baseline is not None:
            ax.axhline(baseline, color="tab:green", ls="--", label="software (model0)")
        ax.set(title=f"{adc.upper()} W/L={wl:g}", xlabel="finetune iteration", ylabel="on-chip test accuracy")
        ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_accuracy_hist(results: pd.DataFrame, path: Path) -> None:
    """Histograms over chips of the on-chip accuracy before and after finetune, per design (Fig. 5c/d)."""
    designs = list(results.groupby(["adc", "wl_ratio"]))
    fig, axes = plt.subplots(1, max(len(designs), 1), figsize=(4.6 * max(len(designs), 1), 3.6), squeeze=False)
    for ax, ((adc, wl), sub) in zip(axes[0], designs, strict=False):
        lo = float(min(sub.acc_chip_before.min(), sub.acc_chip_after.min()))
        bins = np.linspace(max(lo - 0.02, 0), 1, 30)
        ax.hist(sub.acc_chip_before, bins=bins, alpha=0.6, label="before finetune")
        ax.hist(sub.acc_chip_after, bins=bins, alpha=0.6, label="after finetune")
        ax.axvline(float(sub.acc_software.iloc[0]), color="tab:green", ls="--", label="software")
        ax.set(title=f"{adc.upper()} W/L={wl:g} ({len(sub)} chips)", xlabel="on-chip test accuracy", ylabel="chips")
        ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)
