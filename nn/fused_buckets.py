"""Noise-free readings over a wide partial-sum range by bucket tables: one 16-bit load and one compare a reading.

Multi-level inputs (and wide arrays) give partial sums over a range of up to 128 x 255 values, too many for a
lookup table per (tile, column, partial sum). The noise-free code of integer partial sum s is the number of the
column's (shifted, sorted) thresholds at or below s, i.e. of their integer cut points ceil(T_k) at or below s.
Cut the range into buckets of w = 2^shift partial sums, with w no wider than half a threshold step, so a bucket
rarely holds more than one cut point. Each (tile, bucket, column) gets one uint16 entry:

- bits 0-7: the code at the bucket's first partial sum s0 (its ``base``);
- bits 8-14: the offset of the bucket's one cut point from s0 (1 .. w - 1), or w where the bucket holds none;
- bit 15: set where the bucket holds two or more cut points; ``base`` is then ``n + 1``, the index of an extra
  level 0.0, so the fast pass adds nothing exactly and the reading is redone by bisection.

A reading is base + ((s - s0) >= cut): a shift, a mask, one table load and a compare, with no branch; the
table is [tiles, buckets, columns], so neighbouring columns reading nearby partial sums share cache lines, and
a block of rows read tile by tile finds its tile's part (1 MB for 1,024 columns at w = 64 over 0..32,640) in
cache. Exact: every reading equals the threshold count (tested against the reference path).
"""

from __future__ import annotations

import math

import numpy as np

from nn._numba_prims import AVAILABLE

MAX_BYTES = 2**26  # bucket tables up to 64 MiB a layer; larger: the threshold search
MAX_CODES = 254  # ``base`` has 8 bits and n + 1 marks a crowded bucket
MAX_SHIFT = 6  # the cut offset has 7 bits (w = 64 marks "no cut point")


def shift_for(thr: np.ndarray) -> int:
    """log2 of the bucket width: the largest power of two at most half the median threshold spacing (0 .. 6)."""
    inner = thr[0, 0, 1:-1]
    spacing = float(np.median(np.diff(inner))) if inner.shape[0] > 1 else 2.0**MAX_SHIFT * 2
    return int(min(max(math.floor(math.log2(max(spacing / 2, 1.0))), 0), MAX_SHIFT))


def usable(thr: np.ndarray, lo: int, hi: int, shift: int) -> bool:
    """True when a bucket table of these thresholds fits (codes and memory)."""
    n_buckets = ((hi - lo) >> shift) + 1
    return thr.shape[2] - 2 <= MAX_CODES and thr.shape[0] * thr.shape[1] * n_buckets * 2 <= MAX_BYTES


if AVAILABLE:
    from numba import njit, prange

    from nn.fused_noise import threshold_count

    @njit(parallel=True, cache=True)
    def bucket_table(thr, lo, hi, shift):
        """The uint16 table [T, buckets, C] of thresholds ``thr`` [T, C, n + 2] (sorted, between a -inf and a
        +inf sentinel) for integer partial sums lo..hi."""
        tiles, cols, n = thr.shape[0], thr.shape[1], thr.shape[2] - 2
        w = 1 << shift
        n_buckets = ((hi - lo) >> shift) + 1
        tab = np.empty((tiles, n_buckets, cols), np.uint16)
        for tc in prange(tiles * cols):
            t, c = tc // cols, tc % cols
            k = 0  # thresholds at or below the bucket's first partial sum s0 (T <= s0 iff ceil(T) <= s0)
            for b in range(n_buckets):
                s0 = lo + (b << shift)
                while k < n and thr[t, c, k + 1] <= s0:
                    k += 1
                j = k
                while j < n and thr[t, c, j + 1] <= s0 + w - 1:
                    j += 1
                if j == k:
                    tab[t, b, c] = k | (w << 8)
                elif j == k + 1:
                    tab[t, b, c] = k | ((np.int64(math.ceil(thr[t, c, k + 1])) - s0) << 8)
                else:
                    tab[t, b, c] = (n + 1) | (w << 8) | 0x8000
        return tab

    @njit(cache=True, inline="always")
    def read_row(psr, off, tab, t, shift, lo, thr, lev0, colw, acc, crowded):
        """acc[c] += the noise-free reading (times its column's weight) of partial sum psr[c] + off[c] of every
        column of tile t; ``lev0`` is the code levels with a 0.0 appended (the crowded buckets' fast-pass level)."""
        mask = (1 << shift) - 1
        nf = 0
        for c in range(psr.shape[0]):
            s = np.int64(psr[c]) + off[c] - lo
            e = np.int64(tab[t, s >> shift, c])
            acc[c] += lev0[(e & 0xFF) + np.int64((s & mask) >= ((e >> 8) & 0x7F))] * colw[c]
            crowded[nf] = c
            nf += e >> 15
        for j in range(nf):  # two or more cut points in the bucket (rare): count the thresholds
            c = crowded[j]
            acc[c] += lev0[threshold_count(thr, t, c, np.float64(np.int64(psr[c]) + off[c]))] * colw[c]
