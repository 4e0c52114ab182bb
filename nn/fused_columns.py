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

Where nn/_simd.c's AVX-512 code runs (:data:`SIMD`; tables of at most 129 partial sums, a chip layer's within a
memory budget), a column's codes and its additions are done there instead: the cut entries as per-column lane
tables, rows 0-31 held in registers (one permute per cut for 32 readings, no gathers; rows 32-63 loaded only
for the 32 readings that need them), the readings they cannot decide looked up in wider rows of 13 cuts (with
a chip's offsets ~0.1 % of readings fell outside the entries' window, each an exact walk of ~200 ns: a quarter
of the readout), and the additions vectorized over the block's rows (readings are plane-major, i = plane x rows
+ row, for that). Tables every column shares (a measured noise table, Gaussian noise without offsets) are read
here too. Same codes, same float order: the output is bit for bit that of the numba code and of the row kernel
(tested). Kernel time of the benchmark's noisy layers, one thread: numba 2.1-2.5 s, AVX-512 1.1 s, then less
with 32-row blocks (a column's table, fetched once a block, serves twice the readings: the big layers' tables
do not stay in cache), random words hashed rows innermost (vectorized) and the slow path's walk started at the
cuts' count (benchmarks/RESULTS.md). A block of few rows (a batch's classifier) is split over output ranges.
"""

from __future__ import annotations

import numpy as np

from nn import _simd, fused_noise
from nn._numba_prims import AVAILABLE

GROUP = 4  # columns sharing one random word (nn.fused_noise.reading_bits)
BLOCK = 32  # rows per block: a column's table, loaded once a block, serves 32 x planes readings
SIMD = _simd.ENABLED  # read the codes by nn/_simd.c's AVX-512 code (read when a layer builds its tables)
NO_TABLES = np.zeros((0, 0, _simd.HEADER), np.uint16)  # (the kernel's numba code)


def fits_int16(psum_range: tuple[int, int]) -> bool:
    """Whether a layer's partial sums (``CIMConfig.psum_range``, which also bounds the kernel's running sums)
    fit the int16 the AVX-512 code reads them as."""
    return -(2**15) < psum_range[0] and psum_range[1] < 2**15


def takes(per_column: bool, tiles: int, cols: int, n_s: int) -> bool:
    """Whether cut tables of ``n_s`` partial sums get column tables for the AVX-512 code (:data:`SIMD`): shared
    ones (one table) always; a chip's per-column ones where their range spans at most 129 partial sums and the
    layer's tables stay within :data:`nn._simd.MAX_TABLE_BYTES`."""
    if not SIMD:
        return False
    return not per_column or (n_s <= _simd.MAX_LANE_ROWS
                              and tiles * cols * _simd.table_bytes(n_s, n_s) <= _simd.MAX_TABLE_BYTES)


