"""Characterization speed: the project's engine vs the naive method, measured in one run.

Naive method: one ``ngspice -b`` process per Monte Carlo sample per partial-sum level, on the same deck
(one SA instance), timed on a subsample and extrapolated.

Workloads (per W/L; paper scale is 1,000 samples x 32 levels):
  A. every sample decided at all 32 levels (what samples.parquet holds: pass/fail at every level, the
     trip point / input-referred offset, Flash codes). Naive: 32,000 processes. Ours: trip-point
     bisection, ceil(log2(31*2**bits + 2)) transients per sample, in-process ngspice, 2 workers.
  B. pass rate only, one decision per (sample, level) against the level's nearest reference. The
     bisection cannot help (one bit per (sample, level) is needed); ours batches the same 32,000
     transients in-process on 2 workers. Measured on a subsample, extrapolated.
Also: transients per sample vs number of levels (16, 32, 63) to show the log(levels) growth.

Prints ``RESULT characterize_speedup_vs_naive=<ratio>`` (workload A) last.
Run: .venv/bin/python benchmarks/bench_characterize.py [--samples 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import subprocess
import tempfile
import time
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np

from circuits.adc import reference_x
from circuits.bench import SenseTiming, comparator_deck, instances_from_draws
from circuits.bitline import BitlineConfig
from circuits.ngspice import decide
from circuits.technology import load_technology
from pipeline.executor import make_executor
from pipeline.montecarlo import ChunkTask, SpiceContext, run_chunk
from pipeline.seeds import KIND_COMPARATOR, draw_mismatch

WL, REF, BITS = 10.0, 15, 3


def naive_run(deck: str, workdir: Path, t_read_s: float = 0.99 * SenseTiming().t_stop_s) -> int:
    """One ngspice -b process for one (sample, level); returns the decision read at ``t_read_s``."""
    at = f"{t_read_s:.4g}"
    meas = f".meas tran vo FIND v(out_0) AT={at}\n.meas tran vob FIND v(outb_0) AT={at}\n"
    head, _, _ = deck.rpartition(".end")
    path = workdir / "deck.sp"
    path.write_text(head + meas + ".end\n")
    out = subprocess.run(["ngspice", "-b", str(path)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1")).stdout
    values = []
    for name in ("vo", "vob"):
        m = re.search(rf"^{name}\s*=\s*(\S+)", out, re.M)
        if m is None:
            raise RuntimeError(f"ngspice printed no .meas {name} for {path}:\n{out[-2000:]}")
        values.append(float(m.group(1)))
    return int(values[1] > values[0])


def _direct_batch(ctx: SpiceContext, pairs: np.ndarray) -> int:
    """Workload B unit: decide (sample, level) pairs against each level's nearest (upper) reference."""
    sizing = ctx.sizing(WL)
    refs = np.minimum(pairs[:, 1], ctx.bitline.rows - 1)
    dv = np.zeros((len(pairs), 6))
    db = np.zeros((len(pairs), 6))
    for i, (s, r) in enumerate(zip(pairs[:, 0], refs, strict=True)):
        a, b = draw_mismatch(ctx.tech, sizing, ctx.seed, KIND_COMPARATOR, int(r), np.array([s]))
        dv[i], db[i] = a[0], b[0]
    insts = instances_from_draws(pairs[:, 1].astype(float), reference_x(refs), dv, db)
    return int(decide(ctx.tech, sizing, ctx.bitline, ctx.timing, insts).size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--naive-runs", type=int, default=64)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tech = load_technology("freepdk45")
    ctx = SpiceContext(tech, BitlineConfig(), SenseTiming(), 1.0, 8.0, 1, True, BITS)
    n_levels = ctx.bitline.n_levels
    print(f"machine: {platform.node()} {platform.machine()} cores={os.cpu_count()} python {platform.python_version()}")

    # Ours, workload A, at paper scale for one reference comparator.
    tasks = [ChunkTask("sa", WL, REF, s, min(s + 40, args.samples)) for s in range(0, args.samples, 40)]
    t0 = time.perf_counter()
    with make_executor(args.workers) as ex:
        frames = [f.result() for f in as_completed([ex.submit(run_chunk, ctx, t) for t in tasks])]
    t_ours = time.perf_counter() - t0
    import pandas as pd

    ours = pd.concat(frames).set_index("sample").sort_index()
    per_sample = ours.transients.mean()
    print(f"A ours: {args.samples} samples x {n_levels} levels in {t_ours:.1f} s "
          f"({per_sample:.2f} transients/sample, {ours.status.ne('ok').sum()} not ok)")

    # Naive on a subsample, checked against ours on the same draws.
    rng = np.random.default_rng(0)
    picks = [(int(rng.integers(args.samples)), int(rng.integers(n_levels))) for _ in range(args.naive_runs)]
    sizing = ctx.sizing(WL)
    mismatches = 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for s, k in picks:
            dv, db = draw_mismatch(tech, sizing, ctx.seed, KIND_COMPARATOR, REF, np.array([s]))
            deck = comparator_deck(tech, sizing, ctx.bitline, ctx.timing,
                                   instances_from_draws(np.array([float(k)]), np.array([REF + 0.5]), dv, db))
            d = naive_run(deck, Path(tmp))
            mismatches += int(d != ((int(ours.loc[s, "decisions"]) >> k) & 1))
        t_naive_each = (time.perf_counter() - t0) / len(picks)
    t_naive = t_naive_each * args.samples * n_levels
    print(f"naive: {t_naive_each * 1e3:.1f} ms per process; extrapolated {args.samples}x{n_levels}: {t_naive:.0f} s; "
          f"decision mismatches vs ours on the same draws: {mismatches}/{len(picks)}")

    # Workload B on a subsample (every level of the first samples), extrapolated.
    n_b = max(1, args.samples // 8)
    pairs = np.array([(s, k) for s in range(n_b) for k in range(n_levels)])
    t0 = time.perf_counter()
    with make_executor(args.workers) as ex:
        batches = np.array_split(pairs, max(1, len(pairs) // 40))  # 40 instances per deck, as the engine
        list(ex.map(_direct_batch, [ctx] * len(batches), batches))
    t_b = (time.perf_counter() - t0) * args.samples / n_b
    print(f"B ours (one transient per sample and level, batched): extrapolated {t_b:.0f} s; "
          f"speed-up {t_naive / t_b:.2f}x")

    # Cost vs number of levels.
    for rows in (15, 31, 62):
        c = SpiceContext(tech, BitlineConfig(rows=rows), SenseTiming(), 1.0, 8.0, 1, True, BITS)
        t0 = time.perf_counter()
        df = run_chunk(c, ChunkTask("sa", WL, rows // 2, 0, 20))
        print(f"levels={rows + 1}: {df.transients.mean():.2f} transients/sample "
              f"(naive: {rows + 1}), {(time.perf_counter() - t0) / 20 * 1e3:.0f} ms/sample on one core")
    print(f"RESULT passrate_only_speedup_vs_naive={t_naive / t_b:.2f}")
    print(f"RESULT characterize_speedup_vs_naive={t_naive / t_ours:.2f}")


if __name__ == "__main__":
    main()
