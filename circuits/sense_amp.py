"""Latch-based current-mode sense amplifier (seed 001, Fig. 2a) as a PySpice subcircuit.

Topology::

    VDD ──P3(PRE)──┬── OUT ──┬──P4(PRE)── VDD        P1/P2: cross-coupled PMOS (sources at VDD)
                   P1(g=OUTB)  P2(g=OUT)               N1/N2: cross-coupled NMOS
                   N1(g=OUTB)  N2(g=OUT)               N3/N4: input devices, gate SAEN, carrying the
                   N3(g=SAEN)  N4(g=SAEN)                     bitline and the reference current
                   BL          REF                     P3/P4: precharge PMOS, gate PRE (active low)

Phase 1 (precharge): PRE low, SAEN low -> OUT = OUTB = VDD, no current into the columns.
Phase 2 (sense): PRE and SAEN high -> both sides discharge into their columns; the side drawing the
larger current falls first and the latch resolves. OUT low means I(BL) > I(REF) (decision 1).

The six core devices (P1, P2, N1-N4) take per-instance Pelgrom mismatch through subcircuit parameters
``dvt_<dev>`` (added to the threshold with BSIM4's ``delvto``) and ``mu_<dev>`` (mobility factor ``mulu0``,
i.e. the current factor). Precharge devices are off while the latch decides and carry no mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySpice.Spice.Netlist import SubCircuit

from circuits._spice_text import spice_number
from circuits.technology import Technology

#: The mismatched devices, in the order used by every mismatch array (columns of ``dvth``/``dbeta``).
MISMATCH_DEVICES: tuple[str, ...] = ("p1", "p2", "n1", "n2", "n3", "n4")
#: Device polarity of each entry of :data:`MISMATCH_DEVICES`.
DEVICE_IS_PMOS: tuple[bool, ...] = (True, True, False, False, False, False)


@dataclass(frozen=True)
class SenseAmpSizing:
    """Transistor sizing of the SA core."""

    wl_ratio: float
    """W/L of every core device (P1, P2, N1-N4), with L = ``l_factor`` * Lmin (the paper sweeps W/L at Lmin)."""
    l_factor: float = 1.0
    """Channel length in multiples of the technology's Lmin."""
    precharge_wl_ratio: float = 8.0
    """W/L of the precharge PMOS P3/P4 (not swept; sized to precharge within the precharge phase)."""

    def __post_init__(self) -> None:
        for name in ("wl_ratio", "l_factor", "precharge_wl_ratio"):
            spice_number(name, getattr(self, name), positive=True)

    def length_m(self, tech: Technology) -> float:
        """Channel length of the core devices, metres."""
        return self.l_factor * tech.lmin_m

    def width_m(self, tech: Technology) -> float:
        """Channel width of the core devices, metres."""
        return self.wl_ratio * self.length_m(tech)


class SenseAmp(SubCircuit):
    """The SA subcircuit; instance parameters ``dvt_<dev>`` (V) and ``mu_<dev>`` (factor) carry mismatch."""

    NAME = "cim_sa"
    NODES = ("vdd", "pre", "saen", "bl", "ref", "out", "outb")

    def __init__(self, tech: Technology, sizing: SenseAmpSizing) -> None:
        params: dict[str, str] = {}
        for dev in MISMATCH_DEVICES:
            params[f"dvt_{dev}"] = "0"
            params[f"mu_{dev}"] = "1"
        super().__init__(self.NAME, *self.NODES, **params)
        w = spice_number("w", sizing.width_m(tech), positive=True)
        l_m = spice_number("l", sizing.length_m(tech), positive=True)
        wp = spice_number("w_pre", sizing.precharge_wl_ratio * tech.lmin_m, positive=True)
        lp = spice_number("l_pre", tech.lmin_m, positive=True)
        pm, nm = tech.pmos_model, tech.nmos_model

        def mm(dev: str) -> str:
            return f"delvto={{dvt_{dev}}} mulu0={{mu_{dev}}}"

        # name, drain, gate, source, bulk
        self.M("p1", "out", "outb", "vdd", "vdd", model=pm, raw_spice=f"W={w} L={l_m} {mm('p1')}")
        self.M("p2", "outb", "out", "vdd", "vdd", model=pm, raw_spice=f"W={w} L={l_m} {mm('p2')}")
        self.M("n1", "out", "outb", "x1", self.gnd, model=nm, raw_spice=f"W={w} L={l_m} {mm('n1')}")
        self.M("n2", "outb", "out", "x2", self.gnd, model=nm, raw_spice=f"W={w} L={l_m} {mm('n2')}")
        self.M("n3", "x1", "saen", "bl", self.gnd, model=nm, raw_spice=f"W={w} L={l_m} {mm('n3')}")
        self.M("n4", "x2", "saen", "ref", self.gnd, model=nm, raw_spice=f"W={w} L={l_m} {mm('n4')}")
        self.M("p3", "out", "pre", "vdd", "vdd", model=pm, raw_spice=f"W={wp} L={lp}")
        self.M("p4", "outb", "pre", "vdd", "vdd", model=pm, raw_spice=f"W={wp} L={lp}")
