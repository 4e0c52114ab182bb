"""Tables and figure of the attack stage, laid out as seed 001's Table 1 and Table 2."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.artifacts import ArtifactError, atomic_write
from pipeline.plots import plt, save_figure

#: Seed 001 Table 1, VGG-8 on CIFAR-10 (accuracies in %), keyed by (ADC, W/L): retrained, software attack
#: (model0), attack on chip1 (case 1), digital (model1), software attack (model1), attack on chip1 (case 2),
#: chip2 after attack, attack on chip1 (case 3). The seed's W/L are 9 and 10 (a 40 nm PDK); ours differ.
SEED_TABLE1 = {("sar", 9): (89.39, 0.61, 73.95, 74.75, 0.09, 83.43, 0.0, 62.10),
               ("sar", 10): (90.87, 0.61, 75.12, 83.89, 0.24, 78.78, 0.0, 64.80),
               ("flash", 9): (91.36, 0.61, 74.10, 89.31, 0.15, 65.73, 0.0, 65.10),
               ("flash", 10): (91.46, 0.61, 74.40, 90.54, 0.21, 51.22, 0.0, 64.30)}
#: Seed 001 Table 2 (VGG-8, %): software attack, attack on chip1, chip2 after attack, attack on chip1.
SEED_TABLE2 = {"before": (91.96, 88.10, 90.5, 90.78), "cw-l0": (0.57, 73.54, 0.261, 71.3),
               "cw-l2": (0.68, 74.23, 0.261, 63.4), "cw-linf": (2.61, 73.35, 0.879, 70.1)}
TABLE1_COLUMNS = ["Retrained accuracy (chip1)", "Software attack (model0)", "Case 1: attack on chip1",
                  "Digital accuracy (model1)", "Software attack (model1)", "Case 2: attack on chip1",
                  "Chip2 acc. after attack", "Case 3: attack on chip1"]


def _acc(df: pd.DataFrame, source: str, target: str, col: str = "acc_after") -> float:
    sel = df[(df.source == source) & (df.target == target)]
    return float(sel[col].iloc[0]) if len(sel) else math.nan


def _before(df: pd.DataFrame, target: str) -> float:
    sel = df[df.target == target]
    return float(sel.acc_before.iloc[0]) if len(sel) else math.nan


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def table1_values(df: pd.DataFrame, target: int, source: int) -> list[float]:
    c1, c2, m1 = f"chip_c{target}", f"chip_c{source}", f"model1_c{target}"
    return [_before(df, c1), _acc(df, "model0", "model0"), _acc(df, "model0", c1), _before(df, m1),
            _acc(df, m1, m1), _acc(df, m1, c1), _acc(df, c2, c2), _acc(df, c2, c1)]


def write_table1(df: pd.DataFrame, cfg: Any, path: Path) -> None:
    """Seed 001 Table 1 for this design and attack, the seed's row beside it, then the controls."""
    t, s = cfg.target_chip, cfg.source_chip
    vals = table1_values(df, t, s)
    lines = [f"# Table 1 ({cfg.name}): {cfg.tag}, {cfg.adc.upper()} W/L={cfg.wl_ratio:g}, chip1 = chip {t}, "
             f"chip2 = chip {s}, {int(df.n_images.iloc[0])} test images", "",
             "| row | " + " | ".join(TABLE1_COLUMNS) + " |", "|---|" + "---|" * len(TABLE1_COLUMNS),
             "| this run | " + " | ".join(_pct(v) for v in vals) + " |"]
    for (adc, wl), seed in SEED_TABLE1.items():
        if adc == cfg.adc:
            lines.append(f"| seed 001 VGG-8 CIFAR-10, {adc.upper()} W/L={wl} | "
                         + " | ".join(f"{v:.2f}%" for v in seed) + " |")
    lines += ["", "Controls (accuracy of the target on the source's examples; before -> after):", "",
              "| control | source -> target | before | after |", "|---|---|---|---|"]
    for case in ("white-box", "control: offsets only", "control: software to nominal chip",
                 "control: software to software", "adaptive", "adaptive: own chip"):
        for _, r in df[df.case == case].iterrows():
            lines.append(f"| {case} | {r.source} -> {r.target} | {_pct(r.acc_before)} | {_pct(r.acc_after)} |")
    src = df.drop_duplicates("source").set_index("source")
    lines += ["", "The source's examples: share of the images it classified right that they fool, and their size "
              "(median over those images; L0 in pixels):", "",
              "| source | fools itself | L0 | L2 | Linf |", "|---|---|---|---|---|"]
    for name, r in src.iterrows():
        lines.append(f"| {name} | {_pct(r.source_success)} | {r.l0_median:.0f} | {r.l2_median:.3f} | "
                     f"{r.linf_median:.3f} |")
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_table2(design_dir: Path, cfg: Any) -> None:
    """Seed 001 Table 2 (C&W with L0, L2, L-inf) from the C&W runs of this design found so far."""
    from pipeline.attack import read_results

    t, s = cfg.target_chip, cfg.source_chip
    rows = []
    before = None
    for norm in ("cw-l0", "cw-l2", "cw-linf"):
        path = design_dir / norm / "results.parquet"
        if not path.is_file():
            continue
        try:
            df = read_results(path)
        except ArtifactError:
            continue
        c1, c2 = f"chip_c{t}", f"chip_c{s}"
        vals = [_acc(df, "model0", "model0"), _acc(df, "model0", c1), _acc(df, c2, c2), _acc(df, c2, c1)]
        before = before or [_before(df, "model0"), _before(df, c1), _before(df, c2), _before(df, c1)]
        rows.append(f"| {norm} | " + " | ".join(_pct(v) for v in vals) + " | "
                    + " / ".join(f"{v:g}%" for v in SEED_TABLE2[norm]) + " |")
    if not rows:
        return
    lines = [f"# Table 2: {cfg.tag}, {cfg.adc.upper()} W/L={cfg.wl_ratio:g}, chip1 = chip {t}, chip2 = chip {s}", "",
             "| | Software attack (model0) | Attack on chip1 (case 1) | Chip2 acc. after attack | "
             "Attack on chip1 (case 3) | seed 001 VGG-8 (same columns) |", "|---|---|---|---|---|---|",
             "| acc. before attack | " + " | ".join(_pct(v) for v in (before or [])) + " | "
             + " / ".join(f"{v:g}%" for v in SEED_TABLE2["before"]) + " |", *rows]
    text = "\n".join(lines) + "\n"
    atomic_write(design_dir / "table2.md", lambda tmp: Path(tmp).write_text(text))


def plot_transfer(df: pd.DataFrame, path: Path, title: str) -> None:
    """Heat map: accuracy of every target (columns) on every source's examples (rows)."""
    sources = list(dict.fromkeys(df.source))
    targets = list(dict.fromkeys(df.target))
    grid = np.full((len(sources), len(targets)), np.nan)
    for _, r in df.iterrows():
        grid[sources.index(r.source), targets.index(r.target)] = r.acc_after
    fig, ax = plt.subplots(figsize=(1.1 * len(targets) + 3, 0.55 * len(sources) + 2))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(sources)):
        for j in range(len(targets)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center",
                        color="w" if grid[i, j] < 0.5 else "k", fontsize=8)
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
    ax.set_yticks(range(len(sources)), sources)
    ax.set(xlabel="target (accuracy on the examples, %)", ylabel="examples made on", title=title)
    fig.colorbar(im, ax=ax, fraction=0.03)
    save_figure(fig, path)
