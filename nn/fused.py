"""Fused CPU engine: bit-packed crossbars read out by popcount, the ADC applied in the same pass (numba).

A memory column with binary cells and a binary input plane computes popcount(input bits AND cell bits):
that is what the array does, and on a CPU it is a few integer instructions per 64 rows instead of 64
multiply-adds. Inputs are cut into bit-planes (bit-serial, or the bits of a multi-level drive summed with
their weights before one read), multi-bit cells into bit-slices (summed with 2^b), and signed columns
(``signed_psum``) subtract the negative cells' count; each partial sum is then read by its physical ADC in
the same loop -- a table lookup (noise-free), a bucket table over a wide noise-free range (multi-level inputs,
:mod:`nn.fused_buckets`), a count of the column's shifted thresholds at or below the (noisy) value (a SAR's
binary search is first turned into the sorted thresholds it is equivalent to; with noise, or for a uniform
scheme, the count steps from a start code over the few thresholds crossed, else it bisects), or, for noisy
readings, an inverse-CDF draw through the cut tables of :mod:`nn.fused_noise` (measured noise tables,
Gaussian noise up to 0.6 threshold spacings) -- and shift-added into the output.
Nothing of the size of the partial sums is ever stored: memory is the packed inputs (1 bit per input bit)
and the output.

Exactness: partial sums are exact integers; readings and their weighted sum are accumulated in float64
(exact for integer-valued levels below 2^53), so the result equals the pure-torch reference path
(``RuntimeConfig(fused=False)``) bit for bit wherever that path is exact (tested). Noise: a counter-based
generator (splitmix64 of the call's seed and the reading's index) gives every reading its own uniform /
normal draw, independent of threading and chunking; the seed comes from the layer's torch generator, so a
seeded layer is reproducible. Its draws differ from the torch path's (same distribution, tested).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from nn import fused_buckets, fused_columns, fused_noise
from nn._numba_prims import AVAILABLE
from nn.adc import adc_tables, lookup_tables, mean_lookup_tables, sar_effective_thresholds, xnor_periphery
from nn.config import CIMConfig, CIMConfigError
from nn.fused_pack import pack_rows, pack_windows

if AVAILABLE:
    import numba
    from numba import njit, prange

    from nn._numba_prims import _normal, _popcount
    from nn.fused_buckets import read_row

logger = logging.getLogger(__name__)

_LUT_MAX_ENTRIES = 2**25  # noise-free lookup tables up to 256 MiB (float64); larger: threshold search
MODE_LUT, MODE_THRESHOLDS, MODE_CUTS, MODE_CUT_COLUMNS = 0, 1, 2, 3  # (3: per-column cuts, nn.fused_columns)
_BLOCK = 16  # rows per block of the kernels (tile by tile within a block)
_COLUMN_CUTS = True  # read a chip's per-column Gaussian cuts column by column (nn.fused_columns)

if AVAILABLE:

    @njit(cache=True, inline="always")
    def _psums(xw, wp, wm, minus, m, t, p, s, xnor, ssum):
        """Integer partial sums of every column of tile t for input plane p of row m, into ``s`` [C]: columns
        innermost and contiguous (``wp`` [T, cell bits, words, C]), so the popcounts vectorize. ``xnor``: the
        bits drive +-1, P = 2 * sum(x * w) - S with S = ``ssum`` [T, C], the column's weight sum over the tile."""
        s[:] = 0
        for b in range(wp.shape[1]):
            for k in range(xw.shape[3]):
                xk = xw[m, t, p, k]
                if xk == 0:
                    continue
                for c in range(s.shape[0]):
                    s[c] += np.int64(_popcount(xk & wp[t, b, k, c])) << b
                if minus:
                    for c in range(s.shape[0]):
                        s[c] -= np.int64(_popcount(xk & wm[t, b, k, c])) << b
        if xnor:
            for c in range(s.shape[0]):
                s[c] = 2 * s[c] - ssum[t, c]

    @njit(cache=True, inline="always")
    def _read(mode, t, c, s, lo, lut, thr, code0, walk, qstep, lev, colw, sigma, cdf, seed, key):
        """ADC output (times the column's digital weight) of integer partial sum ``s``: a table lookup (noise
        free) or a count of thresholds (Gaussian noise too wide for the cut tables of :mod:`nn.fused_noise`)."""
        if mode == 0:
            return lut[t, c, s - lo]
        v = np.float64(s)
        if sigma > 0.0:
            v += sigma * _normal(seed, key)
        # thr [T, C, n + 2]: the sorted thresholds between a -inf and a +inf sentinel (thr[a + 1] is threshold a)
        if walk:  # from the noise-free code of s, step over the few thresholds the noise crossed
            a = np.int64(code0[t, c, s - lo])
        elif qstep[0] > 0.0:  # a uniform scheme: start from the code of the unshifted thresholds (qstep[1]: first)
            a = np.int64(min(max(math.floor(v / qstep[0] - qstep[1] - 0.5) + 1.0, 0.0), np.float64(thr.shape[2] - 2)))
        else:
            return lev[fused_noise.threshold_count(thr, t, c, v)] * colw[c]
        a += np.int64(thr[t, c, a + 1] <= v) - np.int64(thr[t, c, a] > v)  # one code up or down, no branch
        if thr[t, c, a + 1] <= v or thr[t, c, a] > v:  # more than one code away (rare): walk on
            while thr[t, c, a + 1] <= v:
                a += 1
            while thr[t, c, a] > v:
                a -= 1
        return lev[a] * colw[c]

    @njit(cache=True, inline="always")
    def _live(xw, m, t, p):
        """True when input plane p of row m drives any row of tile t."""
        for k in range(xw.shape[3]):
            if xw[m, t, p, k] != 0:
                return True
        return False

    @njit(cache=True, inline="always")
    def _fold_columns(acc, n_out, out, m):
        """out[m, n] = sum of the readings of every column of output n (columns c = g * n_out + n)."""
        for n in range(n_out):
            v = 0.0
            for c in range(n, acc.shape[0], n_out):
                v += acc[c]
            out[m, n] = v

    @njit(cache=True)
    def _zero_readings(mode, lo, lut, thr, code0, walk, qstep, lev, colw, cdf):
        """Noise-free reading of partial sum 0 per (tile, column): what an all-zero input plane reads."""
        tiles, cols = (lut.shape[0], lut.shape[1]) if mode == 0 else (thr.shape[0], thr.shape[1])
        out = np.empty((tiles, cols))
        for t in range(tiles):
            for c in range(cols):
                out[t, c] = _read(mode, t, c, 0, lo, lut, thr, code0, walk, qstep, lev, colw, 0.0, cdf, np.uint64(0),
                                  np.uint64(0))
        return out

    @njit(parallel=True, cache=True)
    def _kernel(xw, wp, wm, minus, xnor, ssum, serial, skip_zero, zero, bitw, bitw_int, n_out, lo, mode, lut, thr,
                code0, walk, qstep, lev, colw, sigma, cdf, seed, out):
        """out[m, n] = sum over tiles, slices/polarities (columns c = g * n_out + n) and input planes of the
        weighted ADC readings. With ``skip_zero`` (noise-free readouts), an all-zero input plane of a tile is not
        counted: its columns read ``zero[t, c]``, added with the plane's weight. Blocks of ``_BLOCK`` rows run
        tile by tile, so a tile's lookup table (up to ~1 MB) serves the block from cache. (Multi-level inputs,
        ``serial`` False, normally take the matmul path, :func:`_run_dense`; this branch is its test oracle.)"""
        m_rows, tiles, planes, _ = xw.shape
        cols = wp.shape[3]
        for blk in prange((m_rows + _BLOCK - 1) // _BLOCK):
            m0 = blk * _BLOCK
            nb = min(_BLOCK, m_rows - m0)
            acc = np.zeros((nb, cols))
            s = np.empty(cols, np.int64)
            total = np.empty(cols, np.int64)
            for t in range(tiles):
                for i in range(nb):
                    m = m0 + i
                    zero_w = 0.0
                    total[:] = 0
                    for p in range(planes):
                        live = _live(xw, m, t, p)
                        if not live and skip_zero:
                            zero_w += bitw[p]
                            continue
                        if live or xnor:
                            _psums(xw, wp, wm, minus, m, t, p, s, xnor, ssum)
                        else:  # an all-zero plane of a noisy readout: partial sums 0, each read (noise and all)
                            s[:] = 0
                        if serial:
                            base = np.uint64((m * tiles + t) * cols * planes + p)
                            for c in range(cols):
                                acc[i, c] += bitw[p] * _read(mode, t, c, s[c], lo, lut, thr, code0, walk, qstep, lev,
                                                             colw, sigma, cdf, seed, base + np.uint64(c * planes))
                        else:
                            for c in range(cols):
                                total[c] += bitw_int[p] * s[c]
                    if serial:
                        if zero_w != 0.0:
                            for c in range(cols):
                                acc[i, c] += zero_w * zero[t, c]
                    else:
                        base = np.uint64((m * tiles + t) * cols * planes)
                        for c in range(cols):
                            acc[i, c] += _read(mode, t, c, total[c], lo, lut, thr, code0, walk, qstep, lev, colw,
                                               sigma, cdf, seed, base + np.uint64(c * planes))
            for i in range(nb):
                _fold_columns(acc[i], n_out, out, m0 + i)

    @njit(parallel=True, cache=True)
    def _kernel_dense(ps, poff, row0, planes, n_out, btab, bshift, lev0, lo, mode, lut, thr, code0, walk, qstep, lev,
                      colw, sigma, cdf, seed, out):
        """Multi-level inputs from a matmul: ``ps`` [T, m, C] (integers, or integer-valued floats) plus ``poff``
        [T, C] (the int8 matmul's offset, else 0) are the partial sums of rows row0..row0+m-1, one reading each,
        keyed as :func:`_kernel` keys them (so the draws agree); noise free with a bucket table ``btab``
        (``bshift`` >= 0), read through it (:mod:`nn.fused_buckets`). Blocks of ``_BLOCK`` rows run tile by tile,
        so a tile's tables serve the block from cache."""
        tiles, m_rows, cols = ps.shape
        for blk in prange((m_rows + _BLOCK - 1) // _BLOCK):
            m0 = blk * _BLOCK
            nb = min(_BLOCK, m_rows - m0)
            acc = np.zeros((nb, cols))
            crowded = np.empty(cols, np.int64)
            for t in range(tiles):
                for i in range(nb):
                    m = m0 + i
                    if bshift >= 0:
                        read_row(ps[t, m], poff[t], btab, t, bshift, lo, thr, lev0, colw, acc[i], crowded)
                        continue
                    base = np.uint64(((row0 + m) * tiles + t) * cols * planes)
                    for c in range(cols):
                        acc[i, c] += _read(mode, t, c, np.int64(ps[t, m, c]) + poff[t, c], lo, lut, thr, code0, walk,
                                           qstep, lev, colw, sigma, cdf, seed, base + np.uint64(c * planes))
            for i in range(nb):
                _fold_columns(acc[i], n_out, out, m0 + i)


    @njit(cache=True, inline="always")
    def _add_codes(weight, code, lev, colw, acc):
        """acc[c] += weight * the level of code[c], scaled by its column's weight."""
        for c in range(code.shape[0]):
            acc[c] += weight * lev[code[c]] * colw[c]

    @njit(cache=True, inline="always")
    def _add_cut_readings(weight, t, s, key0, kstep, lo, thr, lev, colw, sigma, cdf, seed, cuts, s_lo, acc, code, e,
                          slow):
        """acc[c] += weight * the noisy reading of s[c], every column c of tile t (:func:`nn.fused_noise.cut_codes`)."""
        fused_noise.cut_codes(s, t, cuts, s_lo, lo, seed, key0, kstep, thr, sigma, cdf, e, code, slow)
        _add_codes(weight, code, lev, colw, acc)

    @njit(parallel=True, cache=True)
    def _kernel_cuts(xw, wp, wm, minus, xnor, ssum, serial, bitw_int, n_out, lo, thr, lev, colw, sigma, cdf, seed,
                     cuts, s_lo, out):
        """:func:`_kernel` for noisy readouts through cut tables: every plane is read (an all-zero plane reads
        partial sums 0, noise and all), readings keyed as :func:`_kernel` keys them. Blocks of ``_BLOCK`` rows
        run tile by tile, so one tile's cuts serve the whole block from cache (row by row, a layer's tables,
        tens of MB, were fetched again for every row); a tile's entries of partial sum 0 are gathered once for all
        its all-zero planes."""
        m_rows, tiles, planes, _ = xw.shape
        cols = wp.shape[3]
        kstep = np.uint64(planes)
        for blk in prange((m_rows + _BLOCK - 1) // _BLOCK):
            m0 = blk * _BLOCK
            nb = min(_BLOCK, m_rows - m0)
            acc = np.zeros((nb, cols))
            s = np.empty(cols, np.int64)
            total = np.empty(cols, np.int64)
            code, e, slow = np.empty(cols, np.int64), np.empty((3, cols), np.uint64), np.empty(cols, np.bool_)
            zeros, e_zero = np.zeros(cols, np.int64), np.empty((3, cols), np.uint64)
            for t in range(tiles):
                if serial:
                    fused_noise.gather_entries(zeros, t, cuts, s_lo, e_zero)
                ti = t if cuts.shape[0] > 1 else 0
                for i in range(nb):
                    m = m0 + i
                    total[:] = 0
                    for p in range(planes):
                        live = xnor or _live(xw, m, t, p)
                        if live:
                            _psums(xw, wp, wm, minus, m, t, p, s, xnor, ssum)
                        if not serial:
                            if live:
                                for c in range(cols):
                                    total[c] += bitw_int[p] * s[c]
                            continue
                        key0 = np.uint64((m * tiles + t) * cols * planes + p)
                        if live:
                            _add_cut_readings(np.float64(bitw_int[p]), t, s, key0, kstep, lo, thr, lev, colw, sigma,
                                              cdf, seed, cuts, s_lo, acc[i], code, e, slow)
                        else:  # an all-zero plane reads partial sums 0: the tile's entries, gathered once
                            fused_noise.entry_codes(zeros, ti, e_zero, lo, seed, key0, kstep, thr, sigma, cdf, code,
                                                    slow)
                            _add_codes(np.float64(bitw_int[p]), code, lev, colw, acc[i])
                    if not serial:
                        _add_cut_readings(1.0, t, total, np.uint64((m * tiles + t) * cols * planes), kstep, lo, thr,
                                          lev, colw, sigma, cdf, seed, cuts, s_lo, acc[i], code, e, slow)
            for i in range(nb):
                _fold_columns(acc[i], n_out, out, m0 + i)

    @njit(parallel=True, cache=True)
    def _kernel_dense_cuts(ps, poff, row0, planes, n_out, lo, thr, lev, colw, sigma, cdf, seed, cuts, s_lo, out):
        """:func:`_kernel_dense` through cut tables (the same reading keys)."""
        tiles, m_rows, cols = ps.shape
        kstep = np.uint64(planes)
        for m in prange(m_rows):
            acc = np.zeros(cols)
            s = np.empty(cols, np.int64)
            code, e, slow = np.empty(cols, np.int64), np.empty((3, cols), np.uint64), np.empty(cols, np.bool_)
            for t in range(tiles):
                for c in range(cols):
                    s[c] = np.int64(ps[t, m, c]) + poff[t, c]
                _add_cut_readings(1.0, t, s, np.uint64(((row0 + m) * tiles + t) * cols * planes), kstep, lo, thr, lev,
                                  colw, sigma, cdf, seed, cuts, s_lo, acc, code, e, slow)
            _fold_columns(acc, n_out, out, m)


def usable(cfg: CIMConfig, x: torch.Tensor) -> bool:
    """True when the fused engine runs this call (CPU tensors, numba importable, not switched off)."""
    return AVAILABLE and cfg.runtime.fused and x.device.type == "cpu"


def _columns(cells: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cells [S, 2, K, N] -> per-ADC-column cell rows [C, K] (plus) and [C, K] (minus, signed columns only),
    columns ordered (slice, polarity, output) as the torch path orders them."""
    s, _, k, n = cells.shape
    if signed:
        return cells[:, 0].permute(0, 2, 1).reshape(s * n, k), cells[:, 1].permute(0, 2, 1).reshape(s * n, k)
    return cells.permute(0, 1, 3, 2).reshape(s * 2 * n, k), None


def cim_matmul_fused(x_int: torch.Tensor, cells: torch.Tensor, cfg: CIMConfig, shift: torch.Tensor | None,
                     generator: torch.Generator | None, table_cache: dict | None) -> torch.Tensor:
    """Same contract as :func:`nn.engine.cim_matmul` (CPU only): y [B, N] for integer inputs [B, K]."""
    if cfg.quant.input_mode == "multilevel":
        return _run_dense(lambda a, b: x_int[a:b], x_int.shape[0], 1, cells, cfg, shift, generator, table_cache,
                          x_int.dtype)
    tiles = math.ceil(cells.shape[2] / cfg.array.rows)
    pad = tiles * cfg.array.rows - x_int.shape[1]
    xw = pack_rows(_input_bits(torch.nn.functional.pad(x_int, (0, pad)) if pad else x_int, cfg), tiles,
               cfg.array.rows, cfg.quant.input_bits)
    return _run(xw, cells, cfg, shift, generator, table_cache, x_int.dtype)


def conv_fused(x_int: torch.Tensor, cells: torch.Tensor, cfg: CIMConfig, shift: torch.Tensor | None,
               generator: torch.Generator | None, table_cache: dict | None, kernel: tuple[int, int],
               stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """A convolution on the crossbars, y [B, N, Ho, Wo], for integer inputs [B, C, H, W]: the windows are
    bit-packed straight from the input (no im2col tensor), rows in F.unfold's (channel, ky, kx) order;
    multi-level inputs are unfolded a few images at a time for the matmul."""
    b, _, h, w = x_int.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if cfg.quant.input_mode == "multilevel":
        n_pos = ho * wo

        def windows(start: int, stop: int) -> torch.Tensor:  # rows start..stop-1, whole images
            u = torch.nn.functional.unfold(x_int[start // n_pos:stop // n_pos], kernel, dilation, padding, stride)
            return u.transpose(1, 2).reshape(-1, u.shape[1])

        y = _run_dense(windows, b * n_pos, n_pos, cells, cfg, shift, generator, table_cache, x_int.dtype)
    else:
        rows = cfg.array.rows
        tiles = math.ceil(cells.shape[2] / rows)
        v = _input_bits(x_int, cfg)
        codes = np.ascontiguousarray(v.to(torch.uint8 if cfg.quant.input_bits <= 8 else torch.int32).numpy())
        xw = pack_windows(codes, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo), tiles, rows, cfg.quant.input_bits)
        y = _run(xw, cells, cfg, shift, generator, table_cache, x_int.dtype)  # [B * Ho * Wo, N]
    return y.reshape(b, ho * wo, -1).transpose(1, 2).reshape(b, -1, ho, wo)


def _int8_matmul(cfg: CIMConfig) -> bool:
    """True when multi-level partial sums can come from torch's int8 matmul: drives of at most 8 bits (0..255
    read as x - 128 plus 128 times the column's cell sum), cells of at most 7 bits, sums within int32."""
    return (_INT_MM and cfg.quant.input_bits <= 8 and cfg.array.cell_bits <= 7
            and cfg.array.rows * 255 * 127 < 2**31)


def _int_mm_works() -> bool:
    """torch._int_mm (int8 x int8 -> int32) runs on this CPU build."""
    try:
        a = torch.ones((2, 3), dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, a.T.contiguous()), torch.full((2, 2), 3, dtype=torch.int32)))
    except (AttributeError, RuntimeError, NotImplementedError):  # pragma: no cover - older or other builds
        return False


_INT_MM = _int_mm_works()


def _input_bits(x_int: torch.Tensor, cfg: CIMConfig) -> torch.Tensor:
    """The bit pattern the rows are driven with: two's complement for signed inputs."""
    return torch.remainder(x_int, 2**cfg.quant.input_bits) if cfg.quant.input_signed else x_int


def _programmed(cells: torch.Tensor, cfg: CIMConfig, table_cache: dict | None, dense: bool) -> tuple:
    """The crossbars' weights in the kernels' layout: bit-packed (wp, wm) for the popcount kernels, the
    [T, rows, C] matmul operand for multi-level inputs. Kept in ``table_cache`` while the layer passes the
    same ``cells`` object (its cells cache hands out one object per programmed weight set), so a chip that is
    read many times (attacks, evaluations) is programmed once."""
    array = cfg.array
    key = (dense, array.rows, array.cell_bits, array.signed_psum, array.xnor, cfg.psum_range, cfg.quant.input_bits,
           cfg.quant.input_signed, dense and _int8_matmul(cfg))
    if table_cache is not None and table_cache.get("programmed_cells") is cells \
            and table_cache.get("programmed_key") == key:
        return table_cache["programmed"]
    _, _, k, n = cells.shape
    tiles, rows = math.ceil(k / array.rows), array.rows
    padded = torch.nn.functional.pad(cells, (0, 0, 0, tiles * rows - k)) if tiles * rows > k else cells
    out: tuple
    if dense:
        if array.signed_psum:
            padded = (padded[:, 0] - padded[:, 1]).unsqueeze(1)
        cols = padded.shape[0] * padded.shape[1] * n
        w = padded.detach().reshape(-1, tiles, rows, n).permute(1, 2, 0, 3).reshape(tiles, rows, cols)
        if _int8_matmul(cfg):  # 8-bit drives, cells of at most 7 bits: exact int8 x int8 -> int32 products
            wi = w.to(torch.int8).contiguous()
            offset = cfg.quant.input_bits == 8 and not cfg.quant.input_signed  # drives 0..255 are read as x - 128
            out = (wi, 128 * wi.sum(1, dtype=torch.int64) if offset else None)
        else:
            lo, hi = cfg.psum_range
            out = (w.to(torch.float32 if max(-lo, hi) < 2**24 else torch.float64).contiguous(), None)
    else:
        plus, minus = _columns(padded, array.signed_psum)
        wp = pack_rows(plus, tiles, rows, array.cell_bits).transpose(1, 2, 3, 0).copy()  # [T, cell bits, words, C]
        wm = (pack_rows(minus, tiles, rows, array.cell_bits).transpose(1, 2, 3, 0).copy() if minus is not None
              else np.zeros((1, 1, 1, 1), np.uint64))
        ssum = np.zeros((1, 1), np.int64)
        if array.xnor and minus is not None:  # each tile's column weight sum S (ArrayConfig.xnor)
            ssum = (plus - minus).to(torch.int64).reshape(-1, tiles, rows).sum(-1).T.contiguous().numpy()
        out = (wp, wm, minus is not None, ssum)
    if table_cache is not None:
        table_cache.update(programmed_cells=cells, programmed_key=key, programmed=out)
    return out


def _prepare(cells: torch.Tensor, cfg: CIMConfig, shift: torch.Tensor | None, generator: torch.Generator | None,
             table_cache: dict | None) -> tuple[int, tuple, tuple]:
    """(ADC columns, the kernels' readout arguments from ``lo`` to ``seed``, and (cuts, s_lo) for the
    cut-table kernels)."""
    adc, array = cfg.adc, cfg.array
    n_slices, _, k, n = cells.shape
    tiles = math.ceil(k / array.rows)
    n_pol = 1 if array.signed_psum else 2
    cols = n_slices * n_pol * n
    lo, hi = cfg.psum_range
    thr_t, lev_t, step = adc_tables(adc, lo, hi, "cpu", torch.float64)
    slice_w = 2.0 ** (array.cell_bits * np.arange(n_slices))
    sign = np.array([1.0, -1.0][:n_pol])
    colw = np.broadcast_to((slice_w[:, None, None] * sign[None, :, None]), (n_slices, n_pol, n)).reshape(-1).copy()
    flat_shift = None if shift is None else shift.detach().reshape(tiles, cols, -1).to(torch.float64)
    mode, lut, thr, code0, cdf, cuts, s_lo = _readout(cfg, thr_t, lev_t, step, flat_shift, tiles, cols, colw,
                                                      shift, table_cache)
    # a uniform scheme's unshifted codes are computed: the threshold count starts there and steps
    first = 0 if lo >= 0 else -(2**adc.bits // 2)
    qstep = np.array([step if adc.thresholds is None else 0.0, float(first)])
    noisy = adc.reads_noise and not adc.noise_mean
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if noisy else 0
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    return cols, (lo, mode, lut, thr, code0, code0.shape[2] > 1, qstep, np.ascontiguousarray(lev_t.numpy()), colw,
                         float(adc.noise_sigma) if noisy else 0.0, cdf, np.uint64(seed)), (cuts, s_lo)


def _run(xw: np.ndarray, cells: torch.Tensor, cfg: CIMConfig, shift: torch.Tensor | None,
         generator: torch.Generator | None, table_cache: dict | None, dtype: torch.dtype) -> torch.Tensor:
    """Read packed inputs ``xw`` [M, T, planes, words] through the crossbars of ``cells`` [S, 2, K, N]."""
    quant = cfg.quant
    n = cells.shape[3]
    cols, rd, cut = _prepare(cells, cfg, shift, generator, table_cache)
    wp, wm, signed, ssum = _programmed(cells, cfg, table_cache, dense=False)
    xnor = cfg.array.xnor
    bitw_int = 2 ** np.arange(quant.input_bits, dtype=np.int64)
    if quant.input_signed:
        bitw_int[-1] = -bitw_int[-1]
    lo, mode, lut, thr, code0, walk, qstep, lev, colw, sigma, cdf, seed = rd
    out = np.empty((xw.shape[0], n), np.float64)
    serial = quant.input_mode == "bit_serial"
    if mode == MODE_CUT_COLUMNS:
        fused_columns.kernel_cuts_columns(xw, wp, wm, signed, xnor, ssum, bitw_int, n, lo, thr, lev, colw, sigma, cdf,
                                          seed, *cut, lut, fused_columns.BLOCK,
                                          fused_columns.splits(xw.shape[0], fused_columns.BLOCK, n,
                                                               numba.get_num_threads()), out)  # type: ignore[call-arg]
    elif mode == MODE_CUTS:
        _kernel_cuts(xw, wp, wm, signed, xnor, ssum, serial, bitw_int, n, lo, thr, lev, colw, sigma, cdf, seed,
                     *cut, out)  # type: ignore[call-arg]
    else:
        skip_zero = sigma == 0 and not xnor  # (an XNOR array's all-zero plane reads -S, not 0)
        zero = _zero_readings(mode, lo, lut, thr, code0, walk, qstep, lev, colw, cdf) if skip_zero else np.zeros((1, 1))
        _kernel(xw, wp, wm, signed, xnor, ssum, serial, skip_zero, zero, bitw_int.astype(np.float64), bitw_int, n,
                *rd, out)  # type: ignore[call-arg]
    y = torch.from_numpy(out)
    if xnor:
        y = xnor_periphery(y, cells[:, 0] - cells[:, 1], torch.from_numpy(bitw_int.astype(np.float64)),
                           2.0 ** (cfg.array.cell_bits * torch.arange(cells.shape[0], dtype=torch.float64)))
    return y.to(dtype)


def _run_dense(rows_of: Callable[[int, int], torch.Tensor], n_rows: int, align: int, cells: torch.Tensor,
               cfg: CIMConfig, shift: torch.Tensor | None, generator: torch.Generator | None,
               table_cache: dict | None, dtype: torch.dtype) -> torch.Tensor:
    """Multi-level inputs: the partial sums of every tile come from a float matmul (exact: integers below
    2^24 in float32, else float64), ``align``-row chunks of ``rows_of(start, stop)`` [m, K] at a time, and are
    read by :func:`_kernel_dense`. A multi-level read has one plane of many levels: the popcount engine would
    need one popcount per input bit, the matmul one multiply-add per row."""
    array = cfg.array
    n = cells.shape[3]
    cols, rd, cut = _prepare(cells, cfg, shift, generator, table_cache)
    lo, mode, _, thr, _, _, _, lev, colw, sigma, cdf, seed = rd
    w, offset = _programmed(cells, cfg, table_cache, dense=True)
    poff = np.zeros((w.shape[0], cols), np.int64) if offset is None else offset.numpy()
    buckets = _buckets(cfg, mode, thr, lev, table_cache)
    tiles, rows = w.shape[0], array.rows
    k = tiles * rows
    m = max(align, cfg.runtime.chunk_elements // (tiles * cols) // align * align)
    out = np.empty((n_rows, n), np.float64)
    for start in range(0, n_rows, m):
        x = rows_of(start, min(start + m, n_rows)).detach()
        if x.shape[1] < k:
            x = torch.nn.functional.pad(x, (0, k - x.shape[1]))
        if w.dtype == torch.int8:  # one int8 matmul per tile (VNNI where the CPU has it), partial sums int32
            xt = (x - 128 if offset is not None else x).to(torch.int8).view(-1, tiles, rows)
            ps_t = torch.empty((tiles, xt.shape[0], cols), dtype=torch.int32)
            for t in range(tiles):
                torch._int_mm(xt[:, t], w[t], out=ps_t[t])
            ps = ps_t.numpy()
        else:
            ps = torch.bmm(x.to(w.dtype).view(-1, tiles, rows).transpose(0, 1), w).numpy()  # [T, m, C]
        if mode == MODE_CUTS:
            _kernel_dense_cuts(ps, poff, start, cfg.quant.input_bits, n, lo, thr, lev, colw, sigma, cdf, seed, *cut,
                               out[start:start + ps.shape[1]])  # type: ignore[call-arg]
        else:
            _kernel_dense(ps, poff, start, cfg.quant.input_bits, n, *buckets, *rd,  # type: ignore[call-arg]
                          out[start:start + ps.shape[1]])
    return torch.from_numpy(out).to(dtype)


def _buckets(cfg: CIMConfig, mode: int, thr: np.ndarray, lev: np.ndarray, table_cache: dict | None
             ) -> tuple[np.ndarray, int, np.ndarray]:
    """(bucket table, its shift or -1 where none is used, the levels with a 0.0 appended) of a noise-free
    threshold readout (:mod:`nn.fused_buckets`); kept in ``table_cache`` with the thresholds it was built from."""
    lo, hi = cfg.psum_range
    none = np.zeros((1, 1, 1), np.uint16), -1, np.zeros(1)
    if mode != MODE_THRESHOLDS or cfg.adc.noise_sigma > 0:
        return none
    if table_cache is not None and table_cache.get("buckets_thr") is thr:
        return table_cache["buckets"]
    shift = fused_buckets.shift_for(thr)
    out = none
    if fused_buckets.usable(thr, lo, hi, shift):
        out = fused_buckets.bucket_table(thr, lo, hi, shift), shift, np.append(lev, 0.0)
    if table_cache is not None:
        table_cache.update(buckets_thr=thr, buckets=out)
    return out


def _readout(cfg: CIMConfig, thr: torch.Tensor, lev: torch.Tensor, step: float, flat_shift: torch.Tensor | None,
             tiles: int, cols: int, colw: np.ndarray, shift: torch.Tensor | None, table_cache: dict | None
             ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(mode, lut, thresholds, code0, cdf, cuts, s_lo) of the kernel; unused ones are 1-element placeholders.

    Noise free: a lookup table per (tile, column, partial sum) where it fits, else a count of sorted thresholds
    (a SAR's search is turned into its equivalent sorted thresholds once per call,
    :func:`nn.adc.sar_effective_thresholds`). Noisy: cut tables (:mod:`nn.fused_noise`) for a measured noise
    table, and for Gaussian noise up to 0.6 of the threshold spacing where the table fits (a chip's per-column
    cuts of bit-serial readings laid out column by column for :mod:`nn.fused_columns`); wider Gaussian noise
    counts thresholds from each partial sum's noise-free code ``code0`` [T, C, n_p] (or bisects where that
    table is too large).
    """
    adc = cfg.adc
    lo, hi = cfg.psum_range
    key = ("fused", cfg, tiles, cols, None if shift is None else (shift._version, tuple(shift.shape)))
    if table_cache is not None and table_cache.get("fused_key") == key and table_cache.get("fused_shift") is shift:
        return table_cache["fused_tables"]
    empty3, empty2 = np.zeros((1, 1, 1)), np.zeros((1, 1))
    no_code0, no_cuts = np.zeros((1, 1, 1), np.int16), np.zeros((1, 1, 1, 2), np.uint64)
    small = tiles * cols * (hi - lo + 1) <= _LUT_MAX_ENTRIES
    serial = _COLUMN_CUTS and cfg.quant.input_mode == "bit_serial"  # (nn.fused_columns reads bit-serial cuts)
    in_c = serial and fused_columns.SIMD and fused_columns.fits_int16((lo, hi))  # (nn/_simd.c may read them)
    tables: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]
    if adc.noise_mean:  # the expected level of every partial sum, read like a noise-free table
        if not small:
            raise CIMConfigError(f"noise_mean needs a lookup table of every partial sum, and this layer's ({tiles} "
                                 f"tiles x {cols} columns x {hi - lo + 1} sums) is too large: use fewer rows")
        table = mean_lookup_tables(adc, thr, lev, flat_shift, tiles, cols, lo, hi).numpy()
        tables = MODE_LUT, np.ascontiguousarray(table * colw[None, :, None]), empty3, no_code0, empty2, no_cuts, lo
    elif adc.noise_table is not None:
        cdf = torch.tensor(adc.noise_table, dtype=torch.float64).cumsum(-1)[:, :-1].contiguous()
        median = torch.searchsorted(cdf, torch.full((cdf.shape[0], 1), 0.5, dtype=cdf.dtype), right=True)
        ends = torch.ones(cdf.shape[0], 1, dtype=cdf.dtype)
        cdf_padded = np.ascontiguousarray(torch.cat([-ends, cdf, 2 * ends], -1).numpy())
        med = median.reshape(-1).numpy()
        columns, col_tables, cuts = fused_columns.plan(fused_noise.table_cuts(cdf_padded, med), False,
                                                       fused_noise.wide_table(cdf_padded, med) if in_c else None)
        tables = MODE_CUT_COLUMNS if columns else MODE_CUTS, col_tables, empty3, no_code0, cdf_padded, cuts, lo
    elif adc.noise_sigma == 0 and small:
        table = lookup_tables(adc, thr, lev, step, flat_shift, tiles, cols, lo, hi).numpy()
        tables = MODE_LUT, np.ascontiguousarray(table * colw[None, :, None]), empty3, no_code0, empty2, no_cuts, lo
    else:
        t = thr.expand(tiles, cols, -1) if flat_shift is None else thr + flat_shift
        if adc.kind == "sar" and flat_shift is not None:  # (unshifted thresholds are sorted: both read alike)
            t = sar_effective_thresholds(t)
        t = torch.sort(t, -1).values
        inf = torch.full((tiles, cols, 1), math.inf, dtype=t.dtype)
        padded = torch.cat([-inf, t, inf], -1).numpy()
        sigma = float(adc.noise_sigma)
        spacing = float(torch.diff(thr).min()) if thr.numel() > 1 else math.inf
        if sigma > 0:
            # no offsets: every column reads alike, one row of cuts serves them all
            cut_thr = np.ascontiguousarray(padded[:1, :1] if flat_shift is None else padded)
            s_lo, n_s = fused_noise.gaussian_range(cut_thr, sigma, lo, hi)
            if sigma <= 0.6 * spacing and cut_thr.shape[0] * cut_thr.shape[1] * n_s <= fused_noise.MAX_ENTRIES:
                # per-column cuts of bit-serial readings are read column by column, laid out for it
                by_column = serial and flat_shift is not None
                cuts = fused_noise.gaussian_cuts(cut_thr, s_lo, n_s, sigma, by_column)
                simd = in_c and fused_columns.takes(by_column, cut_thr.shape[0], cut_thr.shape[1], n_s)
                wide = fused_noise.wide_gaussian(cut_thr, s_lo, n_s, sigma) if simd else None
                columns, col_tables, cuts = fused_columns.plan(cuts, by_column, wide)  # (in the lookup table's slot)
                tables = MODE_CUT_COLUMNS if columns else MODE_CUTS, col_tables, cut_thr, no_code0, empty2, cuts, s_lo
                if table_cache is not None:
                    table_cache.update(fused_key=key, fused_tables=tables, fused_shift=shift)
                return tables
        code0 = no_code0
        if sigma > 0 and small:
            grid = torch.arange(lo, hi + 1, dtype=t.dtype).expand(tiles, cols, -1).contiguous()
            code0 = torch.searchsorted(t.contiguous(), grid, right=True).to(torch.int16).numpy()
        tables = MODE_THRESHOLDS, empty3, padded, code0, empty2, no_cuts, lo
    if table_cache is not None:
        table_cache.update(fused_key=key, fused_tables=tables, fused_shift=shift)
    return tables


def describe() -> dict[str, Any]:
    """What the fused engine runs on (for benchmark reports)."""
    if not AVAILABLE:
        return {"fused": False}
    return {"fused": True, "numba": numba.__version__, "threads": numba.get_num_threads()}