def splits(m_rows: int, block: int, n_out: int, threads: int) -> int:
    """Tasks per block of :func:`kernel_cuts_columns`: 1 where the blocks alone give every thread two or more;
    else enough output ranges (of at least 8 outputs) for that."""
    blocks = -(-m_rows // block)
    return 1 if blocks >= 2 * threads else max(1, min(n_out // 8, -(-2 * threads // blocks)))


def plan(cuts: np.ndarray, per_column: bool, wide: np.ndarray | None) -> tuple[bool, np.ndarray, np.ndarray]:
    """(whether this kernel reads them, its column ``tables``, its ``cuts``) for cut tables ``cuts``: a chip's
    per-column cuts [T, C, n_s, 2] (laid out by column) of bit-serial readings always, with their column tables
    where the AVX-512 code runs (``wide``, their wide rows [T, C, n_s, WIDE], given); cuts [1, n_s, 1, 2] that
    every column shares (bit-serial readings of a noise table or of Gaussian noise without offsets) where
    ``wide`` is given and the entries, trailing repeats cut off (a clamped partial sum reads the same entry),
    fit a column table (:data:`nn._simd.MAX_LANE_ROWS`); otherwise the row kernel reads them."""
    if per_column:
        tables = None if wide is None else _simd.column_tables(cuts, wide)
        return True, NO_TABLES if tables is None else tables, cuts
    if wide is None:
        return False, NO_TABLES, cuts
    entries = cuts.reshape(-1, 2)
    n = entries.shape[0]
    while n > 1 and (entries[n - 2] == entries[-1]).all():
        n -= 1
    tables = _simd.column_tables(entries[None, None, :n], wide.reshape(1, 1, -1, fused_noise.WIDE))
    if tables is None:
        return False, NO_TABLES, cuts
    return True, tables, cuts.reshape(1, 1, -1, 2)


if AVAILABLE:
    from numba import njit, prange

    from nn._numba_prims import _bits, _popcount

    @njit(cache=True, inline="always")
    def _add_popcounts(xb, k, w0, w1, b, sign, s):
        """s[i] += sign * (popcount(xb[k, i] & w0) + popcount(xb[k + 1, i] & w1)) << b (w1 = 0: word k alone)."""
        if w1 == 0:
            if w0 != 0:
                for i in range(s.shape[0]):
                    s[i] += sign * (np.int64(_popcount(xb[k, i] & w0)) << b)
        else:
            for i in range(s.shape[0]):
                s[i] += sign * ((np.int64(_popcount(xb[k, i] & w0)) + np.int64(_popcount(xb[k + 1, i] & w1))) << b)

    @njit(cache=True, inline="always")
    def _column_psums(xb, wp, wm, minus, xnor, ssum, t, c, s):
        """s[i] = the partial sum of column c of tile t for reading i, from ``xb`` [words, readings]: words two
        at a time, one pass over the readings per pair (a 128-row tile: one pass)."""
        s[:] = 0
        n_words = xb.shape[0]
        for b in range(wp.shape[1]):
            for k in range(0, n_words, 2):
                w1 = wp[t, b, k + 1, c] if k + 1 < n_words else np.uint64(0)
                _add_popcounts(xb, k, wp[t, b, k, c], w1, b, 1, s)
                if minus:
                    w1 = wm[t, b, k + 1, c] if k + 1 < n_words else np.uint64(0)
                    _add_popcounts(xb, k, wm[t, b, k, c], w1, b, -1, s)
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

    @njit(cache=True, inline="always")
    def _slow_codes(s, words, lane, key_c, kstride, nb, ti, ci, lo, seed, thr, sigma, cdf, code, slow):
        """The exact codes of the readings ``slow`` flags (:func:`nn.fused_noise._slow_code`, walked from the code
        the cuts gave); reading i = p * nb + mi of the column is keyed ``key_c + mi * kstride + p``."""
        for i in range(s.shape[0]):
            if slow[i]:
                key = np.uint64(key_c) + np.uint64(i % nb) * kstride + np.uint64(i // nb)
                u15 = np.uint16((words[i] >> np.uint64(16 * lane + 1)) & np.uint64(0x7FFF))
                code[i] = fused_noise._slow_code(u15, np.int64(s[i]), ti, ci, np.int64(s[i]) - lo, np.int64(code[i]),
                                                 seed, key, thr, sigma, cdf)

    @njit(parallel=True, cache=True)
    def kernel_cuts_columns(xw, wp, wm, minus, xnor, ssum, bitw_int, n_out, lo, thr, lev, colw, sigma, cdf, seed,
                            cuts, s_lo, tables, block, parts, out):
        """Bit-serial :func:`nn.fused._kernel_cuts` (same readings, keys and sums), column by column within
        blocks of ``block`` rows, for a chip's per-column cuts [T, C, n_s, 2] and thresholds ``thr`` [T, C, n + 2]
        (every tile and column its own), or cuts [1, 1, n_s, 2] that every column shares (a noise table, whose
        ``cdf`` the slow path reads, or Gaussian noise without offsets, ``thr`` [1, 1, n + 2]). ``tables``: the
        cuts' column tables (:func:`nn._simd.column_tables`; [1, 1, ...] shared), read by the
        AVX-512 code, or empty (:data:`NO_TABLES`) for the numba code. Each block is split into ``parts`` tasks
        over the outputs (the columns c = n + j n_out of outputs n in a range; :func:`splits`), so that layers
        of few rows (a batch's classifier) run on every thread; the sums are the same whatever the split."""
        m_rows, tiles, planes, n_words = xw.shape
        cols = wp.shape[3]
        n_s = cuts.shape[2]
        simd = tables.shape[0] > 0
        kstride = np.uint64(tiles * cols * planes)
        bw = bitw_int.astype(np.float64)
        n_sub = (cols + n_out - 1) // n_out  # columns c = n + j * n_out, j < n_sub, are output n's
        for task in prange(((m_rows + block - 1) // block) * parts):
            blk, part = task // parts, task % parts
            n0, n1 = part * n_out // parts, (part + 1) * n_out // parts  # this task's outputs
            m0 = blk * block
            nb = min(block, m_rows - m0)
            n_r = nb * planes
            acc = np.zeros((cols, nb))  # column-major: a column's rows are contiguous
            xb = np.empty((n_words, n_r), np.uint64)
            s = np.empty(0 if simd else n_r, np.int64)  # numba's codes read int64 sums and gather entries into e
            e = np.empty((2, 0 if simd else n_r), np.uint64)
            s16 = np.empty(n_r if simd else 0, np.int16)  # (the partial sums fit: fits_int16)
            words = np.empty(n_r, np.uint64)
            code, slow = np.empty(n_r, np.uint16), np.empty(n_r, np.bool_)  # (codes < 2^16, as in the tables)
            for t in range(tiles):
                for mi in range(nb):  # readings plane-major: i = p * nb + mi
                    for p in range(planes):
                        for k in range(n_words):
                            xb[k, p * nb + mi] = xw[m0 + mi, t, p, k]
                for j in range(n_sub):
                    c_lo, c_hi = j * n_out + n0, min(j * n_out + n1, cols)
                    for g in range(c_lo - c_lo % GROUP, c_hi, GROUP):
                        key0 = np.uint64((m0 * tiles + t) * cols * planes + g * planes)
                        for p in range(planes):  # the group's random words: column g's reading keys (rows
                            for mi in range(nb):  # innermost: the hashes vectorize)
                                words[p * nb + mi] = _bits(seed, key0 + np.uint64(mi) * kstride + np.uint64(p), 0)
                        for c in range(max(g, c_lo), min(g + GROUP, c_hi)):
                            ti, ci = t if cuts.shape[0] > 1 else 0, c if cuts.shape[1] > 1 else 0  # (shared)
                            key_c = (m0 * tiles + t) * cols * planes + c * planes  # (reading keys as _kernel_cuts)
                            if simd:  # (int16 partial sums: one load per 32 readings in the C code)
                                _column_psums(xb, wp, wm, minus, xnor, ssum, t, c, s16)
                                head = tables.shape[2] - _simd.HEADER
                                if _simd.column_codes(s16.ctypes.data, words.ctypes.data, c - g,
                                                      tables[ti, ci].ctypes.data, s_lo, tables[ti, ci, head], n_s,
                                                      tables[ti, ci, head + 1], n_r, code.ctypes.data,
                                                      slow.ctypes.data) != 0:
                                    _slow_codes(s16, words, c - g, key_c, kstride, nb, ti, ci, lo, seed, thr, sigma,
                                                cdf, code, slow)
                            else:
                                _column_psums(xb, wp, wm, minus, xnor, ssum, t, c, s)
                                if _column_codes(s, words, c - g, cuts, ti, ci, s_lo, e, code, slow):
                                    _slow_codes(s, words, c - g, key_c, kstride, nb, ti, ci, lo, seed, thr, sigma,
                                                cdf, code, slow)
                            # per output the additions run in plane order, as in _kernel_cuts
                            if simd:
                                _simd.column_add(code.ctypes.data, nb, planes, bw.ctypes.data, lev.ctypes.data,
                                                 lev.shape[0], colw[c], acc[c].ctypes.data)
                            else:
                                w = colw[c]
                                for p in range(planes):
                                    bwp = bw[p]
                                    for mi in range(nb):
                                        acc[c, mi] += bwp * lev[code[p * nb + mi]] * w
            for mi in range(nb):
                for n in range(n0, n1):
                    v = 0.0
                    for c in range(n, cols, n_out):
                        v += acc[c, mi]
                    out[m0 + mi, n] = v
