"""Bit-serial noisy readouts through cut tables, column by column: the cut-table gathers hit the L1 cache.

:func:`nn.fused._kernel_cuts` computes a row's partial sums for every column of a tile (columns innermost, so
the popcounts vectorize over columns) and then reads them: each reading gathers its 16-byte entry from the
tile's cut table (:mod:`nn.fused_noise`; for Gaussian noise with offsets one entry per column and partial sum,
~150 KB-1.4 MB a tile), a load that misses L1 for nearly every reading. Profiled on the benchmark's VGG-8 (one
thread, per reading slot): partial sums 0.3 ns, the gather 1.2-1.8 ns, the code 1.0 ns, the weighted add 0.8 ns.

This kernel turns the loop inside out. For a block of rows it copies the tile's input words into
reading-major order (reading i = row x plane) and then, four columns at a time (the columns that share a
random word), computes one column's partial sums for all the block's readings (vectorized over readings),
reads them and adds them. The cut table is laid out [T, C, n_s, 2] (``gaussian_cuts(..., by_column=True)``),
so a column's entries for all partial sums are ~10 contiguous cache lines and the gathers stay in L1; the
gather runs as its own loop so that the compare vectorizes; the accumulators are column-major, so each plane's
additions run over the block's rows at once instead of as one dependent chain per output. The readings, their
keys and random bits, the slow path and the order of the float additions per output are those of
:func:`nn.fused._kernel_cuts`, so the two give the same output bit for bit (tested); all-zero planes need no
special case (their partial sums are 0).

Measured on the benchmark's VGG-8 layers (one thread, quiet machine): 4.34 -> 3.63 s for the noisy layers of
a batch-16 forward (per reading: partial sums and random bits 0.38 ns, gather and code 1.8 ns, add 0.55 ns). A
measured noise table (one row of cuts shared by every column, already in L1) stays on
:func:`nn.fused._kernel_cuts`, which skips the partial sums of all-zero planes and was faster there.
"""

from __future__ import annotations

import numpy as np

from nn._numba_prims import AVAILABLE

GROUP = 4  # columns sharing one random word (nn.fused_noise.reading_bits)

if AVAILABLE:
    from numba import njit, prange

    from nn import fused_noise
    from nn._numba_prims import _bits, _popcount

    @njit(cache=True, inline="always")
    def _column_psums(xb, wp, wm, minus, xnor, ssum, t, c, s):
        """s[i] = the partial sum of column c of tile t for reading i, from ``xb`` [words, readings]."""
        s[:] = 0
        for b in range(wp.shape[1]):
            for k in range(xb.shape[0]):
                w = wp[t, b, k, c]
                if w != 0:
                    for i in range(s.shape[0]):
                        s[i] += np.int64(_popcount(xb[k, i] & w)) << b
                if minus:
                    w = wm[t, b, k, c]
                    if w != 0:
                        for i in range(s.shape[0]):
                            s[i] -= np.int64(_popcount(xb[k, i] & w)) << b
        if xnor:
            for i in range(s.shape[0]):
                s[i] = 2 * s[i] - ssum[t, c]

    @njit(cache=True, inline="always")
    def _column_codes(s, words, lane, cuts, t, c, s_lo, e, code, slow):
        """Codes of readings i with partial sums ``s`` [R] through the cut entries ``cuts`` [T, C, n_s, 2] of
        column ``c`` of tile ``t``; reading i's 15 random bits are lane ``lane`` of ``words[i]``; ``e`` [2, R]
        is scratch. Returns whether any reading needs the slow path (flagged in ``slow``). The gather runs as its
        own loop so that the compare (:func:`nn.fused_noise.swar_code`) vectorizes."""
        n_s = cuts.shape[2]
        for i in range(s.shape[0]):
            r = min(max(s[i] - s_lo, 0), n_s - 1)
            e[0, i] = cuts[t, c, r, 0]
            e[1, i] = cuts[t, c, r, 1]
        any_slow = np.uint64(0)
        sh = np.uint64(16 * lane + 1)
        for i in range(s.shape[0]):
            k, bad = fused_noise.swar_code((words[i] >> sh) & np.uint64(0x7FFF), e[0, i], e[1, i])
            code[i] = k
            slow[i] = bad != 0
            any_slow |= bad
        return any_slow != 0

    @njit(parallel=True, cache=True)
    def kernel_cuts_columns(xw, wp, wm, minus, xnor, ssum, bitw_int, n_out, lo, thr, lev, colw, sigma, cdf, seed,
                            cuts, s_lo, block, out):
        """Bit-serial :func:`nn.fused._kernel_cuts` (same readings, keys and sums), column by column within
        blocks of ``block`` rows, for a chip's per-column cuts [T, C, n_s, 2] and thresholds ``thr`` [T, C, n + 2]
        (every tile and column its own)."""
        m_rows, tiles, planes, n_words = xw.shape
        cols = wp.shape[3]
        kstep = np.uint64(planes)
        for blk in prange((m_rows + block - 1) // block):
            m0 = blk * block
            nb = min(block, m_rows - m0)
            n_r = nb * planes
            acc = np.zeros((cols, nb))  # column-major: a column's rows are contiguous
            xb = np.empty((n_words, n_r), np.uint64)
            s = np.empty(n_r, np.int64)
            words = np.empty(n_r, np.uint64)
            code, slow = np.empty(n_r, np.int64), np.empty(n_r, np.bool_)
            e = np.empty((2, n_r), np.uint64)
            for t in range(tiles):
                for mi in range(nb):
                    for p in range(planes):
                        for k in range(n_words):
                            xb[k, mi * planes + p] = xw[m0 + mi, t, p, k]
                for g in range(0, cols, GROUP):
                    for mi in range(nb):  # the group's random words: column g's reading keys
                        key0 = np.uint64(((m0 + mi) * tiles + t) * cols * planes + g * planes)
                        for p in range(planes):
                            words[mi * planes + p] = _bits(seed, key0 + np.uint64(p), 0)
                    for c in range(g, min(g + GROUP, cols)):
                        _column_psums(xb, wp, wm, minus, xnor, ssum, t, c, s)
                        if _column_codes(s, words, c - g, cuts, t, c, s_lo, e, code, slow):
                            for i in range(n_r):
                                if slow[i]:
                                    mi, p = i // planes, i % planes
                                    key = np.uint64(((m0 + mi) * tiles + t) * cols * planes + p) + np.uint64(c) * kstep
                                    u15 = np.uint16((words[i] >> np.uint64(16 * (c - g) + 1)) & np.uint64(0x7FFF))
                                    code[i] = fused_noise._slow_code(u15, s[i], t, c, s[i] - lo,
                                                                     np.int64(e[1, i] >> np.uint64(48)),
                                                                     seed, key, thr, sigma, cdf)
                        w = colw[c]
                        for p in range(planes):  # per output the additions run in plane order, as in _kernel_cuts
                            bw = np.float64(bitw_int[p])
                            for mi in range(nb):
                                acc[c, mi] += bw * lev[code[mi * planes + p]] * w
            for mi in range(nb):
                for n in range(n_out):
                    v = 0.0
                    for c in range(n, cols, n_out):
                        v += acc[c, mi]
                    out[m0 + mi, n] = v
