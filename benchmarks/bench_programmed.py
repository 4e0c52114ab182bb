"""A chip programmed once vs reprogrammed at every forward (issue 13): what caching the cells and the packed
weights of unchanged weights saves on a chip-in-the-loop forward (attack iterations, evaluations).

Setup as bench_engine.py (VGG-8, CIFAR-10 shape, A8/W2, 128-row arrays, 5-bit Flash with N(0, 0.5) LSB
offsets), bit-serial and multi-level inputs. "Reprogrammed" drops the layer's cells cache and the engine's
packed weights before each forward, which is what every forward cost before the cache. Median of --runs.
Run: .venv/bin/python benchmarks/bench_programmed.py [--batch 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_engine import BASE, _model, multilevel

from nn import cim_layers, create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    configs = {"bit_serial": BASE, "multilevel": multilevel(BASE)}
    ref = create_model("vgg8").eval()
    x = torch.rand(args.batch, 3, 32, 32)
    print(f"torch threads {torch.get_num_threads()} batch {args.batch} runs {args.runs}")
    for name, cfg in configs.items():
        model = _model(cfg, ref, True)

        def reprogrammed(model: torch.nn.Module = model) -> None:
            for layer in cim_layers(model):
                layer._cells_cache = None
                layer._table_cache.pop("programmed_cells", None)
            model(x)

        times: dict[str, list[float]] = {"once": [], "every": []}
        with torch.no_grad():
            model(x)  # warm-up: numba compilation, tables
            for _ in range(args.runs):
                for key, run in (("once", lambda model=model: model(x)), ("every", reprogrammed)):
                    t0 = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - t0)
        once, every = statistics.median(times["once"]), statistics.median(times["every"])
        print(f"{name}: programmed once {once:.3f} s, reprogrammed every forward {every:.3f} s")
        print(f"RESULT cim_forward_programmed_vs_reprogrammed_{name}={once / every:.2f}")


if __name__ == "__main__":
    main()
