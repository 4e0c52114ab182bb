"""Parquet schemas of every table the pipeline writes (checked on write and on read)."""

from __future__ import annotations

import pyarrow as pa

from circuits.sense_amp import MISMATCH_DEVICES

SCHEMA_VERSION = 1

_mismatch = []
for _dev in MISMATCH_DEVICES:
    _mismatch += [pa.field(f"dvth_{_dev}_v", pa.float64()), pa.field(f"dbeta_{_dev}", pa.float64())]

SAMPLES = pa.schema([
    pa.field("technology", pa.string()),
    # 'sa' comparator sample (a Flash comparator) | 'sar' conversion | 'sar_sa' trip point of a SAR chip's SA
    # at one reference | 'flash_val' / 'sar_val' the same on held-out validation draws
    pa.field("circuit", pa.string()),
    pa.field("wl_ratio", pa.float64()),
    pa.field("ref_index", pa.int64()),  # reference j (between levels j and j+1); -1 for SAR rows
    pa.field("sample", pa.int64()),  # sample index (= chip index for Flash and SAR)
    pa.field("seed", pa.int64()),
    *_mismatch,
    pa.field("level", pa.int32()),  # input level of a SAR row; -1 for comparator rows
    pa.field("trip_index", pa.int32()),  # first grid point deciding "above" (grid step 2**-resolution_bits)
    pa.field("trip_level", pa.float64()),  # trip point in levels (NaN when censored)
    pa.field("censor", pa.string()),  # 'none' | 'below' (always above) | 'above' (never above in range)
    pa.field("decisions", pa.int64()),  # comparator: bit k = decision at level k; SAR: step decisions, MSB first
    pa.field("code", pa.int16()),  # SAR output code; -1 for comparator rows or failures
    pa.field("transients", pa.int64()),  # instance-transients this row needed (cost accounting)
    pa.field("status", pa.string()),  # 'ok' | 'metastable' | 'failed'
])

#: Added when chunks are assembled (they need the measured current curve).
SAMPLES = SAMPLES.append(pa.field("trip_current_a", pa.float64())).append(  # column current at the trip point
    pa.field("offset_a", pa.float64()))  # trip_current_a - iref_a: input-referred offset of a comparator sample
CHUNK = pa.schema([f for f in SAMPLES if f.name not in ("trip_current_a", "offset_a")])

CURRENTS = pa.schema([
    pa.field("technology", pa.string()),
    pa.field("wl_ratio", pa.float64()),
    pa.field("x", pa.float64()),  # cells on (fractional on the trip-search grid)
    pa.field("current_a", pa.float64()),  # column current at the start of sensing, nominal devices
])

PASS_RATE = pa.schema([
    pa.field("technology", pa.string()),
    pa.field("circuit", pa.string()),
    pa.field("wl_ratio", pa.float64()),
    pa.field("level", pa.int32()),
    pa.field("ref_index", pa.int32()),  # nearest reference (in current) to this level
    pa.field("psum_current_a", pa.float64()),
    pa.field("iref_a", pa.float64()),
    pa.field("delta_a", pa.float64()),  # |psum_current_a - iref_a|
    pa.field("n_samples", pa.int64()),  # valid samples (status ok/metastable)
    pa.field("n_pass", pa.int64()),
    pa.field("n_failed", pa.int64()),  # samples ngspice could not simulate (excluded, counted)
    pa.field("pass_rate", pa.float64()),
])

ADC_CODES = pa.schema([
    pa.field("technology", pa.string()),
    pa.field("adc", pa.string()),  # 'flash' | 'sar'
    pa.field("wl_ratio", pa.float64()),
    pa.field("chip", pa.int64()),
    pa.field("level", pa.int32()),  # ideal input partial sum
    pa.field("code", pa.int16()),  # ADC output; -1 where a comparison failed
    pa.field("status", pa.string()),
])

#: One SAR SA's offset at every reference (``characterize/sar_offsets.parquet``, one row per sample and
#: reference). Censored trip points (outside 0..rows) sit at the edge of the bisection grid.
SAR_OFFSETS = pa.schema([
    pa.field("technology", pa.string()),
    pa.field("wl_ratio", pa.float64()),
    pa.field("sample", pa.int64()),  # SAR chip (= its 'sar' conversion rows)
    pa.field("ref_index", pa.int32()),
    pa.field("trip_level", pa.float64()),  # trip point in levels (grid edge when censored)
    pa.field("censor", pa.string()),
    pa.field("offset_a", pa.float64()),  # trip current - reference current (edge current when censored)
    pa.field("offset_lsb", pa.float64()),  # trip_level - (ref_index + 0.5)
    pa.field("status", pa.string()),
])
