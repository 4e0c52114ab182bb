"""Test benches: many SA instances in one transient deck, and the DC current probe.

Each SA instance gets its own bitline column (partial-sum input ``x_bl``) and reference column
(``x_ref``), and its own mismatch draw; the PRE/SAEN waveforms are shared. One transient therefore
decides every instance at once. Flash comparators and the SAR's single SA are both instances of this
bench: they differ only in which inputs and draws the Monte Carlo engine gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PySpice.Spice.Netlist import Circuit

from circuits._spice_text import NetlistValueError, spice_number
from circuits.bitline import BitlineConfig, Column
from circuits.sense_amp import MISMATCH_DEVICES, SenseAmp, SenseAmpSizing
from circuits.technology import Technology


@dataclass(frozen=True)
class SenseTiming:
    """Two-phase timing of the SA and the transient settings."""

    t_precharge_s: float = 0.2e-9
    """Precharge phase length (PRE low, SAEN low), seconds."""
    t_sense_s: float = 0.3e-9
    """Sense phase length after PRE/SAEN rise, seconds; outputs are read at its end. The latch resolves
    20-90 ps after SAEN rises on this bench; 0.3 ns gives the same trip points as the earlier 1.3 ns on
    every one of 240 trip searches at 2.3x the speed (``benchmarks/bench_sense_timing.py``), and a latch
    still unresolved at the read time is retried with a 3x longer phase (``decide``)."""
    t_edge_s: float = 20e-12
    """Rise time of PRE and SAEN, seconds."""
    t_step_s: float = 5e-12
    """Suggested transient step, seconds."""
    t_max_s: float = 5e-12
    """Maximum internal time step, seconds. Explicit TMAX with ``uic`` avoids gmin-stepping notes;
    20 ps was measured to flip nominal decisions, 5 ps and 2 ps agree."""

    def __post_init__(self) -> None:
        for name in ("t_precharge_s", "t_sense_s", "t_edge_s", "t_step_s", "t_max_s"):
            spice_number(name, getattr(self, name), positive=True)

    @property
    def t_stop_s(self) -> float:
        """End of the transient, where the outputs are read."""
        return self.t_precharge_s + self.t_edge_s + self.t_sense_s

    def scaled(self, factor: float) -> SenseTiming:
        """A copy with a longer sense phase and a finer TMAX: the fallback for unresolved or failed runs."""
        return SenseTiming(
            self.t_precharge_s, self.t_sense_s * factor, self.t_edge_s, self.t_step_s / factor, self.t_max_s / factor
        )


@dataclass(frozen=True)
class SAInstance:
    """One SA in a bench: its inputs (cells on, possibly fractional) and its mismatch draw."""

    x_bl: float
    """Cells on in the bitline column (the partial sum under test)."""
    x_ref: float
    """Cells on in the reference column (j + 0.5 for the reference between levels j and j+1)."""
    dvth_v: tuple[float, ...]
    """Threshold shift of each device in MISMATCH_DEVICES, volts."""
    dbeta: tuple[float, ...]
    """Relative current-factor shift of each device (mobility factor is 1 + dbeta)."""


def _header(circuit: Circuit, tech: Technology, sizing: SenseAmpSizing, bitline: BitlineConfig) -> None:
    for path in tech.model_files:
        circuit.include(path)
    circuit.subcircuit(SenseAmp(tech, sizing))
    circuit.subcircuit(Column(bitline))


def _column_r(bitline: BitlineConfig, x: float, what: str) -> str:
    spice_number(what, x, nonnegative=True)
    if x > bitline.rows:
        raise NetlistValueError(f"{what}={x!r} exceeds rows={bitline.rows}")
    return spice_number(f"r({what})", 1.0 / bitline.column_conductance_s(x), positive=True)


def _mismatch_params(inst: SAInstance) -> dict[str, str]:
    if len(inst.dvth_v) != len(MISMATCH_DEVICES) or len(inst.dbeta) != len(MISMATCH_DEVICES):
        raise NetlistValueError(f"mismatch draw needs {len(MISMATCH_DEVICES)} values per device list")
    params: dict[str, str] = {}
    for dev, dv, db in zip(MISMATCH_DEVICES, inst.dvth_v, inst.dbeta, strict=True):
        params[f"dvt_{dev}"] = spice_number(f"dvt_{dev}", dv)
        params[f"mu_{dev}"] = spice_number(f"mu_{dev}", 1.0 + db, positive=True)
    return params


def comparator_deck(
    tech: Technology,
    sizing: SenseAmpSizing,
    bitline: BitlineConfig,
    timing: SenseTiming,
    instances: Sequence[SAInstance],
    *,
    options: str = "",
) -> str:
    """Transient deck deciding every instance; instance ``i`` drives nodes ``out_i``/``outb_i``."""
    if not instances:
        raise ValueError("comparator_deck needs at least one instance")
    circuit = Circuit("cimcosim sense-amplifier bench")
    _header(circuit, tech, sizing, bitline)
    vdd = spice_number("vdd_v", tech.vdd_v, positive=True)
    t0 = spice_number("t_precharge_s", timing.t_precharge_s, positive=True)
    te = spice_number("t_edge_s", timing.t_edge_s, positive=True)
    pulse = f"PULSE(0 {vdd} {t0} {te} {te} 1 2)"
    circuit.V("dd", "vdd", circuit.gnd, raw_spice=vdd)
    circuit.V("pre", "pre", circuit.gnd, raw_spice=pulse)
    circuit.V("saen", "saen", circuit.gnd, raw_spice=pulse)
    for i, inst in enumerate(instances):
        circuit.X(f"sa{i}", SenseAmp.NAME, "vdd", "pre", "saen", f"bl_{i}", f"ref_{i}", f"out_{i}", f"outb_{i}",
                  **_mismatch_params(inst))
        circuit.X(f"bl{i}", Column.NAME, f"bl_{i}", rcol=_column_r(bitline, inst.x_bl, "x_bl"))
        circuit.X(f"rf{i}", Column.NAME, f"ref_{i}", rcol=_column_r(bitline, inst.x_ref, "x_ref"))
    stop = spice_number("t_stop", timing.t_stop_s, positive=True)
    step = spice_number("t_step_s", timing.t_step_s, positive=True)
    tmax = spice_number("t_max_s", timing.t_max_s, positive=True)
    saves = " ".join(f"out_{i} outb_{i}" for i in range(len(instances)))
    lines = [str(circuit).rstrip(), ".options noacct num_threads=1 " + options, f".save {saves}",
             f".tran {step} {stop} 0 {tmax} uic", ".end", ""]
    return "\n".join(lines)


def current_probe_deck(
    tech: Technology, sizing: SenseAmpSizing, bitline: BitlineConfig, xs: Sequence[float]
) -> str:
    """Operating-point deck measuring the column current at the start of sensing, for each x in ``xs``.

    Outputs are held at VDD (precharged), PRE and SAEN high, nominal devices; ``vm_i#branch`` is the
    current the SA's bitline branch draws from a column with ``xs[i]`` cells on.
    """
    circuit = Circuit("cimcosim column-current probe")
    _header(circuit, tech, sizing, bitline)
    vdd = spice_number("vdd_v", tech.vdd_v, positive=True)
    circuit.V("dd", "vdd", circuit.gnd, raw_spice=vdd)
    for i, x in enumerate(xs):
        circuit.X(f"sa{i}", SenseAmp.NAME, "vdd", "vdd", "vdd", f"bl_{i}", f"ref_{i}", "vdd", "vdd")
        circuit.V(f"m{i}", f"bl_{i}", f"blc_{i}", raw_spice="0")
        circuit.X(f"bl{i}", Column.NAME, f"blc_{i}", rcol=_column_r(bitline, float(x), "x"))
        circuit.X(f"rf{i}", Column.NAME, f"ref_{i}", rcol=_column_r(bitline, float(x), "x"))
    return "\n".join([str(circuit).rstrip(), ".options noacct num_threads=1", ".op", ".end", ""])


def nominal_instance(x_bl: float, x_ref: float) -> SAInstance:
    """An instance with mismatch off."""
    zeros = tuple(0.0 for _ in MISMATCH_DEVICES)
    return SAInstance(x_bl, x_ref, zeros, zeros)


def instances_from_draws(
    x_bl: np.ndarray, x_ref: np.ndarray, dvth_v: np.ndarray, dbeta: np.ndarray
) -> list[SAInstance]:
    """Bundle per-instance arrays (``dvth_v``/``dbeta`` shaped [n, len(MISMATCH_DEVICES)]) into instances."""
    return [
        SAInstance(float(xb), float(xr), tuple(map(float, dv)), tuple(map(float, db)))
        for xb, xr, dv, db in zip(x_bl, x_ref, dvth_v, dbeta, strict=True)
    ]
