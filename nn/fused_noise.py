"""Noisy ADC readings of the fused engine by cut tables: a few vector instructions and one table load per reading.

A noisy reading of partial sum s is an inverse-CDF draw: with u uniform in [0, 1) and P_k = P(code < k | s),
code = #{k >= 1 : u >= P_k}. For Gaussian read noise on (shifted, sorted) thresholds T, P_k = Phi((T_{k-1} -
s) / sigma); for a measured noise table, P_k is the table row's cumulative probability. Each (tile, column,
partial sum) gets one 16-byte entry: a window of six codes ``base .. base + 5`` from two below the noise-free
code (the table row's median code), the seven cut points P_base .. P_base+6 rounded down to 15 bits in 16-bit
lanes, and ``base`` in the eighth lane. A reading compares the top 15 bits of its random word with four cuts at
once (SWAR: four lanes of one uint64), twice, and counts the cuts passed.

Random bits: a reading needs 15 of them in the fast path, so each 64-bit word of the counter stream serves four
readings: the columns 4g .. 4g + 3 of one input plane share the word keyed by column 4g's reading key, column c
taking the top 15 bits of the word's 16-bit lane c mod 4 (one hash per four readings: 1.8 -> 0.8 ns a reading
on one 256-column tile). Words of distinct groups have distinct keys, since each is a reading's own key.

Exactness: u = (u15 + r) / 2^15 with u15 the reading's 15 bits and r a further uniform. A cut q_k = floor(P_k
2^15) decides u >= P_k whenever u15 != q_k (u15 > q_k implies u >= P_k, u15 < q_k implies u < P_k). A reading
whose u15 equals a cut, or falls outside the window, takes the slow path: r is drawn from the reading's own
second word (its key, stream 1) and the code is walked with the exact P_k. So every reading is an exact
inverse-CDF draw of the model's distribution, whatever the rounding of the cuts (tested draw for draw); the
window only decides how often the slow path runs.

The kernels read a whole tile's columns per input plane in three loops -- gather the entries, compute codes
(vectorized: the random word, lane compares and popcounts have no branch), then the rare slow readings --
so the table gather runs with many loads in flight, which a single fused loop did not get (measured 3 ns
vs 20 ns per reading on a 21 MB table).
"""

from __future__ import annotations

import math

import numpy as np

from nn._numba_prims import AVAILABLE

_H = np.uint64(0x8000800080008000)  # the top bit of every 16-bit lane
_ONES = np.uint64(0x0001000100010001)
_LOW3 = np.uint64(0x0000FFFFFFFFFFFF)  # the three cut lanes of the second word (lane 3 holds ``base``)
_LANE0, _LANE2 = np.uint64(0x8000), np.uint64(0x800000000000)
_LANES123, _LANES01 = np.uint64(0x8000800080000000), np.uint64(0x80008000)
_Q = 32768.0  # cuts and the fast compare have 15 bits
WINDOW = 6  # codes per entry: base .. base + 5
MAX_ENTRIES = 2**23  # cut tables up to 128 MiB (16 bytes an entry); larger: the walking readout
# Wide rows (nn/_simd.c): per (tile, column, partial sum) WIDE uint16, the cuts P(code < base + j) of a window of
# WIDE_WINDOW codes from WIDE_BELOW below the noise-free code, then ``base``. They decide the readings that the
# 16-byte entries' window leaves to the exact walk: with a chip's offsets thresholds bunch, and three of them
# crossed sent ~0.1 % of readings (a quarter of the readout's time) there.
WIDE_WINDOW, WIDE_BELOW, WIDE = 12, 5, 16

