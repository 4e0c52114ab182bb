"""IBM aihwkit on the same VGG-8 as bench_engine.py's multi-level row (issue 13): its forward / the float model.

aihwkit is not a dependency of the project; it needs its own venv with torch 2.12 from PyPI (with the 2.13.0
CPU file aihwkit 1.1.0 imports, but its C++ tiles refuse the tensors: "weights must be a CPU tensor"):
    python3 -m venv /work/aihwkit-venv
    /work/aihwkit-venv/bin/pip install torch==2.12.0 aihwkit==1.1.0     (about 5 GB: a CUDA build of torch)
Run (from the repository root, so `nn` imports; nothing else of the project is used):
    PYTHONPATH=. /work/aihwkit-venv/bin/python benchmarks/bench_aihwkit.py [--batch 16] [--runs 3]
Setup: VGG-8 (CIFAR-10 shape), batch 16, 8-bit inputs (inp_res 1/254), 5-bit outputs (out_res 1/30), tiles of
at most 128 rows (mapping.max_input_size); aihwkit's InferenceRPUConfig defaults otherwise (its output noise
and bound management on: "defaults"), and the same with every forward non-ideality off but the resolutions
("ideal"). Prints RESULT aihwkit_vs_float_<variant>=<ratio> (median of --runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import InferenceRPUConfig
from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType

from nn.models import create_model


def _config(ideal: bool) -> InferenceRPUConfig:
    rpu = InferenceRPUConfig()
    rpu.forward.inp_res = 1 / (2**8 - 2)
    rpu.forward.out_res = 1 / (2**5 - 2)
    rpu.mapping.max_input_size = 128
    rpu.mapping.max_output_size = 0
    if ideal:
        rpu.forward.out_noise = 0.0
        rpu.forward.w_noise = 0.0
        rpu.forward.bound_management = BoundManagementType.NONE
        rpu.forward.noise_management = NoiseManagementType.ABS_MAX
    return rpu


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32)
    ref = create_model("vgg8").eval()
    analog = {name: convert_to_analog(create_model("vgg8"), _config(name == "ideal")).eval()
              for name in ("defaults", "ideal")}
    for m in analog.values():
        m.load_state_dict(ref.state_dict(), strict=False)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()} batch {args.batch} runs {args.runs}")
    times: dict[str, list[float]] = {k: [] for k in ["float", *analog]}
    with torch.no_grad():
        for _ in range(args.runs):
            times["float"].append(_time(lambda: ref(x), 3))
            for name, m in analog.items():
                times[name].append(_time(lambda m=m: m(x), 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>9}: median {med[k]:.3f} s  ({', '.join(f'{t:.3f}' for t in v)})")
    for name in analog:
        print(f"RESULT aihwkit_vs_float_{name}={med[name] / med['float']:.1f}")


if __name__ == "__main__":
    main()
