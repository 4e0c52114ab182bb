"""Sense-phase length: same trip points with a shorter transient? Measured in one run.

The latch resolves 20-90 ps after SAEN rises (measured on this bench), while the original sense phase
was 1.3 ns, so ~90 % of every transient simulated a latch that had already decided. This script runs
the trip-point bisection on the same mismatch draws at several references and W/L with each sense
phase, compares the trip indices with the 1.3 ns reference, and times both.

Prints one ``RESULT`` line per sense phase: the fraction of trip indices equal to the 1.3 ns ones and
the speed ratio. Run: .venv/bin/python benchmarks/bench_sense_timing.py [--samples 40] [--refs 0 15 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import numpy as np

from circuits.bench import SenseTiming
from pipeline.characterize import build_context
from pipeline.config import CharacterizeConfig
from pipeline.montecarlo import trip_search
from pipeline.seeds import KIND_COMPARATOR, draw_mismatch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--refs", type=int, nargs="+", default=[0, 15, 30])
    ap.add_argument("--wl", type=float, nargs="+", default=[4.0, 10.0])
    ap.add_argument("--sense-ns", type=float, nargs="+", default=[0.4])
    ap.add_argument("--baseline-ns", type=float, default=1.3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ctx0 = build_context(CharacterizeConfig())
    timings = [args.baseline_ns, *args.sense_ns]
    trips: dict[float, list[np.ndarray]] = {t: [] for t in timings}
    seconds = dict.fromkeys(timings, 0.0)
    for wl in args.wl:
        sizing = ctx0.sizing(wl)
        for ref in args.refs:
            dvth, dbeta = draw_mismatch(ctx0.tech, sizing, ctx0.seed, KIND_COMPARATOR, ref, np.arange(args.samples))
            for t in timings:
                ctx = dataclasses.replace(ctx0, timing=dataclasses.replace(SenseTiming(), t_sense_s=t * 1e-9))
                t0 = time.perf_counter()
                trip, status, _ = trip_search(ctx, sizing, ref, dvth, dbeta)
                seconds[t] += time.perf_counter() - t0
                trips[t].append(np.where(status == "ok", trip, -1))
    base = np.concatenate(trips[args.baseline_ns])
    print(f"{base.size} trip searches ({args.samples} samples x refs {args.refs} x W/L {args.wl}); "
          f"{args.baseline_ns} ns sense phase: {seconds[args.baseline_ns]:.1f} s")
    for t in args.sense_ns:
        got = np.concatenate(trips[t])
        same = float(np.mean(got == base))
        worst = int(np.max(np.abs(got - base)))
        print(f"sense {t} ns: {seconds[t]:.1f} s, trip indices equal {same:.4f}, max |diff| {worst} grid steps")
        print(f"RESULT sense_{t:g}ns_trip_equal_fraction={same:.4f}")
        print(f"RESULT sense_{t:g}ns_speedup={seconds[args.baseline_ns] / seconds[t]:.2f}")


if __name__ == "__main__":
    main()
