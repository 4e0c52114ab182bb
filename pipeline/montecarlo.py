"""Monte Carlo chunks: pure functions from a task to a table of samples (run in any worker).

Comparator chunks (``kind='sa'``): samples of the SA comparing the bitline against reference j. A sample's
mismatch is static, so its decision is monotone in the bitline input: bisection over a grid of
``1/2**resolution_bits`` of a level finds the smallest grid point where it decides "above" (the trip
index) in ceil(log2(grid + 1)) transients, and the decision at *every* level follows exactly
(decision(k) = 1 iff k * 2**bits >= trip index). Integer levels are grid points, so nothing is
interpolated. Flash chips are assembled from these samples (chip c = sample c of every reference).

SAR chunks (``kind='sar'``): one SA draw per chip, every input level converted by the real N-step binary
search with the reference switched between steps.

SAR offset vectors (``kind='sar_sa'``): the SA draws of the SAR chips, each bisected for its trip point at
reference j like a comparator sample, so one SA's offsets at all references are measured on the same
mismatch (the correlation the SAR chip models need). Converting a vector with the SAR's search must give
the codes of the ``sar`` chunks of the same draw (tested).

Validation chunks (``kind='flash_val'`` comparator samples, ``kind='sar_val'`` SAR conversions) repeat the
above on held-out random streams: whole ADCs that no fit or chip model has seen. A validation chip only
needs its codes at integer levels, so its comparators are bisected on the integer grid
(``resolution_bits = 0``: ceil(log2(rows + 2)) transients instead of ceil(log2(rows * 2**bits + 2))).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuits.adc import reference_x, sar_convert
from circuits.bench import SenseTiming, instances_from_draws
from circuits.bitline import BitlineConfig
from circuits.ngspice import DECISION_HIGH, DECISION_LOW, FAILED, UNRESOLVED, decide
from circuits.sense_amp import MISMATCH_DEVICES, SenseAmpSizing
from circuits.technology import Technology
from pipeline.seeds import KIND_COMPARATOR, KIND_FLASH_VALIDATION, KIND_SAR, KIND_SAR_VALIDATION, draw_mismatch

logger = logging.getLogger(__name__)

STATUS_OK, STATUS_METASTABLE, STATUS_FAILED = "ok", "metastable", "failed"

#: Chunk kinds that bisect one SA per sample at one reference -> (random stream, draws keyed by reference,
#: integer grid only: a validation chip needs its codes at integer levels, not its trip points).
COMPARATOR_KINDS = {"sa": (KIND_COMPARATOR, True, False), "sar_sa": (KIND_SAR, False, False),
                    "flash_val": (KIND_FLASH_VALIDATION, True, True)}
#: Chunk kinds that run full SAR conversions -> random stream.
SAR_KINDS = {"sar": KIND_SAR, "sar_val": KIND_SAR_VALIDATION}


@dataclass(frozen=True)
class SpiceContext:
    """Everything a worker needs to simulate: technology and circuit parameters (picklable)."""

    tech: Technology
    bitline: BitlineConfig
    timing: SenseTiming
    l_factor: float
    precharge_wl_ratio: float
    seed: int
    mismatch: bool
    resolution_bits: int

    def sizing(self, wl_ratio: float) -> SenseAmpSizing:
        return SenseAmpSizing(wl_ratio, self.l_factor, self.precharge_wl_ratio)


@dataclass(frozen=True)
class ChunkTask:
    """One unit of work: samples ``start..stop-1`` of one (kind, W/L, reference)."""

    kind: str
    """'sa' / 'sar_sa' / 'flash_val' (trip points at reference ``ref_index``) or 'sar' / 'sar_val' (full SAR
    conversions); also the ``circuit`` of its rows."""
    wl_ratio: float
    ref_index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        ref = f"r{self.ref_index:02d}" if self.ref_index >= 0 else "all"
        return f"{self.kind}_wl{self.wl_ratio:g}_{ref}_{self.start:06d}-{self.stop:06d}"


def _draws(ctx: SpiceContext, sizing: SenseAmpSizing, kind: int, ref: int, samples: np.ndarray):
    dvth, dbeta = draw_mismatch(ctx.tech, sizing, ctx.seed, kind, ref, samples)
    if not ctx.mismatch:
        dvth, dbeta = np.zeros_like(dvth), np.zeros_like(dbeta)
    return dvth, dbeta


def _base_frame(ctx: SpiceContext, task: ChunkTask, samples: np.ndarray, dvth: np.ndarray, dbeta: np.ndarray):
    frame: dict[str, object] = {
        "technology": ctx.tech.name, "circuit": task.kind, "wl_ratio": float(task.wl_ratio),
        "ref_index": task.ref_index, "sample": samples.astype(np.int64), "seed": ctx.seed,
    }
    for i, dev in enumerate(MISMATCH_DEVICES):
        frame[f"dvth_{dev}_v"] = dvth[:, i]
        frame[f"dbeta_{dev}"] = dbeta[:, i]
    return frame


def trip_search(
    ctx: SpiceContext, sizing: SenseAmpSizing, ref_index: int, dvth: np.ndarray, dbeta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bisection for the trip index of every sample; returns (trip_index, status, transients per sample).

    The grid has ``rows * 2**bits + 1`` points (x = m / 2**bits); trip index ``rows*2**bits + 1`` means
    the sample never decides "above" inside the range, 0 that it always does.
    """
    n = len(dvth)
    scale = 1 << ctx.resolution_bits
    top = ctx.bitline.rows * scale
    lo = np.zeros(n, dtype=np.int64)
    hi = np.full(n, top + 1, dtype=np.int64)
    status = np.full(n, STATUS_OK, dtype=object)
    x_ref = float(reference_x(ref_index))
    runs = np.zeros(n, dtype=np.int64)
    while True:
        active = np.flatnonzero((lo < hi) & (status == STATUS_OK))
        if active.size == 0:
            break
        mid = (lo[active] + hi[active]) // 2
        insts = instances_from_draws(mid / scale, np.full(active.size, x_ref), dvth[active], dbeta[active])
        d = decide(ctx.tech, sizing, ctx.bitline, ctx.timing, insts)
        runs[active] += 1
        above, below = d == DECISION_HIGH, d == DECISION_LOW
        hi[active[above]] = mid[above]
        lo[active[below]] = mid[below] + 1
        meta = d == UNRESOLVED  # latch balanced at this input: the trip point is here
        lo[active[meta]] = hi[active[meta]] = mid[meta]
        status[active[meta]] = STATUS_METASTABLE
        status[active[d == FAILED]] = STATUS_FAILED
    return lo, status, runs


