"""The pure-torch engine path (what CUDA runs; ``RuntimeConfig(fused=False)`` on a CPU), noisy vs noise free.

Setup as bench_engine.py (VGG-8, CIFAR-10 shape, A8 bit-serial, W2, 128-row arrays, 5-bit ADC with per-chip
offsets N(0, 0.5 LSB)); measured per repetition, median of ``--runs``: the noise-free chip forward (lookup
tables), Gaussian read noise (sigma 0.5 partial sums) on a Flash chip and on a SAR chip (one binary search per
reading in the sorted, shifted thresholds), and a noise table (one binary search per reading over the CDF's
bit patterns). Prints RESULT lines last.
Run: .venv/bin/python benchmarks/bench_torch_path.py [--batch 4] [--runs 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from dataclasses import replace

import torch
from bench_cim import _peak_gib, _time, add_device_arg, check_device
from bench_engine import BASE, _gaussian_table, _model

from nn import create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    add_device_arg(ap)
    args = ap.parse_args()
    dev = args.device
    check_device(ap, dev)
    torch.manual_seed(0)
    base = replace(BASE, runtime=replace(BASE.runtime, fused=False))
    gauss = replace(base.adc, noise_sigma=0.5)
    x = torch.rand(args.batch, 3, 32, 32).to(dev)
    ref = create_model("vgg8").eval()
    models = {
        "noise_free": _model(base, ref, True),
        "gaussian_flash": _model(replace(base, adc=gauss), ref, True),
        "gaussian_sar": _model(replace(base, adc=replace(gauss, kind="sar")), ref, True),
        "table": _model(replace(base, adc=replace(base.adc, noise_table=_gaussian_table(128, 32, 0.5))), ref, False),
    }
    ref.to(dev)
    for m in models.values():
        m.to(dev)
    print(f"machine: {platform.node()} {platform.machine()} torch {torch.__version__} threads "
          f"{torch.get_num_threads()} device {dev} batch {args.batch} runs {args.runs}")
    with torch.no_grad():
        for m in models.values():
            m(x)  # warm-up: tables built once per layer and chip
        times: dict[str, list[float]] = {k: [] for k in ["float", *models]}
        for _ in range(args.runs):
            times["float"].append(_time(lambda: ref(x), dev, 3))
            for name, m in models.items():
                times[name].append(_time(lambda m=m: m(x), dev, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>14}: median {med[k]:.3f} s  ({', '.join(f'{t:.3f}' for t in v)})")
    print(f"peak {'CUDA memory' if dev == 'cuda' else 'RSS'} {_peak_gib(dev):.2f} GiB")
    print(f"RESULT torch_path_vs_float={med['noise_free'] / med['float']:.1f}")
    for k in ("gaussian_flash", "gaussian_sar", "table"):
        print(f"RESULT torch_path_noisy_vs_noise_free_{k}={med[k] / med['noise_free']:.2f}")


if __name__ == "__main__":
    main()
