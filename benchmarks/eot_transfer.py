"""The adaptive attacker's transfer, counted per image: of the images its examples fool on every chip they were made
on, how many fool chip 1 (issue 9; README "An adaptive attacker that must fool every chip").

Run: .venv/bin/python benchmarks/eot_transfer.py --run-dir runs/t6 --tag vgg8_fmnist
Reads every DIR/attack/<tag>/<adc>_wl<R>/<attack>/adv_eot*.pt, applies it to the chips it was made on and to the
target chip (chip 1), and prints one Markdown row per file: images right on all its chips, of those the ones
fooled on all of them ("found"), of those the ones right on chip 1, and of those the ones chip 1 gets wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import torch

from nn.training import predict
from pipeline.artifacts import ArtifactError
from pipeline.checkpoint import load_checkpoint
from pipeline.deployments import Design


def _fail(message: str) -> NoReturn:
    print(f"eot_transfer: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--tag", default="vgg8_fmnist")
    args = ap.parse_args()
    paths = sorted((args.run_dir / "attack" / args.tag).glob("*_wl*/*/adv_eot*.pt"))
    if not paths:
        _fail(f"no adaptive attacker's examples under {args.run_dir}/attack/{args.tag}; run `cimcosim attack --eot K` "
              "first")
    print("| design | attack | source | right on its chips | fooled on all of them | of those right on chip 1 "
          "| and fooled on chip 1 |\n|---|---|---|---|---|---|---|")
    for path in paths:
        try:
            header, state = load_checkpoint(path, fix="rerun `cimcosim attack`", kind="adversarial")
        except ArtifactError as exc:
            _fail(str(exc))
        adc, wl = path.parts[-3].split("_wl")
        design = Design(args.run_dir, args.tag, adc, float(wl), "cpu")
        x, adv, y = state["images"], state["adversarial"], state["labels"]
        right = torch.ones_like(y, dtype=torch.bool)
        fooled = right.clone()
        for k in header["eot_chips"]:
            chip = design.model(f"chip_c{k}")
            right &= predict(chip, x) == y
            fooled &= predict(chip, adv) != y
        chip1 = design.model(f"chip_c{header['config']['target_chip']}")
        found = right & fooled
        both = found & (predict(chip1, x) == y)
        print(f"| {adc} W/L {wl} | {path.parent.name} | {header['source']} | {int(right.sum())} | {int(found.sum())} "
              f"| {int(both.sum())} | {int((both & (predict(chip1, adv) != y)).sum())} |")


if __name__ == "__main__":
    main()
