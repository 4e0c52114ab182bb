"""The fused CPU engine (issue 13), every ratio measured in one run: median of ``--runs`` repetitions.

Setup as bench_cim.py: VGG-8 (CIFAR-10 shape), 8-bit inputs, 2-bit weights, 128-row sub-arrays, 5-bit Flash
ADC with per-chip offsets (N(0, 0.5) LSB per comparator) loaded in every layer. Measured per repetition:
the float forward; the fused noise-free forward; the same with Gaussian noise (sigma 0.5 partial-sum units)
and with a noise table (P(code | psum), the same Gaussian, through the table path); the pure-torch reference
forward and the engine's own chunked matmuls (bench_cim.matmul_bounds); multi-level inputs (one 8-bit
drive per row, one ADC read per tile: partial sums from an int8 matmul, read through bucket tables); on the
CPU also the Gaussian chip through the row-by-row cut kernel (``gaussian_rows``: the kernel before
nn/fused_columns.py read chips' per-column cuts column by column) and, where nn/_simd.c's AVX-512 code runs,
column by column with numba's codes (``gaussian_numba``). Prints RESULT lines last. With
``--device cuda`` every model runs the pure-torch path (the fused engine is
CPU-only: "fused" and "reference" are then the same code), timed with a synchronize around each call;
``--sync-check`` runs one more forward of each model under ``torch.cuda.set_sync_debug_mode("warn")`` and
counts the operations that wait for the GPU (the engine loop should issue none).
Run: .venv/bin/python benchmarks/bench_engine.py [--batch 16] [--runs 3] [--device cpu|cuda] [--sync-check]
     [--psum-max 31] [--sigma 0.5]   (the ADC's full scale; the Gaussian chip's noise, both in partial sums)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bench_cim import _peak_gib, _time, add_device_arg, check_device, matmul_bounds
from scipy.stats import norm

from nn import ADCConfig, ArrayConfig, CIMConfig, QuantConfig, cim_layers, create_model, fused, fused_columns


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


def count_syncs(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, list[str]]:
    """(the number of CUDA host syncs one no-grad forward of ``model`` issues, the source lines that issue them
    with their counts, most frequent first)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.no_grad():
                model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return sum(where.values()), [f"{k} x{n}" for k, n in where.most_common(8)]


def multilevel(cfg: CIMConfig) -> CIMConfig:
    """``cfg`` with 8-bit multi-level inputs read over the full partial-sum range."""
    return replace(cfg, adc=replace(cfg.adc, psum_max=None), quant=replace(cfg.quant, input_mode="multilevel"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    add_device_arg(ap)
    ap.add_argument("--chunk-elements", type=int, default=None, help="the runtime's chunk size (default: its own)")
    ap.add_argument("--sync-check", action="store_true", help="count CUDA host syncs per forward (cuda only)")
    ap.add_argument("--psum-max", type=float, default=31.0, help="the ADC's full scale in partial sums (default 31)")
    ap.add_argument("--sigma", type=float, default=0.5, help="the Gaussian chip's read noise in partial sums")
    args = ap.parse_args()
    dev = args.device
    check_device(ap, dev)
    torch.manual_seed(0)
    if not (args.psum_max > 0 and args.sigma > 0):
        ap.error("--psum-max and --sigma must be > 0")
    base = replace(BASE, adc=replace(BASE.adc, psum_max=args.psum_max))
    if args.chunk_elements is not None:
        base = replace(base, runtime=replace(base.runtime, chunk_elements=args.chunk_elements))
    gauss = replace(base, adc=replace(base.adc, noise_sigma=args.sigma))
    x = torch.rand(args.batch, 3, 32, 32).to(dev)
    ref = create_model("vgg8").eval()
    models = {
        "fused": _model(base, ref, True),
        "gaussian": _model(gauss, ref, True),
        "table": _model(replace(base, adc=replace(base.adc, noise_table=_gaussian_table(128, 32, 0.5))), ref, False),
        "reference": _model(replace(base, runtime=replace(base.runtime, fused=False)), ref, True),
        "multilevel": _model(multilevel(base), ref, True),
    }
    if dev == "cpu":  # the Gaussian chip through the row-by-row cut kernel (before nn/fused_columns.py)
        models["gaussian_rows"] = _model(gauss, ref, True)
        if fused_columns.SIMD:  # ... and column by column with numba's codes (before nn/_simd.c)
            models["gaussian_numba"] = _model(gauss, ref, True)
    ref.to(dev)
    for m in models.values():
        m.to(dev)
    print(f"machine: {platform.node()} {platform.machine()} torch {torch.__version__} threads "
          f"{torch.get_num_threads()} device {dev} batch {args.batch} runs {args.runs} chunk_elements "
          f"{base.runtime.chunk_elements}" + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else ""))
    with torch.no_grad():
        simd = fused_columns.SIMD
        for name, m in models.items():
            fused._COLUMN_CUTS = name != "gaussian_rows"  # (both read when a layer builds its tables)
            fused_columns.SIMD = simd and name != "gaussian_numba"
            m(x)  # warm-up: numba compilation, weight packing, tables
        fused._COLUMN_CUTS, fused_columns.SIMD = True, simd
    times: dict[str, list[float]] = {k: [] for k in [*models, "float", "chunked", "bound"]}
    for _ in range(args.runs):
        with torch.no_grad():
            times["float"].append(_time(lambda: ref(x), dev, 3))
            for name, m in models.items():
                times[name].append(_time(lambda m=m: m(x), dev, 1))
                print(f"  {name}: {times[name][-1]:.3f} s", flush=True)
        bound, chunked = matmul_bounds(models["reference"], x, dev, base.runtime.chunk_elements, 1)
        times["bound"].append(bound)
        times["chunked"].append(chunked)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>10}: median {med[k]:.3f} s  ({', '.join(f'{t:.3f}' for t in v)})")
    print(f"peak {'CUDA memory' if dev == 'cuda' else 'RSS'} {_peak_gib(dev):.2f} GiB")
    print(f"work bound (one batched matmul per bit-plane over all tiles) {med['bound']:.3f} s: fused / bound "
          f"{med['fused'] / med['bound']:.1f}x, float / bound {med['float'] / med['bound']:.2f}x")
    if args.sync_check and dev == "cuda":
        for name, m in models.items():
            n, first = count_syncs(m, x)
            print(f"host syncs in one {name} forward: {n}" + (f" at {', '.join(first)}" if n else ""))
    print(f"fused / float {med['fused'] / med['float']:.1f}x | reference / float {med['reference'] / med['float']:.1f}x"
          f" | fused speed-up over the reference {med['reference'] / med['fused']:.2f}x")
    print(f"RESULT cim_forward_vs_chunked_matmuls={med['fused'] / med['chunked']:.2f}")
    print(f"RESULT cim_noisy_vs_noise_free_gaussian={med['gaussian'] / med['fused']:.2f}")
    print(f"RESULT cim_noisy_vs_noise_free_table={med['table'] / med['fused']:.2f}")
    print(f"RESULT cim_multilevel_vs_float={med['multilevel'] / med['float']:.1f}")
    if "gaussian_rows" in med:
        print(f"RESULT column_cuts_speedup_gaussian={med['gaussian_rows'] / med['gaussian']:.2f}")
    if "gaussian_numba" in med:
        print(f"RESULT simd_codes_speedup_gaussian={med['gaussian_numba'] / med['gaussian']:.2f}")


if __name__ == "__main__":
    main()
