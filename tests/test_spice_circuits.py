"""Circuits: golden netlist text, and real ngspice runs of the SA, the trip-point search and the ADCs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from circuits._spice_text import NetlistValueError
from circuits.adc import reference_x
from circuits.bench import SenseTiming, comparator_deck, instances_from_draws, nominal_instance
from circuits.bitline import BitlineConfig
from circuits.ngspice import DECISION_HIGH, DECISION_LOW, decide
from circuits.sense_amp import SenseAmpSizing
from pipeline.montecarlo import SpiceContext, decisions_from_trip, trip_search
from pipeline.seeds import KIND_COMPARATOR, draw_mismatch

GOLDEN = Path(__file__).parent / "golden"


def _deck_text(tech) -> str:
    insts = [nominal_instance(3.0, 2.5), instances_from_draws(
        np.array([7.25]), np.array([7.5]), np.array([[0.01, -0.02, 0.003, 0.0, -0.004, 0.005]]),
        np.array([[0.01, 0.0, -0.01, 0.0, 0.02, -0.02]]))[0]]
    text = comparator_deck(tech, SenseAmpSizing(9.0), BitlineConfig(), SenseTiming(), insts)
    for path in tech.model_files:
        text = text.replace(path, "<" + Path(path).name + ">")
    return text


def test_comparator_deck_matches_golden(tech):
    assert _deck_text(tech) == (GOLDEN / "comparator_deck_wl9.sp").read_text()


def test_deck_rejects_non_finite_and_out_of_range(tech):
    bad = instances_from_draws(np.array([1.0]), np.array([1.5]), np.full((1, 6), np.nan), np.zeros((1, 6)))
    with pytest.raises(NetlistValueError, match="not finite"):
        comparator_deck(tech, SenseAmpSizing(4.0), BitlineConfig(), SenseTiming(), bad)
    with pytest.raises(NetlistValueError, match="exceeds rows"):
        comparator_deck(tech, SenseAmpSizing(4.0), BitlineConfig(), SenseTiming(), [nominal_instance(40, 1.5)])
    with pytest.raises(ValueError):
        SenseAmpSizing(float("inf"))


@pytest.mark.spice
def test_nominal_sa_decides_every_level_correctly(tech):
    bl = BitlineConfig()
    insts = [nominal_instance(float(k), j + 0.5) for j in range(bl.rows) for k in (j, j + 1)]
    d = decide(tech, SenseAmpSizing(4.0), bl, SenseTiming(), insts)
    assert list(d) == [DECISION_LOW, DECISION_HIGH] * bl.rows


@pytest.mark.spice
def test_trip_point_method_equals_direct_per_level_simulation(tech):
    """Same draws: bisection-derived decisions == one transient per level, at every level."""
    ctx = SpiceContext(tech, BitlineConfig(), SenseTiming(), 1.0, 8.0, 11, True, 2)
    sizing = SenseAmpSizing(4.0)
    levels = np.arange(ctx.bitline.n_levels)
    for ref in (3, 26):
        dvth, dbeta = draw_mismatch(tech, sizing, ctx.seed, KIND_COMPARATOR, ref, np.arange(5))
        trip, status, runs = trip_search(ctx, sizing, ref, dvth, dbeta)
        assert set(status) == {"ok"}
        assert runs.max() <= int(np.ceil(np.log2(ctx.bitline.rows * 4 + 2)))
        masks = decisions_from_trip(trip, ctx.bitline.rows, ctx.resolution_bits)
        n = len(dvth)
        insts = instances_from_draws(np.tile(levels, n).astype(float), np.full(n * len(levels), reference_x(ref)),
                                     np.repeat(dvth, len(levels), axis=0), np.repeat(dbeta, len(levels), axis=0))
        direct = decide(tech, sizing, ctx.bitline, ctx.timing, insts).reshape(n, len(levels))
        from_trip = (masks[:, None] >> levels[None, :]) & 1
        assert np.array_equal(direct, from_trip), (ref, direct, from_trip)


@pytest.mark.spice
def test_pass_rate_rises_with_wl(tech):
    """Common random numbers, refs at low/mid/high partial sum: larger W/L decides correctly more often."""
    ctx = SpiceContext(tech, BitlineConfig(), SenseTiming(), 1.0, 8.0, 3, True, 2)
    rates = {}
    for wl in (3.0, 12.0):
        sizing = SenseAmpSizing(wl)
        correct = []
        for ref in (2, 15, 28):
            dvth, dbeta = draw_mismatch(tech, sizing, ctx.seed, KIND_COMPARATOR, ref, np.arange(24))
            trip, _, _ = trip_search(ctx, sizing, ref, dvth, dbeta)
            masks = decisions_from_trip(trip, ctx.bitline.rows, ctx.resolution_bits)
            correct += list(((masks >> ref) & 1) == 0)  # level ref is below reference ref
            correct += list(((masks >> (ref + 1)) & 1) == 1)  # level ref+1 is above it
        rates[wl] = float(np.mean(correct))
    assert rates[12.0] > rates[3.0], rates
