"""The bitline: a column of resistive memory cells (RRAM-like) of which k conduct, read by the SA.

The column is lumped: ``rows`` cells in parallel, k at R_on and the rest at R_off = R_on * on_off_ratio,
behind a bitline wire resistance, with the bitline capacitance at the SA input. The current that reaches
the SA is *not* assumed: it is what the column in series with the SA's input branch (N1/N3 stack) draws,
so the current step per partial-sum level shrinks as k grows (the series SA resistance matters more as the
column conductance rises).

The conductance is linear in k, so ``x`` may be fractional: the trip-point search evaluates the same
column at non-integer x, and a reference between levels j and j+1 is the column at x = j + 0.5 (a dummy
column of j on-cells and one half-conductance cell).
"""

from __future__ import annotations

from dataclasses import dataclass

from PySpice.Spice.Netlist import SubCircuit

from circuits._spice_text import spice_number


@dataclass(frozen=True)
class BitlineConfig:
    """Electrical parameters of one memory column."""

    rows: int = 31
    """Cells activated per read; partial sums run 0..rows (31 rows -> 32 levels, a 5-bit ADC)."""
    r_on_ohm: float = 100e3
    """On-state resistance of one cell, ohms."""
    on_off_ratio: float = 10.0
    """R_off / R_on of one cell."""
    r_wire_ohm: float = 200.0
    """Lumped bitline wire resistance between the SA input and the cells, ohms."""
    c_bl_f: float = 0.0
    """Bitline capacitance at the SA input, farads. Default 0: the column is a settled resistive load, as
    in the seed ("bitline current becomes smaller as load resistance is larger"), i.e. the array's read
    circuitry is assumed to hold the bitline at its read bias before SAEN. With an uncharged 20 fF the
    latch decides (~10 ps) long before the column RC (~160 ps) settles, and the decision then follows the
    mismatch alone (measured: 29 of 30 samples stuck at one output over the whole input range)."""

    def __post_init__(self) -> None:
        if not isinstance(self.rows, int) or self.rows < 1:
            raise ValueError(f"rows={self.rows!r} must be a positive integer")
        spice_number("r_on_ohm", self.r_on_ohm, positive=True)
        spice_number("on_off_ratio", self.on_off_ratio, positive=True)
        if self.on_off_ratio <= 1:
            raise ValueError(f"on_off_ratio={self.on_off_ratio!r} must be > 1")
        spice_number("r_wire_ohm", self.r_wire_ohm, nonnegative=True)
        spice_number("c_bl_f", self.c_bl_f, nonnegative=True)

    @property
    def n_levels(self) -> int:
        """Number of partial-sum levels, 0..rows."""
        return self.rows + 1

    def column_conductance_s(self, x: float) -> float:
        """Conductance of the cell column with ``x`` cells on (x may be fractional, 0 <= x <= rows)."""
        if not 0.0 <= x <= self.rows:
            raise ValueError(f"x={x!r} outside 0..{self.rows}")
        r_off = self.r_on_ohm * self.on_off_ratio
        return x / self.r_on_ohm + (self.rows - x) / r_off


class Column(SubCircuit):
    """One bitline column: wire resistance, cell-column resistance ``rcol`` (instance parameter), C_bl."""

    NAME = "cim_column"
    NODES = ("bl",)

    def __init__(self, cfg: BitlineConfig) -> None:
        super().__init__(self.NAME, *self.NODES, rcol="1e6")
        self.R("wire", "bl", "cells", raw_spice=spice_number("r_wire_ohm", max(cfg.r_wire_ohm, 1e-3)))
        self.R("cells", "cells", self.gnd, raw_spice="{rcol}")
        if cfg.c_bl_f > 0:
            self.C("bl", "bl", self.gnd, raw_spice=spice_number("c_bl_f", cfg.c_bl_f))
