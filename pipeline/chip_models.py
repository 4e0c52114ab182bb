"""How a chip's ADC offsets are drawn from what SPICE measured: three selectable models.

Every model returns offsets in amperes, shaped [n_macros, adcs_per_macro, n_thresholds], for one chip of
one design, from a generator seeded by SeedSequence(seed, spawn_key=(stage, ADC kind, chip[, model])):

- ``paper`` (seed 001's model, the baseline): Flash draws each comparator independently, mu_j + sigma_j z_j;
  SAR draws one standard normal z per ADC and shifts every reference by mu_j + sigma_j z, i.e. it assumes
  one SA's offsets at different references are perfectly correlated. mu_j and sigma_j come from the fit.
- ``empirical``: SAR draws, per ADC, one whole measured offset vector (one SAR SA sample bisected at
  every reference, ``characterize/sar_offsets.parquet``); Flash draws each comparator from the measured
  comparator samples at its reference. No distributional assumption, but chips can only recombine the
  measured samples (with S vectors a SAR design has S distinct ADCs).
- ``copula``: SAR draws a multivariate normal with the measured mean vector and covariance of those
  vectors, so chips are not limited to the measured samples. Assumptions: the offsets are jointly Gaussian
  (each marginal and every pairwise dependence; the measured marginals have |skew| up to ~0.6 at W/L 4 and
  ~0.3 at W/L 10, which this smooths away), the covariance is estimated from S vectors (noisy for S of a
  few tens), and a censored trip point (outside the input range; up to half the samples at the top
  references of W/L 4) enters at the edge of the range, where it converts the same. Flash comparators are
  independent by construction, so its copula is ``paper`` (the fitted censored-normal marginals, which
  handle the censoring exactly).
- ``gaussian-copula``: SAR draws a Gaussian copula of the measured vectors: standard normals with the
  correlation of the vectors' normal scores (rank -> Phi^-1), each mapped through its reference's measured
  quantile function (linear between the order statistics at plotting positions (i - 1/2) / S). The
  marginals are the measured ones (their skew, and the mass of censored trip points at the range's edge,
  kept); only the dependence is assumed Gaussian. Chips take values between the measured order statistics
  (not beyond the measured extremes). Flash as ``copula``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

CHIP_MODELS: tuple[str, ...] = ("paper", "empirical", "copula", "gaussian-copula")


@dataclass(frozen=True)
class MeasuredOffsets:
    """What one design's chips are drawn from (amperes, per threshold j)."""

    iref_a: np.ndarray
    """Reference current of each threshold, [n_thr]."""
    mu_a: np.ndarray
    """Fitted mean offset per threshold (the paper model), [n_thr]."""
    sigma_a: np.ndarray
    """Fitted offset sigma per threshold (the paper model), [n_thr]."""
    comparators_a: tuple[np.ndarray, ...]
    """Measured Flash comparator offsets at each reference j (one array per j)."""
    vectors_a: np.ndarray | None
    """Measured SAR SA offset vectors [n_samples, n_thr], or None where SAR was not characterized."""

    @property
    def n_thr(self) -> int:
        return len(self.iref_a)

    @property
    def has_vectors(self) -> bool:
        """Enough measured SAR offset vectors for the empirical and copula SAR models."""
        return self.vectors_a is not None and len(self.vectors_a) >= 2


def measured_from_tables(
    iref_a: np.ndarray, mu_a: np.ndarray, sigma_a: np.ndarray, comparators: pd.DataFrame, vectors: pd.DataFrame,
) -> MeasuredOffsets:
    """Bundle one design's fit and measured samples (``offset_vectors`` frames, one W/L, failures kept out)."""
    n_thr = len(iref_a)
    ok = comparators[comparators.status != "failed"]
    per_ref = tuple(ok.offset_a[ok.ref_index == j].to_numpy(np.float64) for j in range(n_thr))
    vec = None
    good = vectors[vectors.status != "failed"]
    if len(good):
        wide = good.pivot(index="sample", columns="ref_index", values="offset_a").reindex(columns=range(n_thr))
        vec = wide.dropna().to_numpy(np.float64)  # a sample with any failed reference is dropped whole
    return MeasuredOffsets(np.asarray(iref_a, float), np.asarray(mu_a, float), np.asarray(sigma_a, float),
                           per_ref, vec)


def _need_vectors(m: MeasuredOffsets, model: str) -> np.ndarray:
    if not m.has_vectors or m.vectors_a is None:
        raise ValueError(f"chip model {model!r} needs the measured SAR offset vectors; re-run "
                         "`cimcosim characterize` with --adc sar (this version measures them), or use --model paper")
    return m.vectors_a


def draw_offsets_a(model: str, kind: str, m: MeasuredOffsets, rng: np.random.Generator,
                   shape: tuple[int, int]) -> np.ndarray:
    """Offsets (A) of one chip, [*shape, n_thr], under ``model`` for ADC ``kind``."""
    n_thr = m.n_thr
    if model == "paper":
        if kind == "flash":
            z = rng.standard_normal((*shape, n_thr))
        else:
            z = np.repeat(rng.standard_normal(shape)[..., None], n_thr, axis=-1)
        return m.mu_a + m.sigma_a * z
    if model == "empirical":
        if kind == "sar":
            vec = _need_vectors(m, model)
            return vec[rng.integers(0, len(vec), shape)]
        out = np.empty((*shape, n_thr))
        for j, samples in enumerate(m.comparators_a):
            out[..., j] = samples[rng.integers(0, len(samples), shape)]
        return out
    if model == "copula":
        if kind == "flash":
            return draw_offsets_a("paper", kind, m, rng, shape)
        mean, root = mvn_root(_need_vectors(m, model))
        return mean + rng.standard_normal((*shape, n_thr)) @ root.T
    if model == "gaussian-copula":
        if kind == "flash":
            return draw_offsets_a("paper", kind, m, rng, shape)
        vec = _need_vectors(m, model)
        _, root = mvn_root(normal_scores(vec))
        u = special.ndtr(rng.standard_normal((*shape, n_thr)) @ root.T)
        ordered = np.sort(vec, axis=0)
        positions = (np.arange(len(vec)) + 0.5) / len(vec)
        return np.stack([np.interp(u[..., j], positions, ordered[:, j]) for j in range(n_thr)], axis=-1)
    raise ValueError(f"unknown chip model {model!r}; choose from {list(CHIP_MODELS)}")


def normal_scores(vectors: np.ndarray) -> np.ndarray:
    """Phi^-1 of each column's mid-ranks (ties share their mean rank), scaled so every column has unit
    variance: the Gaussian copula's view of the samples."""
    ranks = stats.rankdata(vectors, axis=0)
    z = special.ndtri((ranks - 0.5) / len(vectors))
    sd = z.std(axis=0)
    return z / np.where(sd > 0, sd, 1.0)


def mvn_root(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and a square root A of the sample covariance (A A^T = cov), through the symmetric
    eigendecomposition so a rank-deficient covariance (fewer samples than thresholds) still works."""
    mean = vectors.mean(axis=0)
    cov = np.cov(vectors, rowvar=False)
    w, v = np.linalg.eigh(cov)
    return mean, v * np.sqrt(np.clip(w, 0.0, None))
