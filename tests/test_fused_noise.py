"""Cut-table noisy readout (nn/fused_noise.py): every reading is the exact inverse-CDF draw of its uniform."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nn import fused, fused_noise

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba not installed (the engine falls back to torch)")


def _uniforms(seed: np.uint64, key0: np.uint64, kstep: int, cols: int) -> np.ndarray:
    """The u in [0, 1) each reading c (key ``key0 + c * kstep``) is drawn with: the top 15 bits of lane c mod 4
    of its group's word (keyed by column 4 * (c // 4)) plus the fraction of its own second word."""
    from nn._numba_prims import _bits, _uniform

    out = []
    for c in range(cols):
        word = int(_bits(seed, np.uint64(int(key0) + 4 * (c // 4) * kstep), 0))
        u15 = (word >> (16 * (c % 4) + 1)) & 0x7FFF
        out.append((u15 + _uniform(seed, np.uint64(int(key0) + c * kstep), 1)) / 32768)
    return np.array(out)


def _padded(thr: np.ndarray) -> np.ndarray:
    inf = np.full(thr.shape[:-1] + (1,), math.inf)
    return np.ascontiguousarray(np.concatenate([-inf, np.sort(thr, -1), inf], -1))


@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.5])
def test_gaussian_cut_codes_are_the_exact_inverse_cdf_draw_for_draw(sigma):
    """Per reading, the code equals #{k: u >= Phi((T_k - s) / sigma)} for that reading's own u, on shifted
    thresholds, partial sums beyond the table's clamped range included; sigma 1.5 (1.5 threshold spacings)
    sends many readings down the slow path, sigma 0.3 almost none."""
    rng = np.random.default_rng(0)
    tiles, cols, n_thr = 2, 6, 31
    thr = _padded(np.arange(n_thr)[None, None, :] + 0.5 + rng.normal(0, 0.6, (tiles, cols, n_thr)))
    lo, hi = 0, 128
    s_lo, n_s = fused_noise.gaussian_range(thr, sigma, lo, hi)
    assert s_lo + n_s - 1 < hi  # the clamp is exercised
    cuts = fused_noise.gaussian_cuts(thr, s_lo, n_s, sigma)
    seed, planes = np.uint64(987654321), 3
    code, e, slow = np.empty(cols, np.int64), np.empty((3, cols), np.uint64), np.empty(cols, np.bool_)
    mismatches, n_slow, total = 0, 0, 0
    for trial in range(400):
        t = trial % tiles
        s = rng.integers(lo, hi + 1, cols) if trial % 4 == 0 else rng.integers(0, 34, cols)
        key0 = np.uint64(trial * cols * planes)
        fused_noise.cut_codes(s, t, cuts, s_lo, lo, seed, key0, np.uint64(planes), thr, sigma, np.zeros((1, 1)),
                              e, code, slow)
        u = _uniforms(seed, key0, planes, cols)
        p = 0.5 * np.vectorize(math.erfc)(-(thr[t, :, 1:-1] - s[:, None]) / sigma / math.sqrt(2))
        exact = (u[:, None] >= p).sum(-1)
        mismatches += int((exact != code).sum())
        n_slow += int(slow.sum())
        total += cols
    assert mismatches == 0
    assert (n_slow > total * 0.02) if sigma == 1.5 else (n_slow < total * 0.01)


def test_table_cut_codes_are_the_exact_inverse_cdf_draw_for_draw():
    """A measured noise table (P(code | psum) rows, some codes of zero probability) reads as the inverse CDF of
    each reading's u, including rows whose mass lies outside the three-code window."""
    rng = np.random.default_rng(1)
    n_codes, rows = 8, 20
    table = rng.dirichlet(np.full(n_codes, 0.4), size=rows)
    table[3] = 0
    table[3, [0, 7]] = 0.5  # mass at both ends, far outside any window
    cdf = np.cumsum(table, -1)[:, :-1]
    median = (cdf < 0.5).sum(-1)
    cdf_p = np.ascontiguousarray(np.concatenate([-np.ones((rows, 1)), cdf, 2 * np.ones((rows, 1))], -1))
    cuts = fused_noise.table_cuts(cdf_p, median)
    lo, seed, cols = -5, np.uint64(3), 16
    code, e, slow = np.empty(cols, np.int64), np.empty((3, cols), np.uint64), np.empty(cols, np.bool_)
    for trial in range(300):
        s = rng.integers(lo, lo + rows, cols)
        key0 = np.uint64(trial * cols)
        fused_noise.cut_codes(s, 0, cuts, lo, lo, seed, key0, np.uint64(1), np.zeros((1, 1, 1)), 0.0, cdf_p, e, code,
                              slow)
        u = _uniforms(seed, key0, 1, cols)
        exact = (u[:, None] >= cdf[s - lo]).sum(-1)
        assert np.array_equal(exact, code)


def test_the_slow_path_reaches_the_exact_code_from_any_start():
    """_slow_code walks to the code a with P(code < a) <= u < P(code < a + 1) whatever code it starts from
    (the kernels start it at the cuts' count, a step from the answer; starts outside the codes are clamped):
    Gaussian thresholds with offsets and a table with zero-probability codes."""
    rng = np.random.default_rng(2)
    thr = _padded(np.arange(15)[None, None, :] + 0.5 + rng.normal(0, 0.6, (1, 1, 15)))
    table = rng.dirichlet(np.full(8, 0.4), size=4)
    table[2] = 0
    table[2, [0, 7]] = 0.5
    cdf = np.ascontiguousarray(np.concatenate([-np.ones((4, 1)), np.cumsum(table, -1)[:, :-1], 2 * np.ones((4, 1))],
                                              -1))
    seed = np.uint64(11)
    for trial in range(200):
        key = np.uint64(trial)
        u15 = np.uint16(rng.integers(0, 2**15))
        u = (int(u15) + fused_noise._uniform(seed, key, 1)) / 32768
        s = int(rng.integers(-2, 18))
        p = 0.5 * np.vectorize(math.erfc)(-(thr[0, 0, 1:-1] - s) / 0.7 / math.sqrt(2))
        row = trial % 4
        for sigma, want, top in ((0.7, int((u >= p).sum()), 15), (0.0, int((u >= cdf[row, 1:-1]).sum()), 7)):
            got = {int(fused_noise._slow_code(u15, s, 0, 0, row, np.int64(a), seed, key, thr, sigma, cdf))
                   for a in range(-3, top + 4)}
            assert got == {want}
