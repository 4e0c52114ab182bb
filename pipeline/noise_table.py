"""Measured ADC noise tables, P(code | ideal partial sum), as CSV (seed 000's measured IMC noise).

Format (plain text, one header row, ``#`` lines are comments)::

    # anything: provenance, chip, supply voltage, "synthetic" for made-up tables
    psum,p0,p1,...,pK
    -256,0.97,0.03,0,...
    -255,...

One row per integer partial sum the ADC can see, consecutive from the array's lowest to its highest
(``CIMConfig.psum_range``: 0..rows with differential columns, -rows..rows with signed columns and binary
cells); column ``p<k>`` is the probability of output code k (the ADC scheme's codes, lowest first). Every
row must be a probability distribution (entries >= 0, sum 1 within 1e-6).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pipeline.config import ConfigError


def read_noise_table(path: str | Path) -> tuple[int, tuple[tuple[float, ...], ...]]:
    """(lowest partial sum, rows of code probabilities) of a noise-table CSV; one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"noise table {p} not found")
    lines = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"noise table {p} has no rows")
    rows = list(csv.reader(lines))
    head = [h.strip() for h in rows[0]]
    if not head or head[0] != "psum" or len(head) < 3 or any(h != f"p{k}" for k, h in enumerate(head[1:])):
        raise ConfigError(f"noise table {p}: header must be 'psum,p0,p1,...' (got {','.join(head)[:60]!r})")
    n_codes = len(head) - 1
    first: int | None = None
    table: list[tuple[float, ...]] = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != n_codes + 1:
            raise ConfigError(f"noise table {p} line {i}: {len(row)} fields, expected {n_codes + 1}")
        try:
            psum = int(row[0])
            probs = tuple(float(v) for v in row[1:])
        except ValueError as exc:
            raise ConfigError(f"noise table {p} line {i}: not a number ({exc})") from exc
        if first is None:
            first = psum
        if psum != first + len(table):
            raise ConfigError(f"noise table {p} line {i}: partial sum {psum}, expected {first + len(table)} "
                              "(rows must be consecutive integers)")
        if any(not math.isfinite(v) or v < 0 for v in probs) or abs(sum(probs) - 1) > 1e-6:
            raise ConfigError(f"noise table {p} line {i} (psum {psum}): probabilities must be >= 0 and sum to 1 "
                              f"(sum {sum(probs):.6g})")
        table.append(probs)
    if first is None:
        raise ConfigError(f"noise table {p} has a header but no rows")
    return first, tuple(table)


def write_noise_table(path: str | Path, psum_lo: int, table: list[list[float]], comment: str) -> None:
    """Write a table in the format above (``comment`` becomes the leading # lines)."""
    n_codes = len(table[0])
    out = [f"# {line}" for line in comment.splitlines()]
    out.append("psum," + ",".join(f"p{k}" for k in range(n_codes)))
    out += [f"{psum_lo + i}," + ",".join(f"{v:.9g}" for v in row) for i, row in enumerate(table)]
    Path(path).write_text("\n".join(out) + "\n")
