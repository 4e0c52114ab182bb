"""CIM forward/backward cost on VGG-8 (issue 4 section 5), measured in one run.

Setup: VGG-8 (CIFAR-10 shape), batch 64, 32x32x3 input, 8-bit bit-serial inputs, 2-bit weights,
128-row sub-arrays, 5-bit Flash ADC with per-chip offsets loaded. Work bound: the dense batched matmuls
of the engine alone (one per input bit-plane over all tiles, slices and polarities), timed with the
same shapes in the same run. Prints ``RESULT cim_forward_vs_work_bound=<ratio>`` last.
Run: .venv/bin/python benchmarks/bench_cim.py [--batch 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import time

import numpy as np
import torch

from nn import ADCConfig, ArrayConfig, CIMConfig, QuantConfig, cim_layers, create_model
from nn.engine import weight_slices


def _time(fn, device: str, reps: int = 1) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = args.device
    torch.manual_seed(0)
    cfg = CIMConfig(adc=ADCConfig(bits=5, kind="flash"), array=ArrayConfig(rows=128),
                    quant=QuantConfig(weight_bits=2, input_bits=8, input_max=4.0))
    x = torch.rand(args.batch, 3, 32, 32, device=dev)
    ref = create_model("vgg8").to(dev).eval()
    cim = create_model("vgg8", cim_config=cfg).to(dev).eval()
    cim.load_state_dict(ref.state_dict(), strict=False)
    rng = np.random.default_rng(0)
    for layer in cim_layers(cim):
        layer.load_adc_offsets(rng.normal(0, 0.5, (8, 16, 31)))
    print(f"machine: {platform.node()} {platform.machine()} torch {torch.__version__} threads "
          f"{torch.get_num_threads()} device {dev}")
    with torch.no_grad():
        t_float = _time(lambda: ref(x), dev, 2)
        t_cim = _time(lambda: cim(x), dev, 1)

    # Work bound: the engine's matmuls alone, same shapes, every CIM layer.
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: shapes.append((m, inp[0].shape))) for m in cim_layers(cim)]
    with torch.no_grad():
        cim(x)
    for h in hooks:
        h.remove()
    mats = []
    for m, shp in shapes:
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            ho = (shp[2] + 2 * m.padding[0] - kh) // m.stride[0] + 1
            wo = (shp[3] + 2 * m.padding[1] - kw) // m.stride[1] + 1
            rows_b = shp[0] * ho * wo
        else:
            rows_b = shp[0]
        tiles = math.ceil(m._k / 128)
        cols = weight_slices(2, 1) * 2 * m._n
        mats.append((torch.rand(tiles, rows_b, 128, device=dev), torch.rand(tiles, 128, cols, device=dev)))

    def bound() -> None:
        for a, b in mats:
            for _ in range(8):
                torch.bmm(a, b)

    t_bound = _time(bound, dev, 1)
    xg = x.clone().requires_grad_(True)

    def fwd_bwd() -> None:
        cim.zero_grad()
        cim(xg).sum().backward()

    t_fb = _time(fwd_bwd, dev, 1)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"float forward {t_float:.3f} s | CIM forward {t_cim:.2f} s | work bound (matmuls) {t_bound:.2f} s")
    print(f"CIM/float {t_cim / t_float:.1f}x | forward+backward {t_fb:.2f} s (backward/forward "
          f"{(t_fb - t_cim) / t_cim:.2f}) | peak RSS {rss_gib:.2f} GiB")
    print(f"RESULT cim_forward_vs_work_bound={t_cim / t_bound:.2f}")


if __name__ == "__main__":
    main()
