"""Bit-packing of the fused engine's inputs and weights (numba): bit j of word w of a plane is row 64 w + j.

Rows of a tile are packed into ceil(rows / 64) uint64 words per bit-plane; a layer's input [M, K] becomes
[M, tiles, planes, words], and a convolution's windows are packed straight from the input [B, C, H, W] in
F.unfold's row order (channel, ky, kx), with no im2col tensor.
"""

from __future__ import annotations

import numpy as np
import torch

from nn._numba_prims import AVAILABLE

_BLOCK = 16  # rows per parallel block of the window packer (one buffer per block)

if AVAILABLE:
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def _pack_rows(v, tiles, rows, nbits):
        """Bit-pack non-negative integers ``v`` [M, tiles * rows] into [M, tiles, nbits, words] uint64
        (bit j of word w = row 64 w + j); branch-free inner loop."""
        m_rows = v.shape[0]
        words = (rows + 63) // 64
        out = np.zeros((m_rows, tiles, nbits, words), np.uint64)
        for m in prange(m_rows):
            for t in range(tiles):
                for w in range(words):
                    count = min(64, rows - w * 64)
                    first = t * rows + w * 64
                    for b in range(nbits):
                        acc = np.uint64(0)
                        for j in range(count):
                            acc |= np.uint64((v[m, first + j] >> b) & 1) << np.uint64(j)
                        out[m, t, b, w] = acc
        return out

    @njit(parallel=True, cache=True)
    def _pack_windows(v, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, tiles, rows, nbits):
        """Bit-pack the convolution windows of ``v`` [B, C, H, W] (non-negative integer codes) into
        [B * ho * wo, tiles, nbits, words]: row k = (c, i, j) in F.unfold's order, zero padding outside."""
        batch, chans, height, width = v.shape
        words = (rows + 63) // 64
        out = np.zeros((batch * ho * wo, tiles, nbits, words), np.uint64)
        for m in prange(batch * ho * wo):
            b = m // (ho * wo)
            oy = (m // wo) % ho
            ox = m % wo
            k = 0
            for c in range(chans):
                for i in range(kh):
                    y = oy * sh - ph + i * dh
                    for j in range(kw):
                        x = ox * sw - pw + j * dw
                        if 0 <= y < height and 0 <= x < width:
                            code = v[b, c, y, x]
                            if code != 0:
                                t = k // rows
                                r = k - t * rows
                                sh_r = np.uint64(r & 63)
                                for p in range(nbits):
                                    out[m, t, p, r >> 6] |= np.uint64((code >> p) & 1) << sh_r
                        k += 1
        return out

    @njit(parallel=True, cache=True)
    def _pack_windows_u8(vp, kh, kw, sh, sw, dh, dw, ho, wo, tiles, rows, nbits):
        """:func:`_pack_windows` for 8-bit codes, the same output, from ``vp`` [B, C, H + 2 ph, W + 2 pw] (uint8,
        zero-padded): per row the window's bytes are copied to a buffer laid out tile by tile (each tile padded
        to whole words), then each 64-row word of each plane is taken from eight 8-byte lanes, bit p of every
        byte gathered by one multiply: ((x >> p) & 0x01..01) * 0x0102..80 >> 56. (The bit-by-bit packer, a
        read-modify-write per plane and byte behind a data-dependent branch, cost 5.5 s of a 20.7 s
        DenseNet-40 chip forward; this one ~2.2 s.)"""
        batch, chans = vp.shape[0], vp.shape[1]
        words = (rows + 63) // 64
        span = words * 64
        m_rows = batch * ho * wo
        n_k = chans * kh * kw
        where = np.empty(n_k, np.int64)  # buffer byte of window row k (row k = (c, i, j), F.unfold's order)
        for k in range(n_k):
            where[k] = (k // rows) * span + k % rows
        out = np.empty((m_rows, tiles, nbits, words), np.uint64)
        ones, magic = np.uint64(0x0101010101010101), np.uint64(0x0102040810204080)
        for blk in prange((m_rows + _BLOCK - 1) // _BLOCK):
            buf = np.zeros(tiles * span, np.uint8)  # bytes past a tile's rows (and past the window) stay 0
            lanes = buf.view(np.uint64)
            for m in range(blk * _BLOCK, min((blk + 1) * _BLOCK, m_rows)):
                b = m // (ho * wo)
                y0 = ((m // wo) % ho) * sh
                x0 = (m % wo) * sw
                k = 0
                for c in range(chans):
                    for i in range(kh):
                        line = vp[b, c, y0 + i * dh]
                        for j in range(kw):
                            buf[where[k]] = line[x0 + j * dw]
                            k += 1
                for t in range(tiles):
                    for w in range(words):
                        base = (t * span + w * 64) >> 3
                        for p in range(nbits):
                            acc = np.uint64(0)
                            for q in range(8):
                                acc |= (((lanes[base + q] >> np.uint64(p)) & ones) * magic >> np.uint64(56)) \
                                    << np.uint64(8 * q)
                            out[m, t, p, w] = acc
        return out


def pack_rows(v: torch.Tensor, tiles: int, rows: int, nbits: int) -> np.ndarray:
    dt = torch.uint8 if nbits <= 8 else torch.int32
    return _pack_rows(np.ascontiguousarray(v.to(dt).numpy()), tiles, rows, nbits)


def pack_windows(codes: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], out_hw: tuple[int, int], tiles: int, rows: int, nbits: int) -> np.ndarray:
    """The conv windows of non-negative integer codes [B, C, H, W] bit-packed into [B * ho * wo, tiles, nbits,
    words]: 8-bit codes through the byte-lane packer, wider ones bit by bit."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = kernel, stride, padding, dilation, out_hw
    if codes.dtype == np.uint8:
        padded = np.pad(codes, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else codes
        return _pack_windows_u8(padded, kh, kw, sh, sw, dh, dw, ho, wo, tiles, rows, nbits)
    return _pack_windows(codes, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, tiles, rows, nbits)