def decisions_from_trip(trip_index: np.ndarray, rows: int, resolution_bits: int) -> np.ndarray:
    """Decision bitmask over levels 0..rows: bit k set iff the sample decides "above" at level k."""
    levels = np.arange(rows + 1, dtype=np.int64) << resolution_bits
    bits = (levels[None, :] >= np.asarray(trip_index)[:, None]).astype(np.int64)
    return (bits << np.arange(rows + 1, dtype=np.int64)).sum(axis=1)


def run_comparator_chunk(ctx: SpiceContext, task: ChunkTask) -> pd.DataFrame:
    """Trip points (and so every level's decision) of samples ``task.start..stop-1`` at one reference."""
    stream, per_ref, integer_grid = COMPARATOR_KINDS[task.kind]
    if integer_grid:
        ctx = dataclasses.replace(ctx, resolution_bits=0)
    sizing = ctx.sizing(task.wl_ratio)
    samples = np.arange(task.start, task.stop)
    dvth, dbeta = _draws(ctx, sizing, stream, task.ref_index if per_ref else -1, samples)
    trip, status, runs = trip_search(ctx, sizing, task.ref_index, dvth, dbeta)
    scale = 1 << ctx.resolution_bits
    top = ctx.bitline.rows * scale
    frame = _base_frame(ctx, task, samples, dvth, dbeta)
    censor = np.where(trip == 0, "below", np.where(trip > top, "above", "none"))
    # Midpoint of the bracketing grid interval; a metastable sample sits exactly on its grid point.
    level = np.where(status == STATUS_METASTABLE, trip / scale, (trip - 0.5) / scale)
    frame.update({
        "level": -1, "trip_index": trip.astype(np.int32),
        "trip_level": np.where(censor == "none", level, np.nan),
        "censor": censor, "decisions": decisions_from_trip(trip, ctx.bitline.rows, ctx.resolution_bits),
        "code": np.int16(-1), "transients": runs, "status": status.astype(str),
    })
    frame["decisions"] = np.where(status == STATUS_FAILED, 0, frame["decisions"])
    return pd.DataFrame(frame)


def run_sar_chunk(ctx: SpiceContext, task: ChunkTask) -> pd.DataFrame:
    """Full SAR conversions of every input level for chips ``task.start..stop-1`` (one SA draw per chip)."""
    sizing = ctx.sizing(task.wl_ratio)
    chips = np.arange(task.start, task.stop)
    dvth, dbeta = _draws(ctx, sizing, SAR_KINDS[task.kind], -1, chips)
    n_levels = ctx.bitline.n_levels
    n_bits = int(np.ceil(np.log2(n_levels)))
    chip_of = np.repeat(np.arange(len(chips)), n_levels)
    level_of = np.tile(np.arange(n_levels), len(chips)).astype(float)
    state = {"meta": np.zeros(len(chip_of), dtype=bool)}

    def compare(ref: np.ndarray) -> np.ndarray:
        insts = instances_from_draws(level_of, reference_x(ref), dvth[chip_of], dbeta[chip_of])
        d = decide(ctx.tech, sizing, ctx.bitline, ctx.timing, insts)
        state["meta"] |= d == UNRESOLVED
        return d

    codes, steps = sar_convert(compare, len(chip_of), n_bits)
    step_bits = ((steps == DECISION_HIGH).astype(np.int64) << np.arange(n_bits - 1, -1, -1)).sum(axis=1)
    status = np.where(state["meta"], STATUS_METASTABLE, np.where(codes < 0, STATUS_FAILED, STATUS_OK))
    base = _base_frame(ctx, task, chips, dvth, dbeta)
    frame = {k: (np.asarray(v)[chip_of] if isinstance(v, np.ndarray) else v) for k, v in base.items()}
    frame.update({
        "level": level_of.astype(np.int32), "trip_index": np.int32(-1), "trip_level": np.nan, "censor": "none",
        "decisions": step_bits, "code": codes, "transients": n_bits, "status": status,
    })
    return pd.DataFrame(frame)


def run_chunk(ctx: SpiceContext, task: ChunkTask) -> pd.DataFrame:
    """Dispatch a task to its chunk function (the function the executor runs)."""
    if task.kind in COMPARATOR_KINDS:
        return run_comparator_chunk(ctx, task)
    if task.kind in SAR_KINDS:
        return run_sar_chunk(ctx, task)
    raise ValueError(f"unknown chunk kind {task.kind!r}")
