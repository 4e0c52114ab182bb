"""Accuracy of model0 on many raw chips of every design (no finetune): the "before" column over 20+ chips.

Finetuning 20 chips per design is the finetune stage's job; on a 2-core CPU it costs ~3 min per chip, so this
script measures the cheap half (one on-chip evaluation per chip) over all chips to show the spread that the
finetuned subset is drawn from. Run: .venv/bin/python benchmarks/chip_sweep.py --run-dir runs/default
--tag vgg8_fmnist --chips 20 --images 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nn import load_chip
from nn.training import accuracy
from pipeline.checkpoint import load_checkpoint
from pipeline.datasets import load_data
from pipeline.deployments import Design
from pipeline.offset_table import OffsetTable
from pipeline.paths import RunPaths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--tag", default="vgg8_fmnist")
    ap.add_argument("--chips", type=int, default=20)
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    paths = RunPaths(Path(args.run_dir))
    header, _ = load_checkpoint(paths.model0(args.tag), fix="run `cimcosim train` first")
    data = load_data(header["data"], 1, args.images)
    table = OffsetTable(paths.offsets)
    print("| design | chips | software | nominal chip | raw chips: mean | std | min | max | offset rms (LSB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for adc, wl in table.designs:
        design = Design(Path(args.run_dir), args.tag, adc, wl)
        soft = accuracy(design.model("model0"), data.x_test, data.y_test, batch=200)
        nominal = accuracy(design.model("nominal"), data.x_test, data.y_test, batch=200)
        model = design.model("raw_c0")
        accs, rms = [], []
        for k in range(args.chips):
            load_chip(model, table, adc, wl, k)
            accs.append(accuracy(model, data.x_test, data.y_test, batch=200))
            rms.append(float(np.sqrt(np.mean(np.square(table.threshold_shifts_lsb(adc, wl, k))))))
        a = np.array(accs)
        print(f"| {adc} W/L={wl:g} | {args.chips} | {soft:.4f} | {nominal:.4f} | {a.mean():.4f} | {a.std():.4f} | "
              f"{a.min():.4f} | {a.max():.4f} | {np.mean(rms):.2f} |")


if __name__ == "__main__":
    main()
