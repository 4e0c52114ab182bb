"""Chip-in-the-loop costs on a real run (issues 8 and 9), measured in one run: median of ``--runs``.

On chip ``--chip`` of a design of a finished ``train`` + ``chips`` run (model0 loaded on that chip's offsets):
- a CIM forward on the chip vs the same model's digital forward (model0's weights, fake-quantized in float,
  the software path) of the same batch: what putting a network on a chip costs every chip-in-the-loop stage;
- a finetune step (forward on the chip with autograd, straight-through backward, AdamW step; the weights are
  re-quantized by the next forward, as in the finetune stage) vs a CIM forward of the same batch (no grad);
- one C&W L2 iteration (our CWL2, one binary-search step, no early abort, per-iteration cost) vs a CIM forward
  + backward to the input of the same batch.
Run: .venv/bin/python benchmarks/bench_chip_loop.py --run-dir runs/default --tag vgg8_fmnist --adc sar --wl 10
     [--device cpu|cuda]   (on cuda every timed call ends with a synchronize)
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from bench_cim import add_device_arg, check_device, timed_once

from nn.attacks import CWL2
from nn.training import cosine_lr, make_optimizer, train_steps
from pipeline.checkpoint import load_checkpoint
from pipeline.datasets import load_data
from pipeline.deployments import Design


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--tag", default="vgg8_fmnist")
    ap.add_argument("--adc", default="sar")
    ap.add_argument("--wl", type=float, default=10.0)
    ap.add_argument("--chip", type=int, default=0)
    ap.add_argument("--batch", type=int, default=200, help="finetune batch (the seed's 200)")
    ap.add_argument("--attack-batch", type=int, default=100, help="C&W images (the attack stage's default 100)")
    ap.add_argument("--cw-iterations", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    add_device_arg(ap)
    args = ap.parse_args()
    dev = args.device
    check_device(ap, dev)
    design = Design(args.run_dir, args.tag, args.adc, args.wl, device=dev)
    model = design.model(f"raw_c{args.chip}")
    digital = design.model("model0")
    header, _ = load_checkpoint(design.paths.model0(args.tag), fix="run `cimcosim train` first")
    data = load_data(header["data"], 2000, args.attack_batch)
    x = data.x_train[:args.batch].to(dev)
    xa, ya = data.x_test.to(dev), data.y_test.to(dev)
    opt = make_optimizer(model, 1e-4, 0.0)
    gen = torch.Generator().manual_seed(0)
    print(f"machine: {platform.node()} {platform.machine()} torch {torch.__version__} threads "
          f"{torch.get_num_threads()} device {dev} | {args.tag} on {args.adc} W/L={args.wl:g} chip {args.chip}, "
          f"finetune batch {args.batch}, attack batch {len(xa)}")

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    def digital_forward() -> None:
        with torch.no_grad():
            digital(x)

    def step() -> None:
        train_steps(model, opt, data.x_train, data.y_train, steps=1, batch=args.batch, generator=gen,
                    lr_at=lambda s: cosine_lr(1e-4, s, 100), device=dev)

    def fwd_bwd() -> None:
        model.eval()
        xg = xa.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xg), ya).backward()
        model.zero_grad(set_to_none=True)

    cw = CWL2(max_iterations=args.cw_iterations, binary_search_steps=1, abort_early=False)
    for fn in (forward, digital_forward, step, fwd_bwd):
        fn()  # warm-up (numba compilation, weight packing)
    t: dict[str, list[float]] = {"forward": [], "digital": [], "step": [], "fwd_bwd": [], "cw_iter": []}
    for _ in range(args.runs):
        t["forward"].append(timed_once(forward, dev))
        t["digital"].append(timed_once(digital_forward, dev))
        t["step"].append(timed_once(step, dev))
        t["fwd_bwd"].append(timed_once(fwd_bwd, dev))
        model.eval()
        t["cw_iter"].append(timed_once(lambda: cw(model, xa, ya), dev) / args.cw_iterations)
    med = {k: statistics.median(v) for k, v in t.items()}
    for k, v in t.items():
        print(f"{k:>8}: median {med[k]:.3f} s  ({', '.join(f'{s:.3f}' for s in v)})")
    print(f"RESULT cim_forward_vs_digital_forward={med['forward'] / med['digital']:.2f}")
    print(f"RESULT finetune_step_vs_cim_forward={med['step'] / med['forward']:.2f}")
    print(f"RESULT cw_iteration_vs_cim_fwd_bwd={med['cw_iter'] / med['fwd_bwd']:.2f}")


if __name__ == "__main__":
    main()
