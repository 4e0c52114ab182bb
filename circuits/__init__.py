"""SPICE side of cimcosim: technology, PySpice subcircuits, benches and the ngspice runner.

PySpice objects stay inside this package; what leaves it are plain SI floats and numpy arrays.
"""

from circuits.adc import flash_codes, sar_codes_from_decisions
from circuits.bench import SAInstance, SenseTiming, comparator_deck, current_probe_deck, nominal_instance
from circuits.bitline import BitlineConfig, Column
from circuits.ngspice import (
    DECISION_HIGH,
    DECISION_LOW,
    FAILED,
    UNRESOLVED,
    NgspiceUnavailable,
    SimulationError,
    check_model_cards,
    column_currents_a,
    decide,
    require_ngspice,
)
from circuits.sense_amp import DEVICE_IS_PMOS, MISMATCH_DEVICES, SenseAmp, SenseAmpSizing
from circuits.technology import Technology, TechnologyError, builtin_technologies, load_technology

__all__ = [
    "DECISION_HIGH", "DECISION_LOW", "DEVICE_IS_PMOS", "FAILED", "MISMATCH_DEVICES", "UNRESOLVED",
    "BitlineConfig", "Column", "NgspiceUnavailable", "SAInstance", "SenseAmp", "SenseAmpSizing", "SenseTiming",
    "SimulationError", "Technology", "TechnologyError", "builtin_technologies", "check_model_cards",
    "column_currents_a", "comparator_deck", "current_probe_deck", "decide", "flash_codes", "load_technology",
    "nominal_instance", "require_ngspice", "sar_codes_from_decisions",
]
