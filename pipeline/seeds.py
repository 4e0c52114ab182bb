"""Derived random streams: one root seed, a SeedSequence per (stage, kind, reference, sample).

Keys never include the number of samples, so asking for more samples never changes earlier draws.
They do not include W/L either: the same standard-normal draw is scaled by each W/L's Pelgrom sigma
(common random numbers), which makes the W/L comparison sharper at a given sample count.
"""

from __future__ import annotations

import numpy as np

from circuits.sense_amp import DEVICE_IS_PMOS, MISMATCH_DEVICES, SenseAmpSizing
from circuits.technology import Technology

STAGE_CHARACTERIZE = 1
KIND_COMPARATOR = 0
KIND_SAR = 1
#: Held-out draws for validation only (never used to fit or draw chips).
KIND_FLASH_VALIDATION = 2
KIND_SAR_VALIDATION = 3


def sample_rng(root_seed: int, stage: int, kind: int, ref_index: int, sample: int) -> np.random.Generator:
    """Generator of one Monte Carlo sample; ``ref_index`` is -1 where no reference applies."""
    key = (stage, kind, ref_index + 1, sample)
    return np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=key))


def pelgrom_sigmas(tech: Technology, sizing: SenseAmpSizing) -> tuple[np.ndarray, np.ndarray]:
    """Per-device sigma of dVth (V) and of dbeta/beta, in MISMATCH_DEVICES order."""
    area = sizing.width_m(tech) * sizing.length_m(tech)
    root = np.sqrt(area)
    avt = np.array([tech.avt_pmos_v_m if p else tech.avt_nmos_v_m for p in DEVICE_IS_PMOS])
    abeta = np.array([tech.abeta_pmos_m if p else tech.abeta_nmos_m for p in DEVICE_IS_PMOS])
    return avt / root, abeta / root


def draw_mismatch(
    tech: Technology, sizing: SenseAmpSizing, root_seed: int, kind: int, ref_index: int, samples: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold shifts (V) and current-factor shifts for ``samples``; arrays [n, len(MISMATCH_DEVICES)]."""
    n_dev = len(MISMATCH_DEVICES)
    z = np.stack([
        sample_rng(root_seed, STAGE_CHARACTERIZE, kind, ref_index, int(s)).standard_normal(2 * n_dev)
        for s in samples
    ]) if len(samples) else np.zeros((0, 2 * n_dev))
    s_vt, s_beta = pelgrom_sigmas(tech, sizing)
    return z[:, :n_dev] * s_vt, z[:, n_dev:] * s_beta
