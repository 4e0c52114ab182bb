"""Per-design summary of a finetune stage (issue 8's table): mean and range over the finetuned chips.

Run: .venv/bin/python benchmarks/finetune_summary.py --run-dir runs/ft --tag vgg8_fmnist
Reads DIR/finetune/<tag>/<adc>_wl<R>/{results,cross_chip}.parquet and prints a Markdown table: chips, offset
rms (LSB), model0 on the chip before finetune, BatchNorm re-estimation only, after finetune, model1 (the
chip's weights, digital), and chip j's own finetuned weights on chip j vs chip k's weights on chip j.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def _fmt(s: pd.Series) -> str:
    return f"{s.mean():.3f} ({s.min():.3f}-{s.max():.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--tag", default="vgg8_fmnist")
    args = ap.parse_args()
    print("| design | chips | offset rms (LSB) | chip before | BatchNorm only | chip after | model1 (digital) "
          "| own weights vs another chip's | iterations |")
    print("|---|---|---|---|---|---|---|---|---|")
    software = None
    for d in sorted((args.run_dir / "finetune" / args.tag).glob("*_wl*"), key=lambda p: p.name):
        if not (d / "results.parquet").is_file():
            continue
        r = pd.read_parquet(d / "results.parquet")
        cross = pd.read_parquet(d / "cross_chip.parquet")
        own = r.set_index("chip_id").acc_chip_after
        pair = cross[cross.weights_chip != cross.offsets_chip]
        pair = pair[pair.offsets_chip.isin(own.index)]
        software = r.acc_software.iloc[0], r.acc_nominal_chip.iloc[0], int(r.n_eval.iloc[0])
        adc, wl = d.name.split("_wl")
        print(f"| {adc} W/L {float(wl):g} | {len(r)} | {r.offset_lsb_rms.mean():.2f} | {_fmt(r.acc_chip_before)} "
              f"| {_fmt(r.acc_chip_bn_only)} | {_fmt(r.acc_chip_after)} | {_fmt(r.acc_model1_digital)} "
              f"| {own.loc[pair.offsets_chip].mean():.3f} vs {pair.acc.mean():.3f} | {int(r.iterations.iloc[0])} |")
    if software:
        print(f"\nsoftware model0 {software[0]:.3f}, on the nominal chip {software[1]:.3f} ({software[2]} test images)")


if __name__ == "__main__":
    main()
