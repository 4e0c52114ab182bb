"""Seed 001 Table 1 with its controls, one column per design and attack run (issue 9's summary table).

Run: .venv/bin/python benchmarks/attack_summary.py --run-dir runs/s9 --tag vgg8_fmnist [--target-chip 0]
     [--source-chip 1]
Reads every DIR/attack/<tag>/<adc>_wl<R>/<attack>/results.parquet and prints a Markdown table: accuracy of
the target on each source's examples (chip 1 = the target chip, chip 2 = the source chip), then the median
L2 / Linf of the examples that fooled their own source.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROWS = [  # (label, source, target); c1 / c2 / m1 / e are filled in per run
    ("before any attack (chip 1)", None, "c1"),
    ("model0 -> model0 (software attack)", "model0", "model0"),
    ("case 1: model0 -> chip 1", "model0", "c1"),
    ("case 2: model1 -> chip 1", "m1", "c1"),
    ("case 3: chip 2 (on chip) -> chip 1", "c2", "c1"),
    ("white box: chip 1 -> chip 1", "c1", "c1"),
    ("control: model0 -> chip 1's offsets, no finetune", "model0", "raw"),
    ("control: model0 -> nominal chip (no offsets)", "model0", "nominal"),
    ("control: model0 -> second software model", "model0", "sw"),
    ("adaptive: EOT over other chips -> chip 1", "e", "c1"),
    ("adaptive: EOT examples -> the chips they were made on (mean)", "e", "own"),
]


def _name(key: str, r: pd.DataFrame, t: int, s: int) -> str:
    sw = next((x for x in r.target.unique() if x.startswith("sw:")), "sw:?")
    eot = next((x for x in r.source.unique() if x.startswith("eot")), "eot?")
    return {"c1": f"chip_c{t}", "c2": f"chip_c{s}", "m1": f"model1_c{t}", "raw": f"raw_c{t}", "sw": sw,
            "e": eot}.get(key, key)


def _cell(r: pd.DataFrame, source: str | None, target: str) -> str:
    if target == "own":  # the EOT attacker's own chips (results written before they were targets: n/a)
        sel = r[(r.source == source) & (r.case == "adaptive: own chip")]
        return f"{100 * sel.acc_after.mean():.0f} %" if len(sel) else "n/a"
    sel = r[r.target == target] if source is None else r[(r.source == source) & (r.target == target)]
    if not len(sel):
        return "n/a"
    v = sel.acc_before.iloc[0] if source is None else sel.acc_after.iloc[0]
    return f"{100 * v:.0f} %"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--tag", default="vgg8_fmnist")
    ap.add_argument("--target-chip", type=int, default=0)
    ap.add_argument("--source-chip", type=int, default=1)
    args = ap.parse_args()
    t, s = args.target_chip, args.source_chip
    runs = {}
    for path in sorted((args.run_dir / "attack" / args.tag).glob("*_wl*/*/results.parquet")):
        adc, wl = path.parent.parent.name.split("_wl")
        runs[f"{adc} W/L {float(wl):g}, {path.parent.name}"] = pd.read_parquet(path)
    if not runs:
        print(f"attack_summary: no {args.run_dir}/attack/{args.tag}/*/*/results.parquet; run `cimcosim attack` first",
              file=sys.stderr)
        raise SystemExit(2)
    print("| source -> target | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for label, src, tgt in ROWS:
        cells = [_cell(r, None if src is None else _name(src, r, t, s), _name(tgt, r, t, s)) for r in runs.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for norm in ("l2", "linf"):
        cells = []
        for r in runs.values():
            own = r.drop_duplicates("source").set_index("source")
            cells.append(f"{own.loc['model0', f'{norm}_median']:.3f}" if "model0" in own.index else "n/a")
        print(f"| median {norm.upper()} of model0's successful examples | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
