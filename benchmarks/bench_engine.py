"""The fused CPU engine (issue 13), every ratio measured in one run: median of ``--runs`` repetitions.

Setup as bench_cim.py: VGG-8 (CIFAR-10 shape), 8-bit inputs, 2-bit weights, 128-row sub-arrays, 5-bit Flash
ADC with per-chip offsets (N(0, 0.5) LSB per comparator) loaded in every layer. Measured per repetition:
the float forward; the fused noise-free forward; the same with Gaussian noise (sigma 0.5 partial-sum units)
and with a noise table (P(code | psum), the same Gaussian, through the table path); the pure-torch reference
forward and the engine's own chunked matmuls (bench_cim.matmul_bounds); multi-level inputs (one 8-bit
drive per row, one ADC read per tile: partial sums from an int8 matmul, read through bucket tables).
Prints RESULT lines last.
Run: .venv/bin/python benchmarks/bench_engine.py [--batch 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from dataclasses import replace

import numpy as np
import torch
from bench_cim import _peak_gib, _time, matmul_bounds
from scipy.stats import norm

from nn import ADCConfig, ArrayConfig, CIMConfig, QuantConfig, RuntimeConfig, cim_layers, create_model


def _gaussian_table(psum_max: int, n_codes: int, sigma: float) -> tuple[tuple[float, ...], ...]:
    """P(code | psum) for a 1-cell-per-LSB ADC (code c reads psum c, the last code clips) with Gaussian
    read noise: the shape of a measured table, for timing only."""
    edges = np.arange(n_codes - 1) + 0.5
    rows = []
    for p in range(psum_max + 1):
        cdf = norm.cdf((edges - p) / sigma)
        probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
        rows.append(tuple(float(v) for v in probs / probs.sum()))
    return tuple(rows)


def _model(cfg: CIMConfig, ref: torch.nn.Module, offsets: bool) -> torch.nn.Module:
    cim = create_model("vgg8", cim_config=cfg).eval()
    cim.load_state_dict(ref.state_dict(), strict=False)
    if offsets:
        rng = np.random.default_rng(0)
        for layer in cim_layers(cim):
            layer.load_adc_offsets(rng.normal(0, 0.5, (8, 16, cfg.adc.n_thresholds)))
    return cim


#: The benchmark's CIM setup: 5-bit Flash, 128-row arrays, A8/W2.
BASE = CIMConfig(adc=ADCConfig(bits=5, kind="flash", psum_max=31.0), array=ArrayConfig(rows=128),
                 quant=QuantConfig(weight_bits=2, input_bits=8, input_max=4.0))


def multilevel(cfg: CIMConfig) -> CIMConfig:
    """``cfg`` with 8-bit multi-level inputs read over the full partial-sum range."""
    return replace(cfg, adc=replace(cfg.adc, psum_max=None), quant=replace(cfg.quant, input_mode="multilevel"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = BASE
    x = torch.rand(args.batch, 3, 32, 32)
    ref = create_model("vgg8").eval()
    models = {
        "fused": _model(base, ref, True),
        "gaussian": _model(replace(base, adc=replace(base.adc, noise_sigma=0.5)), ref, True),
        "table": _model(replace(base, adc=replace(base.adc, noise_table=_gaussian_table(128, 32, 0.5))), ref, False),
        "reference": _model(replace(base, runtime=RuntimeConfig(fused=False)), ref, True),
        "multilevel": _model(multilevel(base), ref, True),
    }
    print(f"machine: {platform.node()} {platform.machine()} torch {torch.__version__} threads "
          f"{torch.get_num_threads()} batch {args.batch} runs {args.runs}")
    with torch.no_grad():
        for m in models.values():
            m(x)  # warm-up: numba compilation, weight packing
    times: dict[str, list[float]] = {k: [] for k in [*models, "float", "chunked", "bound"]}
    for _ in range(args.runs):
        with torch.no_grad():
            times["float"].append(_time(lambda: ref(x), "cpu", 3))
            for name, m in models.items():
                times[name].append(_time(lambda m=m: m(x), "cpu", 1))
        bound, chunked = matmul_bounds(models["reference"], x, "cpu", base.runtime.chunk_elements, 1)
        times["bound"].append(bound)
        times["chunked"].append(chunked)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>10}: median {med[k]:.3f} s  ({', '.join(f'{t:.3f}' for t in v)})")
    print(f"peak RSS {_peak_gib('cpu'):.2f} GiB")
    print(f"fused / float {med['fused'] / med['float']:.1f}x | reference / float {med['reference'] / med['float']:.1f}x"
          f" | fused speed-up over the reference {med['reference'] / med['fused']:.2f}x")
    print(f"RESULT cim_forward_vs_chunked_matmuls={med['fused'] / med['chunked']:.2f}")
    print(f"RESULT cim_noisy_vs_noise_free_gaussian={med['gaussian'] / med['fused']:.2f}")
    print(f"RESULT cim_noisy_vs_noise_free_table={med['table'] / med['fused']:.2f}")
    print(f"RESULT cim_multilevel_vs_float={med['multilevel'] / med['float']:.1f}")


if __name__ == "__main__":
    main()
