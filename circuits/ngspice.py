"""In-process ngspice (libngspice through PySpice): load a deck, run it, read final node values.

One shared ngspice per process, one OpenMP thread (ngspice's own threads slow small decks down; scale
out with processes instead). Plots and circuits are removed after every run, so long Monte Carlo loops
do not leak memory. Failures are retried with fallback options and reported per instance, never
silently dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from circuits.bench import SAInstance, SenseTiming, comparator_deck, current_probe_deck
from circuits.bitline import BitlineConfig
from circuits.sense_amp import SenseAmpSizing
from circuits.technology import Technology

logger = logging.getLogger(__name__)

#: Decision codes returned per instance.
DECISION_HIGH, DECISION_LOW, UNRESOLVED, FAILED = 1, 0, -1, -2
#: Fallback ``.options`` tried when a deck fails to converge with the defaults.
FALLBACK_OPTIONS = ("method=gear reltol=1e-4 abstol=1e-13 itl4=200",)
#: A latch counts as resolved when |V(out) - V(outb)| exceeds this fraction of VDD at the read time.
RESOLVED_FRACTION = 0.5

_NGSPICE: Any = None


class NgspiceUnavailable(RuntimeError):
    """libngspice cannot be loaded."""


class SimulationError(RuntimeError):
    """ngspice rejected a deck or failed to simulate it."""


def _shared() -> Any:
    global _NGSPICE
    if _NGSPICE is None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        logging.getLogger("PySpice").setLevel(logging.ERROR)
        try:
            from PySpice.Spice.NgSpice.Shared import NgSpiceShared

            _NGSPICE = NgSpiceShared.new_instance()
        except (OSError, ImportError) as exc:
            raise NgspiceUnavailable(
                f"ngspice shared library not found ({exc}); run ./ngspice_setup.sh (installs libngspice0-dev)"
            ) from exc
    return _NGSPICE


def require_ngspice() -> None:
    """Raise :class:`NgspiceUnavailable` with the fix when libngspice cannot be loaded."""
    _shared()


def ngspice_version() -> str:
    """Version line reported by the loaded libngspice."""
    ng = _shared()
    return f"ngspice {getattr(ng, 'ngspice_version', 'unknown')}"


def _run_deck(deck: str) -> dict[str, np.ndarray]:
    ng = _shared()
    try:
        ng.load_circuit(deck)
        ng.run()
        plot = ng.plot(None, ng.last_plot)
        return {name: np.asarray(vec._data, dtype=float) for name, vec in plot.items()}  # PySpice copies
    except Exception as exc:  # PySpice raises bare NgSpice*Error types from stdout scraping
        raise SimulationError(f"ngspice failed: {type(exc).__name__}: {exc}") from exc
    finally:
        try:
            ng.destroy()
            ng.remove_circuit()
        except Exception:  # noqa: BLE001 - cleanup must not mask the real error
            logger.debug("ngspice cleanup failed", exc_info=True)


def _decide_once(
    tech: Technology, sizing: SenseAmpSizing, bitline: BitlineConfig, timing: SenseTiming,
    instances: Sequence[SAInstance], options: str,
) -> np.ndarray:
    vectors = _run_deck(comparator_deck(tech, sizing, bitline, timing, instances, options=options))
    out = np.array([vectors[f"out_{i}"][-1] for i in range(len(instances))])
    outb = np.array([vectors[f"outb_{i}"][-1] for i in range(len(instances))])
    diff = outb - out  # > 0: OUT fell, the bitline drew more current
    decision = np.where(diff > 0, DECISION_HIGH, DECISION_LOW).astype(np.int8)
    decision[np.abs(diff) < RESOLVED_FRACTION * tech.vdd_v] = UNRESOLVED
    return decision


def _decide_with_fallback(
    tech: Technology, sizing: SenseAmpSizing, bitline: BitlineConfig, timing: SenseTiming,
    instances: Sequence[SAInstance],
) -> np.ndarray:
    attempts = ("",) + FALLBACK_OPTIONS
    for options in attempts:
        try:
            return _decide_once(tech, sizing, bitline, timing, instances, options)
        except SimulationError as exc:
            logger.warning("deck of %d SA instances failed (%s); retrying with options %r",
                           len(instances), exc, options)
    if len(instances) == 1:
        return np.array([FAILED], dtype=np.int8)
    # Isolate the failing instance(s): decide one by one.
    return np.concatenate([_decide_with_fallback(tech, sizing, bitline, timing, [inst]) for inst in instances])


def decide(
    tech: Technology,
    sizing: SenseAmpSizing,
    bitline: BitlineConfig,
    timing: SenseTiming,
    instances: Sequence[SAInstance],
) -> np.ndarray:
    """Decide every instance in one transient; returns int8 codes per instance.

    1: I(bitline) > I(reference); 0: the opposite; -1 (UNRESOLVED): the latch had not resolved even with a
    3x longer sense phase; -2 (FAILED): ngspice failed on this instance with every fallback.
    """
    decision = _decide_with_fallback(tech, sizing, bitline, timing, instances)
    unresolved = np.flatnonzero(decision == UNRESOLVED)
    if unresolved.size:
        again = [instances[int(i)] for i in unresolved]
        retry = _decide_with_fallback(tech, sizing, bitline, timing.scaled(3.0), again)
        decision[unresolved] = retry
    return decision


def column_currents_a(
    tech: Technology, sizing: SenseAmpSizing, bitline: BitlineConfig, xs: Sequence[float]
) -> np.ndarray:
    """Current (A) drawn from a column with x cells on at the start of sensing, for each x in ``xs``."""
    vectors = _run_deck(current_probe_deck(tech, sizing, bitline, xs))
    return np.array([abs(float(vectors[f"vm{i}#branch"][0])) for i in range(len(xs))])


def _probe(tech: Technology) -> float:
    return float(column_currents_a(tech, SenseAmpSizing(wl_ratio=4.0), BitlineConfig(), [1.0])[0])


def check_model_cards(tech: Technology, timeout_s: float = 120.0) -> None:
    """Run one nominal SA operating point in a throwaway process; one-line error if ngspice rejects it.

    A separate process because an ngspice that has parsed a broken card can crash later in the same
    process (measured: a segfault in the next deck); the Monte Carlo processes never see a bad card.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    hint = (f"ngspice rejected technology {tech.name!r} (model files {', '.join(tech.model_files)})")
    fix = "check the model cards and the device names nmos_model/pmos_model"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            current = pool.submit(_probe, tech).result(timeout=timeout_s)
        except SimulationError as exc:
            raise SimulationError(f"{hint}: {exc}; {fix}") from exc
        except BrokenProcessPool as exc:
            raise SimulationError(f"{hint}: ngspice crashed on it; {fix}") from exc
    if not np.isfinite(current) or current <= 0:
        raise SimulationError(f"{hint}: the nominal SA draws no current ({current!r} A); {fix}")
