"""5-bit Flash and SAR ADCs built from the SA bench.

Flash: 2^N - 1 SAs, comparator j compares the column against the reference between levels j and j+1
(``x_ref = j + 0.5``), each with its own mismatch draw; every comparator sees its own replica of the
column current (a current-mode flash replicates the bitline current into each SA). The thermometer code
is turned into binary by counting ones, which tolerates bubbles the way a ones-counter encoder does.

SAR: one SA (one mismatch draw) reused for N binary-search comparisons; between steps the reference
column is switched to the trial level (``x_ref = trial - 0.5``), as a reference DAC would.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from circuits.ngspice import DECISION_HIGH, DECISION_LOW


def reference_x(ref_index: np.ndarray | int) -> np.ndarray:
    """Reference column input for reference ``j`` (between levels j and j+1): j + 0.5 cells on."""
    return np.asarray(ref_index, dtype=float) + 0.5


def flash_codes(decisions: np.ndarray) -> np.ndarray:
    """Binary code from thermometer decisions ``[..., n_refs]`` (1/0); a ones count, -1 if any is invalid."""
    d = np.asarray(decisions)
    valid = np.all((d == DECISION_HIGH) | (d == DECISION_LOW), axis=-1)
    return np.where(valid, (d == DECISION_HIGH).sum(axis=-1), -1).astype(np.int16)


def sar_convert(
    compare: Callable[[np.ndarray], np.ndarray], n_inputs: int, n_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run an N-bit SAR conversion on ``n_inputs`` inputs at once.

    Args:
        compare: called once per bit with the reference index of every input (shape [n_inputs]);
            returns decisions (1: input above the reference, 0: below, negative: failed).
        n_inputs: number of simultaneous conversions.
        n_bits: ADC resolution.

    Returns:
        ``(codes, step_decisions)``: int16 codes (-1 where a comparison failed) and the int8 decision of
        every step, shape [n_inputs, n_bits], most significant first.
    """
    code = np.zeros(n_inputs, dtype=np.int64)
    failed = np.zeros(n_inputs, dtype=bool)
    steps = np.zeros((n_inputs, n_bits), dtype=np.int8)
    for step, bit in enumerate(reversed(range(n_bits))):
        trial = code | (1 << bit)
        d = np.asarray(compare(trial - 1))
        steps[:, step] = d
        failed |= d < 0
        code = np.where(d == DECISION_HIGH, trial, code)
    return np.where(failed, -1, code).astype(np.int16), steps


def sar_codes_from_decisions(decisions: np.ndarray) -> np.ndarray:
    """SAR codes from a full decision table ``[n_levels, n_refs]`` of one SA (for model-side checks)."""
    d = np.asarray(decisions)
    n_levels, n_refs = d.shape
    n_bits = int(np.ceil(np.log2(n_refs + 1)))
    levels = np.arange(n_levels)

    def compare(ref: np.ndarray) -> np.ndarray:
        return d[levels, np.clip(ref, 0, n_refs - 1)]

    codes, _ = sar_convert(compare, n_levels, n_bits)
    return codes
