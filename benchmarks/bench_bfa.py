"""One BFA iteration against its bound (issue 10), measured in one run: median of ``--runs``.

Bound = (forward + backward) + (number of CIM layers) x forward on the attack batch, with the model's own
forward (model0 on its path: digital for a plain model0). One BFA iteration = gradient ranking over every
layer + one trial flip per layer (+ the committed flip), as :meth:`nn.attacks.BFA.step`.
Run: .venv/bin/python benchmarks/bench_bfa.py --run-dir runs/default --tag vgg8_fmnist [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_cim import add_device_arg, check_device, timed_once

from nn.attacks.bfa import BFA, StoredBits
from nn.convert import cim_layers
from pipeline.bfa import model0_on_its_path
from pipeline.datasets import load_data
from pipeline.paths import RunPaths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--tag", default="vgg8_fmnist")
    ap.add_argument("--attack-batch", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    add_device_arg(ap)
    args = ap.parse_args()
    dev = args.device
    check_device(ap, dev)
    model, header, chip = model0_on_its_path(RunPaths(Path(args.run_dir)).model0(args.tag))
    model.to(dev)
    data = load_data(header["data"], args.attack_batch, 1)
    x, y = data.x_train.to(dev), data.y_train.to(dev)
    n_layers = len(cim_layers(model))
    print(f"machine: {platform.node()} {platform.machine()} torch {torch.__version__} threads "
          f"{torch.get_num_threads()} device {dev} | {args.tag} ({'chip' if chip else 'digital'} path), "
          f"{n_layers} CIM layers, attack batch {len(x)}")

    def bound() -> None:
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(model(xg), y).backward()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for _ in range(n_layers):
                model(x)

    attacked = copy.deepcopy(model)
    bits = StoredBits(attacked)
    attack = BFA()

    def iteration() -> None:
        attack.step(attacked, bits, x, y)

    bound(), iteration()  # warm-up
    tb = [timed_once(bound, dev) for _ in range(args.runs)]
    ti = [timed_once(iteration, dev) for _ in range(args.runs)]
    print(f"bound {statistics.median(tb):.3f} s ({', '.join(f'{t:.3f}' for t in tb)}) | BFA iteration "
          f"{statistics.median(ti):.3f} s ({', '.join(f'{t:.3f}' for t in ti)})")
    print(f"RESULT bfa_iteration_vs_bound={statistics.median(ti) / statistics.median(tb):.2f}")


if __name__ == "__main__":
    main()
