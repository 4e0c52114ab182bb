"""Seed 000 Fig. 6 as a table: every bit-flip attack of one or more run folders, side by side.

Run: .venv/bin/python benchmarks/bfa_summary.py --run-dir runs/sn4f6 [--run-dir runs/sn4_k4 ...] [--at 10 20 40]
Reads every DIR/bfa/<tag>/results.parquet and flips.parquet (written by `cimcosim bfa` or the noise study) and
prints a Markdown table: the attacked model (tag), its path and noise, the attacker (candidates per layer),
the flips per run (a trailing + marks a run that hit the cap without reaching the target accuracy), the
accuracy before, after `--at` flips (mean over runs) and at the end, and the random-flip baseline's end accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pipeline.artifacts import ArtifactError, read_table
from pipeline.bfa import FLIPS, RESULTS


def _acc_at(flips: pd.DataFrame, results: pd.DataFrame, n: int) -> float:
    """Mean over BFA runs of the accuracy after ``n`` flips (a run that stopped earlier keeps its last)."""
    accs = []
    for run, g in flips[flips.method == "bfa"].groupby("run"):
        g = g[g.flip <= n]
        start = results[(results.run == run) & (results.method == "bfa")].acc_before.iloc[0]
        accs.append(g.acc.iloc[-1] if len(g) else start)
    return sum(accs) / len(accs) if accs else float("nan")


def row(folder: Path, at: list[int]) -> str:
    results, meta = read_table(folder / "results.parquet", RESULTS, fix="rerun `cimcosim bfa`")
    flips, _ = read_table(folder / "flips.parquet", FLIPS, fix="rerun `cimcosim bfa`")
    cfg = meta.get("config", {})
    b, rnd = results[results.method == "bfa"], results[results.method == "random"]
    runs = ", ".join(f"{int(f)}{'' if r else '+'}" for f, r in zip(b.flips, b.reached, strict=True))
    cells = [f"{folder.parent.parent.name}/{folder.name}", str(b.path.iloc[0]), f"{b.noise_sigma_psum.iloc[0]:g}",
             str(cfg.get("candidates", 1)), runs, f"{100 * b.acc_before.mean():.1f}",
             *(f"{100 * _acc_at(flips, results, n):.1f}" for n in at), f"{100 * b.acc_after.mean():.1f}",
             f"{100 * rnd.acc_after.mean():.1f}" if len(rnd) else "-"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, action="append", required=True)
    ap.add_argument("--at", type=int, nargs="+", default=[10, 20, 40], help="flip counts to report accuracy at")
    args = ap.parse_args()
    folders = [p.parent for d in args.run_dir for p in sorted((d / "bfa").glob("*/results.parquet"))]
    if not folders:
        print(f"bfa_summary: no DIR/bfa/<tag>/results.parquet under {', '.join(map(str, args.run_dir))}; "
              "run `cimcosim bfa` first", file=sys.stderr)
        raise SystemExit(2)
    head = ["run/tag", "path", "noise (psum)", "candidates", "BFA flips per run", "acc. before",
            *(f"after {n}" for n in args.at), "BFA end", "random end"]
    try:
        rows = [row(folder, args.at) for folder in folders]  # all read before anything is printed
    except ArtifactError as exc:
        print(f"bfa_summary: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]))


if __name__ == "__main__":
    main()