if AVAILABLE:
    from numba import njit, prange

    from nn._numba_prims import _bits, _popcount, _uniform

    @njit(cache=True, inline="always")
    def _phi(x):
        """Standard normal CDF (the same function builds the cuts and walks the slow path)."""
        return 0.5 * math.erfc(-x * 0.7071067811865476)

    @njit(cache=True, inline="always")
    def _quantize(p):
        """A cut: floor(p 2^15), at most 2^15 - 1."""
        return np.uint16(min(max(math.floor(p * _Q), 0.0), _Q - 1.0))

    @njit(cache=True, inline="always")
    def _pack(base, p, out):
        """One entry ``out`` [2]: cuts floor(P_j 2^15) (at most 2^15 - 1) of P_j = P(code < base + j), j = 0..6,
        in the 16-bit lanes 0-3 of word 0 and 0-2 of word 1; ``base`` in lane 3 of word 1."""
        w0, w1 = np.uint64(0), np.uint64(base) << np.uint64(48)
        for j in range(WINDOW + 1):
            q = np.uint64(_quantize(p[j]))
            if j < 4:
                w0 |= q << np.uint64(16 * j)
            else:
                w1 |= q << np.uint64(16 * (j - 4))
        out[0] = w0
        out[1] = w1

    @njit(cache=True, inline="always")
    def threshold_count(thr, t, c, v):
        """Number of thresholds at or below ``v`` (the noise-free code), by bisection; ``thr`` [T, C, n + 2]
        holds each column's sorted thresholds between a -inf and a +inf sentinel."""
        a, b = 0, thr.shape[2] - 2
        while a < b:
            mid = (a + b) >> 1
            if thr[t, c, mid + 1] <= v:
                a = mid + 1
            else:
                b = mid
        return a

    @njit(cache=True, inline="always")
    def _gauss_p(thr, ti, ci, k, s, sigma):
        """P(code < k | s) for thresholds ``thr`` [T, C, n + 2] between a -inf and a +inf sentinel."""
        return _phi((thr[ti, ci, k] - s) / sigma)

    @njit(cache=True, inline="always")
    def _gauss_window(thr, t, c, s, sigma, below, p):
        """base (the noise-free code less ``below``, clamped so the window fits) and p[j] = P(code < base + j),
        j < len(p), of a Gaussian reading of partial sum ``s``."""
        n_codes, window = thr.shape[2] - 1, p.shape[0] - 1
        base = min(max(threshold_count(thr, t, c, s) - below, 0), max(n_codes - window, 0))
        for j in range(window + 1):
            p[j] = _gauss_p(thr, t, c, base + j, s, sigma) if base + j <= n_codes else 1.0
        return base

    @njit(cache=True, inline="always")
    def _table_window(cdf, r, median, below, p):
        """As :func:`_gauss_window` for row ``r`` of a measured table (``cdf`` as :func:`table_cuts`)."""
        n_codes, window = cdf.shape[1] - 1, p.shape[0] - 1
        base = min(max(np.int64(median) - below, 0), max(n_codes - window, 0))
        for j in range(window + 1):
            p[j] = min(max(cdf[r, base + j], 0.0), 1.0) if base + j <= n_codes else 1.0
        return base

    @njit(parallel=True, cache=True)
    def gaussian_cuts(thr, s_lo, n_s, sigma, by_column=False):
        """Cut table [T, n_s, C, 2] of Gaussian readings for partial sums s_lo .. s_lo + n_s - 1 (columns
        innermost: neighbouring columns reading the same partial sum share cache lines); ``by_column``: laid
        out [T, C, n_s, 2] instead, a column's entries contiguous (:mod:`nn.fused_columns`)."""
        tiles, cols, _ = thr.shape
        out = np.empty((tiles, cols, n_s, 2) if by_column else (tiles, n_s, cols, 2), np.uint64)
        for t in prange(tiles):
            p = np.ones(WINDOW + 1)
            for c in range(cols):
                for r in range(n_s):
                    base = _gauss_window(thr, t, c, np.float64(s_lo + r), sigma, 2, p)
                    _pack(base, p, out[t, c, r] if by_column else out[t, r, c])
        return out

    @njit(cache=True)
    def table_cuts(cdf, median):
        """Cut table [1, rows, 1, 2] of a measured noise table; ``cdf`` [rows, codes + 1] holds P(code < k)
        between a -1 and a 2 sentinel, ``median`` the row's median code."""
        rows = cdf.shape[0]
        out = np.empty((1, rows, 1, 2), np.uint64)
        p = np.ones(WINDOW + 1)
        for r in range(rows):
            _pack(_table_window(cdf, r, median[r], 2, p), p, out[0, r, 0])
        return out

    @njit(cache=True, inline="always")
    def _wide_row(base, p, out):
        """One wide row ``out`` [WIDE]: the cuts of p [WIDE_WINDOW + 1], then ``base``."""
        for j in range(WIDE_WINDOW + 1):
            out[j] = _quantize(p[j])
        out[WIDE_WINDOW + 1] = base

    @njit(parallel=True, cache=True)
    def wide_gaussian(thr, s_lo, n_s, sigma):
        """Wide rows [T, C, n_s, WIDE] of Gaussian readings of thresholds ``thr`` [T, C, n + 2] (as
        :func:`gaussian_cuts`) for partial sums s_lo .. s_lo + n_s - 1."""
        tiles, cols, _ = thr.shape
        out = np.zeros((tiles, cols, n_s, WIDE), np.uint16)
        for t in prange(tiles):
            p = np.ones(WIDE_WINDOW + 1)
            for c in range(cols):
                for r in range(n_s):
                    _wide_row(_gauss_window(thr, t, c, np.float64(s_lo + r), sigma, WIDE_BELOW, p), p, out[t, c, r])
        return out

    @njit(cache=True)
    def wide_table(cdf, median):
        """Wide rows [rows, WIDE] of a measured noise table (``cdf`` and ``median`` as :func:`table_cuts`)."""
        rows = cdf.shape[0]
        out = np.zeros((rows, WIDE), np.uint16)
        p = np.ones(WIDE_WINDOW + 1)
        for r in range(rows):
            _wide_row(_table_window(cdf, r, median[r], WIDE_BELOW, p), p, out[r])
        return out

    @njit(cache=True)
    def _slow_code(u15, s, ti, ci, row, start, seed, key, thr, sigma, cdf):
        """Exact inverse-CDF code of a reading the cuts could not decide (a tie or outside the window): the code a
        with P(code < a) <= u < P(code < a + 1), walked to from ``start`` (any code; the closer, the fewer CDF
        evaluations: a tie with a cut is one step from the cuts' count)."""
        u = (np.float64(u15) + _uniform(seed, key, 1)) * (1.0 / _Q)
        a = min(max(start, 0), (thr.shape[2] if sigma > 0.0 else cdf.shape[1]) - 2)
        if sigma > 0.0:
            sf = np.float64(s)
            while _gauss_p(thr, ti, ci, a + 1, sf, sigma) <= u:
                a += 1
            while _gauss_p(thr, ti, ci, a, sf, sigma) > u:
                a -= 1
        else:
            while cdf[row, a + 1] <= u:
                a += 1
            while cdf[row, a] > u:
                a -= 1
        return a

    @njit(cache=True, inline="always")
    def gather_entries(s, t, tab, s_lo, e):
        """e [3, C]: rows 0-1 the cut-table entries of partial sums ``s`` [C] on tile t (each entry's two words in
        separate rows, so :func:`entry_codes`' loop vectorizes with plain loads); row 2 is :func:`entry_codes`'
        scratch."""
        ti = t if tab.shape[0] > 1 else 0
        n_s = tab.shape[1]
        if tab.shape[2] > 1:
            for c in range(s.shape[0]):
                r = min(max(s[c] - s_lo, 0), n_s - 1)
                e[0, c] = tab[ti, r, c, 0]
                e[1, c] = tab[ti, r, c, 1]
        else:
            for c in range(s.shape[0]):
                r = min(max(s[c] - s_lo, 0), n_s - 1)
                e[0, c] = tab[ti, r, 0, 0]
                e[1, c] = tab[ti, r, 0, 1]

    @njit(cache=True, inline="always")
    def reading_bits(seed, key0, kstep, e):
        """The fast path's random bits of readings c = 0 .. C - 1 keyed ``key0 + c * kstep``: one word per four
        columns into ``e[2, :ceil(C / 4)]``, returned as C uint16 lanes (column c's u15 = lane c >> 1)."""
        words = e[2]
        for g in range((e.shape[1] + 3) >> 2):
            words[g] = _bits(seed, key0 + np.uint64(4 * g) * kstep, 0)
        return words.view(np.uint16)

    @njit(cache=True, inline="always")
    def swar_code(u15, w0, e1):
        """(code, bad) of a reading whose 15 random bits are ``u15`` through the entry (``w0``, ``e1``): the
        top bits of u15 - cut in four lanes at once count the cuts passed; ``bad`` is nonzero when u15 equals
        a cut or falls outside the window (the slow path decides)."""
        u = u15 * _ONES
        w1 = e1 & _LOW3
        g0, g1 = ((u | _H) - w0) & _H, ((u | _H) - w1) & _H  # lane set: u >= cut
        tie = (g0 & ((w0 | _H) - u)) | (g1 & ((w1 | _H) - u) & _LOW3)  # set both ways: u == cut
        code = np.int64((e1 >> np.uint64(48)) + _popcount(g0 & _LANES123) + _popcount(g1 & _LANES01))
        return code, ((g0 & _LANE0) ^ _LANE0) | (g1 & _LANE2) | tie

    @njit(cache=True, inline="always")
    def entry_codes(s, ti, e, lo, seed, key0, kstep, thr, sigma, cdf, code, slow):
        """Codes ``code`` [C] of readings of partial sums ``s`` [C] through their gathered entries ``e`` [3, C]
        (tile ``ti`` of the thresholds); reading c is keyed ``key0 + c * kstep``. ``slow`` [C] is scratch."""
        lanes = reading_bits(seed, key0, kstep, e)
        any_slow = np.uint64(0)
        for c in range(s.shape[0]):
            k, bad = swar_code(np.uint64(lanes[c] >> np.uint16(1)), e[0, c], e[1, c])
            code[c] = k
            slow[c] = bad != 0
            any_slow |= bad
        if any_slow != 0:
            for c in range(s.shape[0]):
                if slow[c]:
                    code[c] = _slow_code(lanes[c] >> np.uint16(1), s[c], ti, c if thr.shape[1] > 1 else 0,
                                         s[c] - lo, code[c], seed, key0 + np.uint64(c) * kstep, thr, sigma, cdf)

    @njit(cache=True, inline="always")
    def cut_codes(s, t, tab, s_lo, lo, seed, key0, kstep, thr, sigma, cdf, e, code, slow):
        """Codes ``code`` [C] of one input plane's readings of partial sums ``s`` [C] on tile t; reading c
        is keyed ``key0 + c * kstep`` (the walking readout's keys). ``e`` [3, C] and ``slow`` [C] are scratch."""
        gather_entries(s, t, tab, s_lo, e)
        entry_codes(s, t if tab.shape[0] > 1 else 0, e, lo, seed, key0, kstep, thr, sigma, cdf, code, slow)


def gaussian_range(thr: np.ndarray, sigma: float, lo: int, hi: int) -> tuple[int, int]:
    """(s_lo, n_s): the partial sums whose Gaussian readings the cut table must hold; beyond them 8 sigma
    separate every threshold from s, so the clamped row's cuts (all 0 or all 2^15 - 1 bar the window's ends) are
    exactly those of every farther partial sum and the slow path sees the real s."""
    finite = thr[..., 1:-1]
    s_lo = max(lo, math.floor(float(finite.min()) - 8 * sigma))
    s_hi = min(hi, math.ceil(float(finite.max()) + 8 * sigma))
    return s_lo, max(1, s_hi - s_lo + 1)
