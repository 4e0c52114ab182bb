"""Tables and figures of the noise study (seed 000 Table II, Figs. 3-6), each with the Parquet behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.artifacts import atomic_write, write_table
from pipeline.plots import plt, save_figure

SUMMARY = pa.schema([
    pa.field("figure", pa.string()), pa.field("series", pa.string()), pa.field("bits", pa.int32()),
    pa.field("noise", pa.string()), pa.field("psq", pa.string()), pa.field("adv_train", pa.bool_()),
    pa.field("metric", pa.string()), pa.field("mean", pa.float64()), pa.field("std", pa.float64()),
    pa.field("n", pa.int64()),
])
ACCURACIES = ("clean_acc", "bb_pgd_acc", "wb_pgd_acc", "worst_acc", "square_acc")
METRICS = (*ACCURACIES, "bfa_flips")


def _agg(results: pd.DataFrame, figure: str, series: str, sel: pd.Series, metrics: tuple[str, ...]) -> list[dict]:
    rows = []
    for (bits, noise, psq, adv), g in results[sel].groupby(["bits", "noise", "psq", "adv_train"], sort=True):
        for m in metrics:
            v = g[m].dropna().to_numpy()
            rows.append({"figure": figure, "series": series, "bits": bits, "noise": noise, "psq": psq,
                         "adv_train": adv, "metric": m, "mean": float(v.mean()) if len(v) else np.nan,
                         "std": float(v.std(ddof=0)) if len(v) else np.nan, "n": len(v)})
    return rows


def figure_tables(results: pd.DataFrame, cfg: Any) -> dict[str, pd.DataFrame]:
    """{figure: long table of mean/std per series, precision and metric}."""
    r, ref, zero = results, cfg.reference, f"{0.0:g}"
    if "square_acc" not in r:  # results of cells attacked before the Square Attack existed
        r = r.assign(square_acc=np.nan)
    out: dict[str, list[dict]] = {"table2": [], "fig3": [], "fig4": [], "fig5": [], "fig6": []}
    for n in cfg.levels:
        for adv in (False, True):
            sel = (r.psq == "none") & (r.noise == n) & (r.adv_train == adv)
            series = f"noise {n}" + (" adv" if adv else "")
            out["fig3"] += _agg(r, "fig3", series, sel, ACCURACIES)
            out["table2"] += _agg(r, "table2", series, sel & (r.bits == min(cfg.bits)), ACCURACIES)
    for n, label in ((zero, "ideal 3.5-bit PSQ"), (ref, "noisy 3.5-bit PSQ")):
        out["fig4"] += _agg(r, "fig4", label, (r.psq == "3.5bit") & (r.noise == n) & r.adv_train, ACCURACIES)
    for p in cfg.psq:
        for n in (zero, ref):
            sel = (r.psq == p) & (r.noise == n) & ~r.adv_train
            out["fig5"] += _agg(r, "fig5", f"PSQ {p}, noise {n}", sel, ACCURACIES)
    for label, p, n in (("baseline", "none", zero), ("IMC", "3.5bit", ref), ("Bin. IS", "1bit", zero),
                        ("Bin. IS IMC", "1bit", ref)):
        sel = (r.psq == p) & (r.noise == n) & ~r.adv_train
        out["fig6"] += _agg(r, "fig6", label, sel, ("bfa_flips", "clean_acc"))
    return {k: pd.DataFrame(v, columns=SUMMARY.names) for k, v in out.items()}


def _bars(ax: Any, tab: pd.DataFrame, metric: str, bits: tuple[int, ...], ylabel: str) -> None:
    t = tab[tab.metric == metric]
    series = list(dict.fromkeys(t.series))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(bits))
    for i, s in enumerate(series):
        g = t[t.series == s].set_index("bits").reindex(list(bits))
        ax.bar(x + i * width - 0.4 + width / 2, g["mean"], width, yerr=g["std"], capsize=2, label=s)
    ax.set_xticks(x, [f"{b}-bit" for b in bits])
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize=7)


def write_figures(results: pd.DataFrame, cfg: Any, out: Path, meta: dict[str, Any]) -> None:
    """table2.md, fig3-6.png and figN.parquet under ``out``."""
    tabs = figure_tables(results, cfg)
    for name, tab in tabs.items():
        write_table(tab, out / f"{name}.parquet", SUMMARY, {**meta, "figure": name})
    bits = tuple(sorted(cfg.bits))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    for ax, adv in zip(axes[0], (False, True), strict=True):
        t = tabs["fig3"][tabs["fig3"].series.str.endswith(" adv") == adv]
        _bars(ax, t, "bb_pgd_acc", bits, "black-box PGD accuracy")
        ax.set_title(f"({'b' if adv else 'a'}) {'adversarial' if adv else 'clean'} training, noise-aware")
    if tabs["fig3"].empty:  # no cells without PSQ: like the other figures, not drawn (nor left from a rerun)
        plt.close(fig)
        (out / "fig3.png").unlink(missing_ok=True)
    else:
        save_figure(fig, out / "fig3.png")
    for name, metric, ylabel, title in (
            ("fig4", "bb_pgd_acc", "black-box PGD accuracy", "ideal vs noisy 3.5-bit PSQ, adversarial training"),
            ("fig5", "bb_pgd_acc", "black-box PGD accuracy", "input splitting x noise, clean training"),
            ("fig6", "bfa_flips", "bit flips to random guess", "BFA: baseline, IMC noise, binary input split")):
        if tabs[name].empty:  # this grid has no cells for that figure; the report says so
            (out / f"{name}.png").unlink(missing_ok=True)  # an earlier grid's figure would show other cells
            continue
        fig, ax = plt.subplots(figsize=(7, 3.8))
        _bars(ax, tabs[name], metric, bits, ylabel)
        ax.set_title(title, fontsize=10)
        save_figure(fig, out / f"{name}.png")
    text = table2_markdown(tabs["table2"], cfg)
    atomic_write(out / "table2.md", lambda tmp: Path(tmp).write_text(text))


def table2_markdown(tab: pd.DataFrame, cfg: Any) -> str:
    """Seed 000 Table II: clean and black-box PGD accuracy per noise level, without and with PGD adversarial
    training, beside the white-box (EOT) accuracy that shows how much of any gain is gradient obfuscation, and the
    accuracy under the worse of the two per image (and, where the study ran it, under the gradient-free Square
    Attack). A grid without cells of uncompressed partial sums at its lowest precision (Table II's cells) gets one
    line saying so, not a table of dashes."""
    if tab.empty:
        return (f"Table II: this grid has no {min(cfg.bits)}-bit {cfg.model} cells without partial-sum quantization "
                "(add `--psq none`); its cells are in results.parquet and the figures.\n")
    metrics = ACCURACIES if cfg.square_queries else ACCURACIES[:-1]
    names = ["clean", "black-box PGD", "white-box PGD (EOT)", "worst of both", "Square Attack"][:len(metrics)]
    head = names + [f"{n}, adv. trained" for n in names]
    lines = [f"Table II ({min(cfg.bits)}-bit {cfg.model}; mean over {cfg.runs} PGD runs; noise sigma in partial-sum "
             "units)", "", "| noise | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]

    def cell(n: str, adv: bool, metric: str) -> str:
        sel = tab[(tab.noise == n) & (tab.adv_train == adv) & (tab.metric == metric)]
        return "-" if sel.empty or np.isnan(sel["mean"].iloc[0]) else f"{100 * sel['mean'].iloc[0]:.1f}"

    for n in cfg.levels:
        vals = [cell(n, adv, m) for adv in (False, True) for m in metrics]
        lines.append(f"| {n} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
