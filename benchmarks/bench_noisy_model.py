"""Noisy vs noise-free forward of a trained model of the train stage (issue 13's noisy ratio on a study model
rather than on bench_engine.py's random VGG-8): every CIM layer's ADC gets Gaussian readout noise of --sigma
partial sums (the model's own offsets and scheme kept), the same images, median of --runs timed forwards.
Run: .venv/bin/python benchmarks/bench_noisy_model.py --model0 RUN/train/TAG/model0.pt [--sigma 1] [--images 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from nn.convert import cim_layers
from pipeline.artifacts import ArtifactError
from pipeline.bfa import model0_on_its_path
from pipeline.datasets import load_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model0", type=Path, required=True)
    ap.add_argument("--sigma", type=float, default=1.0, help="readout noise, in partial sums")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not args.sigma > 0 or min(args.images, args.runs) < 1:
        ap.error("need --sigma > 0 and --images, --runs >= 1")
    try:
        model, header, _ = model0_on_its_path(args.model0)
    except ArtifactError as exc:
        ap.exit(2, f"bench_noisy_model: {exc}\n")
    x = load_data(header["data"], 16, args.images).x_test

    def timed(sigma: float) -> float:
        for layer in cim_layers(model):
            c = layer.cim_config
            layer.cim_config = replace(c, adc=replace(c.adc, noise_sigma=sigma))
            layer.set_noise_seed(1)
        times = []
        with torch.no_grad():
            model(x[:8])  # programs the chip, compiles and caches the tables
            for _ in range(args.runs):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    quiet, noisy = timed(0.0), timed(args.sigma)
    print(f"torch threads {torch.get_num_threads()}, {len(x)} images: noise-free {quiet:.3f} s, "
          f"sigma {args.sigma:g} {noisy:.3f} s")
    print(f"RESULT study_model_noisy_vs_noise_free={noisy / quiet:.2f}")


if __name__ == "__main__":
    main()
