"""CIM forward/backward cost on VGG-8 (issue 4 section 5), measured in one run.

Setup: VGG-8 (CIFAR-10 shape), batch 64, 32x32x3 input, 8-bit bit-serial inputs, 2-bit weights,
128-row sub-arrays, 5-bit Flash ADC with per-chip offsets loaded. Work bound: the dense batched matmuls
of the engine alone (one per input bit-plane over all tiles, slices and polarities), timed with the
same shapes in the same run. Prints ``RESULT cim_forward_vs_work_bound=<ratio>`` last.
Run: .venv/bin/python benchmarks/bench_cim.py [--batch 64] [--device cpu|cuda] [--chunk-elements N]
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import time

import numpy as np
import torch

from nn import ADCConfig, ArrayConfig, CIMConfig, QuantConfig, RuntimeConfig, cim_layers, create_model
from nn.engine import chunk_rows, weight_slices


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a wall-clock time covers it."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed_once(fn, device: str) -> float:
    """Seconds of one call of ``fn`` (no warm-up), the device's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _time(fn, device: str, reps: int = 1) -> float:
    fn()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def add_device_arg(ap: argparse.ArgumentParser, default: str = "cpu") -> None:
    """The benchmarks' ``--device cpu|cuda``."""
    ap.add_argument("--device", default=default, choices=("cpu", "cuda"), help="cpu | cuda (default %(default)s)")


def check_device(ap: argparse.ArgumentParser, device: str) -> None:
    """One line and exit 2 when ``--device cuda`` has no CUDA device to run on."""
    if device == "cuda" and not torch.cuda.is_available():
        ap.exit(2, f"{ap.prog}: --device cuda: this torch build sees no CUDA device; use --device cpu\n")


def _peak_gib(device: str) -> float:
    """Peak memory so far: CUDA allocator peak, or the process's peak resident set."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_bounds(cim: torch.nn.Module, x: torch.Tensor, dev: str, chunk_elements: int, reps: int,
                  weight_bits: int = 2, input_bits: int = 8, rows: int = 128) -> tuple[float, float]:
    """(the issue's work bound: one batched matmul per input bit-plane over all tiles, the engine's own
    cache-sized chunked matmuls with the table-index row), timed with the model's shapes on ``x``."""
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: shapes.append((m, inp[0].shape))) for m in cim_layers(cim)]
    with torch.no_grad():
        cim(x)
    for h in hooks:
        h.remove()
    mats, chunked = [], []
    for m, shp in shapes:
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            ho = (shp[2] + 2 * m.padding[0] - kh) // m.stride[0] + 1
            wo = (shp[3] + 2 * m.padding[1] - kw) // m.stride[1] + 1
            rows_b = shp[0] * ho * wo
        else:
            rows_b = shp[0]
        tiles = math.ceil(m._k / rows)
        cols = weight_slices(weight_bits, 1) * 2 * m._n
        mats.append((torch.rand(tiles, rows_b, rows, device=dev), torch.rand(tiles, rows, cols, device=dev)))
        rows_c = min(rows_b, chunk_rows(tiles, input_bits, cols, chunk_elements))
        n_chunks = math.ceil(rows_b / rows_c)
        chunked.append((n_chunks, torch.rand(tiles, input_bits * rows_c, rows + 1, device=dev),
                        torch.rand(tiles, rows + 1, cols, device=dev)))

    def bound() -> None:  # the work bound: one batched matmul per bit-plane over all tiles
        for a, b in mats:
            for _ in range(input_bits):
                torch.bmm(a, b)

    def bound_chunked() -> None:  # the engine's own matmuls (cache-sized chunks, + the table-index row)
        for n_chunks, a, b in chunked:
            for _ in range(n_chunks):
                torch.bmm(a, b)

    return _time(bound, dev, reps), _time(bound_chunked, dev, reps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    add_device_arg(ap, "cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunk-elements", type=int, default=RuntimeConfig().chunk_elements)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    dev = args.device
    check_device(ap, dev)
    torch.manual_seed(0)
    cfg = CIMConfig(adc=ADCConfig(bits=5, kind="flash"), array=ArrayConfig(rows=128),
                    quant=QuantConfig(weight_bits=2, input_bits=8, input_max=4.0),
                    runtime=RuntimeConfig(chunk_elements=args.chunk_elements))
    x = torch.rand(args.batch, 3, 32, 32, device=dev)
    ref = create_model("vgg8").to(dev).eval()
    cim = create_model("vgg8", cim_config=cfg).to(dev).eval()
    cim.load_state_dict(ref.state_dict(), strict=False)
    rng = np.random.default_rng(0)
    for layer in cim_layers(cim):
        layer.load_adc_offsets(rng.normal(0, 0.5, (8, 16, 31)))
    print(f"machine: {platform.node()} {platform.machine()} torch {torch.__version__} threads "
          f"{torch.get_num_threads()} device {dev} batch {args.batch} "
          f"chunk_elements {args.chunk_elements}")
    t0 = time.perf_counter()
    with torch.no_grad():
        cim(x)
    print(f"first CIM forward {time.perf_counter() - t0:.1f} s")
    with torch.no_grad():
        t_float = _time(lambda: ref(x), dev, 3)
        rss_float = _peak_gib(dev)
        t_cim = _time(lambda: cim(x), dev, args.reps)
        rss_cim = _peak_gib(dev)  # before the work-bound tensors below are allocated

    t_bound, t_chunk = matmul_bounds(cim, x, dev, args.chunk_elements, args.reps)
    xg = x.clone().requires_grad_(True)

    def fwd_grad() -> torch.Tensor:
        cim.zero_grad()
        return cim(xg).sum()

    t_fg = _time(fwd_grad, dev, args.reps)  # forward with autograd recording (what training runs)
    t_bwd = 0.0
    for _ in range(args.reps):  # the backward call alone, after an untimed forward
        loss = fwd_grad()
        t_bwd += timed_once(loss.backward, dev) / args.reps
    peak = (f"peak memory {'CUDA' if dev == 'cuda' else 'RSS'}: after float forwards {rss_float:.2f} GiB, "
            f"after CIM forwards {rss_cim:.2f} GiB, at the end (incl. work-bound tensors) {_peak_gib(dev):.2f} GiB")
    print(f"float forward {t_float:.3f} s | CIM forward {t_cim:.2f} s | work bound (matmuls) {t_bound:.2f} s | "
          f"the engine's own chunked matmuls alone {t_chunk:.2f} s (CIM / those {t_cim / t_chunk:.2f}x)")
    print(f"CIM/float {t_cim / t_float:.1f}x | forward with autograd {t_fg:.2f} s | backward {t_bwd:.2f} s "
          f"(backward/forward {t_bwd / t_cim:.2f})")
    print(peak)
    print(f"RESULT cim_backward_vs_forward={t_bwd / t_cim:.2f}")
    print(f"RESULT cim_forward_vs_chunked_matmuls={t_cim / t_chunk:.2f}")
    print(f"RESULT cim_forward_vs_work_bound={t_cim / t_bound:.2f}")


if __name__ == "__main__":
    main()
