"""The CIM engine: integer activations x integer weights through tiled crossbars, bit-serial inputs and ADCs.

Work: the layer input's rows are processed in chunks (``RuntimeConfig.chunk_elements`` bounds one chunk's
partial sums, so memory does not grow with batch x tiles x bit-planes). Per chunk, one batched matmul
covers every input bit-plane, row tile, weight-cell slice and polarity at once; then the elementwise ADC
and the shift-and-add over bit-planes, slices, polarities and tiles. No Python loop over tiles, kernel
positions, channels or bit-planes.

Noise-free readings go through per-physical-column lookup tables (the ADC output of every possible integer
partial sum, with the chip's shifted thresholds and the column's digital weight folded in); the matmul
itself computes the flat table index, through one extra constant input row whose weight is the column's
table offset. Noisy readings compare against the (shifted) thresholds directly.

Signed weights use differential columns: w = w+ - w-, each non-negative and sliced into cells of
``cell_bits``; by default the positive and negative columns are read by their own ADCs and subtracted
digitally (every partial sum non-negative, as a current-sensing ADC reads it; a zero weight is two off
cells; twice the columns). An offset-binary scheme would need a reference column per tile and a
subtraction before the ADC. With ``ArrayConfig.signed_psum`` the ADC reads the pair's difference instead, and
with ``ArrayConfig.xnor`` as well the input bits drive +-1 (XNOR-SRAM rows): the ADC reads sum (2x - 1) w and
:func:`nn.adc.xnor_periphery` adds each tile's weight sum back.
"""

from __future__ import annotations

import math

import torch

from nn import fused
from nn.adc import (
    adc_read,
    adc_tables,
    cdf_keys,
    lookup_tables,
    mean_lookup_tables,
    noise_table_cdf,
    sample_codes,
    sar_effective_thresholds,
    xnor_periphery,
)
from nn.config import CIMConfig, CIMConfigError

_LUT_MAX_ELEMENTS = 2**26  # table entries per layer (256 MiB in float32)
_FLOAT32_EXACT = 2**24  # table indices are computed by the matmul; float32 holds integers below 2^24 exactly


def _exact_ints(dt: torch.dtype) -> int:
    """Integers below this are exact in ``dt`` (the matmul computes table indices in that dtype)."""
    return 2**53 if dt == torch.float64 else _FLOAT32_EXACT if dt == torch.float32 else 0


def weight_slices(weight_bits: int, cell_bits: int) -> int:
    """Cells per weight magnitude."""
    mag_bits = 1 if weight_bits == 1 else weight_bits - 1
    return math.ceil(mag_bits / cell_bits)


def weight_cells(w_int: torch.Tensor, weight_bits: int, cell_bits: int) -> torch.Tensor:
    """Cells [S, 2, K, N] (slice, polarity +/-) of integer weights ``w_int`` [N, K]; values 0..2^cell_bits-1."""
    return magnitude_cells(torch.stack([torch.relu(w_int), torch.relu(-w_int)]), weight_bits, cell_bits)


def magnitude_cells(mags: torch.Tensor, weight_bits: int, cell_bits: int) -> torch.Tensor:
    """Cells [S, 2, K, N] of the differential magnitudes ``mags`` [2, N, K] (w+ and w-, each >= 0). Canonical
    weights have one of the two zero; after bit flips both may hold bits (w = w+ - w-), and the columns read
    what they hold."""
    n_slices = weight_slices(weight_bits, cell_bits)
    base = 2**cell_bits
    cells = [torch.remainder(torch.div(mags, base**s, rounding_mode="floor"), base) for s in range(n_slices)]
    return torch.stack(cells).transpose(-1, -2).contiguous()  # [S, 2, K, N]


def _chunk_forward(xt: torch.Tensor, w: torch.Tensor, bit_w: torch.Tensor, col_w: torch.Tensor,
                   lut: torch.Tensor | None, srt: torch.Tensor | None, thr: torch.Tensor, lev: torch.Tensor,
                   noise: torch.Tensor | None, adc_cfg, step: float, xnor: bool) -> torch.Tensor:
    """Output [m, C] of one chunk of input rows ``xt`` [T, m, R] (integer-valued floats).

    ``w`` [T, R (+1), C] weight cells (plus the table-offset row when ``lut`` [T * C * n_p] is given);
    ``bit_w`` [P] the digital weight of each input plane (P = 1 for multi-level inputs); ``col_w`` [C]
    each column's digital weight (slice significance x polarity sign), already folded into ``lut``. Without a
    table, ``srt`` holds the sorted (shifted) thresholds ([n] shared, or [T, C, n] per physical column) that a
    reading counts (:func:`count_sorted`), or is None for a uniform unshifted ADC (closed form).
    """
    psum = torch.bmm(_planes(xt, bit_w.shape[0], lut is not None, xnor), w)  # [T, P * m, C]
    if lut is not None:
        return _lut_readout(psum, lut, bit_w)
    if noise is not None:
        psum = psum + noise
    if srt is None:
        return _shift_add(adc_read(psum, adc_cfg, thr, lev, step, None) * col_w, bit_w)
    return _shift_add(lev[count_sorted(psum, srt)] * col_w, bit_w)


def count_sorted(psum: torch.Tensor, srt: torch.Tensor) -> torch.Tensor:
    """Codes [T, M, C]: the number of thresholds at or below each reading of ``psum`` [T, M, C], by one binary
    search per reading in the sorted thresholds ``srt`` ([n], or [T, C, n] per column). This is the Flash ones
    count (thresholds in any order) and, on thresholds from :func:`nn.adc.sar_effective_thresholds`, the SAR
    search: the same codes as :func:`nn.adc.adc_read`'s pass per threshold, in one pass."""
    if srt.dim() == 1:
        return torch.searchsorted(srt, psum, right=True)
    return torch.searchsorted(srt, psum.transpose(1, 2).contiguous(), right=True).transpose(1, 2)


def _tables(cfg: CIMConfig, shift: torch.Tensor | None, shape: tuple[int, int, int, int, int], dev: torch.device,
            dt: torch.dtype, table_cache: dict | None) -> tuple:
    """(thr, lev, step, col_w, lut, srt, cdf) of the reference readout: the ADC's thresholds and levels, each
    column's digital weight, and one of the lookup table (noise free, where it fits), the sorted (shifted)
    thresholds (noisy, or too large for a table) or the noise table's (CDF, search keys). Kept in
    ``table_cache`` for the config, device, dtype and layer shape, and for ``shift`` as the same object at the
    same version (rebuilt when it is modified in place, replaced or moved): on an accelerator nothing is
    rebuilt or copied from the host per forward."""
    adc = cfg.adc
    tiles, cols, n_slices, n_pol, n = shape
    exact = _exact_ints(dt)  # half precision: no tables, the threshold path below
    key = (cfg, dev, dt, shape, exact, None if shift is None else (shift._version, tuple(shift.shape)))
    if table_cache is not None and table_cache.get("key") == key and table_cache.get("shift") is shift:
        return table_cache["tables"]
    lo, hi = cfg.psum_range
    n_p = hi - lo + 1
    thr, lev, step = adc_tables(adc, lo, hi, dev, dt)
    slice_w = 2.0 ** (cfg.array.cell_bits * torch.arange(n_slices, device=dev, dtype=dt))
    sign = torch.tensor([1.0, -1.0][:n_pol], device=dev, dtype=dt)
    col_w = (slice_w[:, None, None] * sign[None, :, None]).expand(n_slices, n_pol, n).reshape(cols)
    flat_shift = None if shift is None else shift.reshape(tiles, cols, -1).to(dt)
    lut = srt = cdf = None
    noisy = adc.reads_noise
    fits = tiles * cols * n_p <= _LUT_MAX_ELEMENTS and cols * n_p < exact
    if adc.noise_mean:  # the expected level of every partial sum, read like a noise-free table
        if not fits:
            raise CIMConfigError(f"noise_mean needs a lookup table of every partial sum, and this layer's ({tiles} "
                                 f"tiles x {cols} columns x {n_p} sums, {dt}) is too large: use float32 or "
                                 "fewer rows")
        lut = mean_lookup_tables(adc, thr, lev, flat_shift, tiles, cols, lo, hi)
    elif adc.noise_table is not None:
        p_cum = noise_table_cdf(adc, dev, dt)
        cdf = (p_cum, cdf_keys(p_cum))
    elif not noisy and fits:
        lut = lookup_tables(adc, thr, lev, step, flat_shift, tiles, cols, lo, hi)
    if lut is not None:  # per-tile tables where a flat index would not be exact: indices stay below cols * n_p
        lut = lut * col_w[:, None]
        lut = lut.reshape(-1) if tiles * cols * n_p < exact else lut.reshape(tiles, -1)
    elif flat_shift is not None:
        t = thr + flat_shift
        srt = torch.sort(sar_effective_thresholds(t) if adc.kind == "sar" else t, -1).values.contiguous()
    elif adc.thresholds is not None:  # a custom scheme (strictly increasing), unshifted: one row for every column
        srt = thr
    tables = (thr, lev, step, col_w, lut, srt, cdf)
    if table_cache is not None:
        table_cache.update(key=key, tables=tables, shift=shift)  # holding shift keeps its identity unique
    return tables


def _lut_readout(psum: torch.Tensor, lut: torch.Tensor, bit_w: torch.Tensor) -> torch.Tensor:
    """Noise-free readout: ``psum`` [T, P * m, C] already holds each reading's table index, into the
    flat table ``lut`` [T * C * n_p] or, for very large layers, into its tile's row of ``lut`` [T, C * n_p]."""
    if lut.dim() == 1:
        return _shift_add(lut.take(psum.long()), bit_w)
    return _shift_add(torch.gather(lut.unsqueeze(1).expand(-1, psum.shape[1], -1), -1, psum.long()), bit_w)


def _planes(xt: torch.Tensor, n_planes: int, index_row: bool, xnor: bool = False) -> torch.Tensor:
    """Matmul input [T, P * m, R (+1)]: the input bit-planes stacked along the rows (P = 1: the levels
    themselves; ``xnor``: bits driven as +-1), plus the constant table-index row. Bits are cut with integer
    shifts (one pass)."""
    tiles, m, rows = xt.shape
    buf = xt.new_empty(tiles, n_planes, m, rows + int(index_row))
    if n_planes > 1:
        xi = xt.to(torch.uint8 if n_planes <= 8 else torch.int64)
        sh = torch.arange(n_planes, device=xt.device, dtype=xi.dtype).view(1, n_planes, 1, 1)
        buf[..., :rows] = (xi.unsqueeze(1) >> sh) & 1
    else:
        buf[..., :rows] = xt.unsqueeze(1)
    if xnor:
        buf[..., :rows].mul_(2).sub_(1)
    if index_row:
        buf[..., rows] = 1
    return buf.view(tiles, n_planes * m, -1)


def _shift_add(reading: torch.Tensor, bit_w: torch.Tensor) -> torch.Tensor:
    """Sum of weighted readings [T, P * m, C] over tiles and bit-planes: [m, C]."""
    tiles, pm, cols = reading.shape
    n_planes = bit_w.shape[0]
    per_plane = reading.view(tiles, n_planes, pm // n_planes, cols).sum(0)  # [P, m, C]
    return (per_plane * bit_w.view(n_planes, 1, 1)).sum(0)


def chunk_rows(tiles: int, n_planes: int, cols: int, chunk_elements: int) -> int:
    """Input rows per chunk so that one chunk's partial sums hold about ``chunk_elements`` values."""
    return max(1, chunk_elements // (tiles * n_planes * cols))


def _layout(x_int: torch.Tensor, cells: torch.Tensor, cfg: CIMConfig
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference path's view of one layer: (x_int [B, T * R] zero-padded to whole tiles, as the bit pattern the
    rows see (two's complement for signed inputs); cells [S, P, T * R, N] padded alike, the pair's difference
    (P = 1) with ``array.signed_psum``; w [T, R, C] every tile's rows against every (slice, polarity, column) at
    once, in x's dtype; slice_w [S] the slices' significance; bit_w [planes] each input plane's digital weight,
    the MSB negative for signed inputs (one plane of weight 1 for multi-level inputs))."""
    array, quant = cfg.array, cfg.quant
    n_slices, _, k, n = cells.shape
    rows, dev, dt = array.rows, x_int.device, x_int.dtype
    tiles = math.ceil(k / rows)
    pad = tiles * rows - k
    if pad:
        x_int = torch.nn.functional.pad(x_int, (0, pad))
        cells = torch.nn.functional.pad(cells, (0, 0, 0, pad))
    if array.signed_psum:
        cells = (cells[:, 0] - cells[:, 1]).unsqueeze(1)  # [S, 1, K, N]: the pair's difference
    n_pol = cells.shape[1]
    w = cells.reshape(n_slices * n_pol, tiles, rows, n).permute(1, 2, 0, 3).reshape(tiles, rows, -1).to(dt)
    slice_w = 2.0 ** (array.cell_bits * torch.arange(n_slices, device=dev, dtype=dt))
    if quant.input_mode == "bit_serial":
        bit_w = 2.0 ** torch.arange(quant.input_bits, device=dev, dtype=dt)
        if quant.input_signed:
            x_int = torch.remainder(x_int, 2**quant.input_bits)  # two's-complement bit pattern
            bit_w[-1] = -bit_w[-1]
    else:
        bit_w = torch.ones(1, device=dev, dtype=dt)
    return x_int, cells, w, slice_w, bit_w


def cim_matmul(x_int: torch.Tensor, cells: torch.Tensor, cfg: CIMConfig, shift: torch.Tensor | None = None,
               generator: torch.Generator | None = None, table_cache: dict | None = None) -> torch.Tensor:
    """y[B, N] = sum over bit-planes, tiles, slices, polarities of the ADC readings, shifted and added.

    Args:
        x_int: integer activations [B, K] (float dtype; two's complement when ``quant.input_signed``).
        cells: weight cells [S, 2, K, N] from :func:`weight_cells`.
        cfg: the layer's configuration.
        shift: per-physical-ADC threshold shifts [T, S, P, N, n_thr] in partial-sum units, or None.
        generator: RNG of the per-inference noise (used only when the ADC is noisy).
        table_cache: a dict owned by the caller (one per layer) that keeps the lookup tables between calls;
            they depend only on the config and the shifts (not on weights or inputs), and are rebuilt when
            ``shift`` is modified in place (its version counter), replaced, or moved.
    """
    if fused.usable(cfg, x_int):
        return fused.cim_matmul_fused(x_int, cells, cfg, shift, generator, table_cache)
    adc, array = cfg.adc, cfg.array
    x_int, cells, w, slice_w, bit_w = _layout(x_int, cells, cfg)
    n_slices, n_pol, _, n = cells.shape
    tiles, rows, cols = w.shape
    dev, dt = x_int.device, x_int.dtype
    lo, hi = cfg.psum_range
    thr, lev, step, col_w, lut, srt, cdf = _tables(cfg, shift, (tiles, cols, n_slices, n_pol, n), dev, dt,
                                                   table_cache)
    if lut is not None:
        n_p = hi - lo + 1
        flat = lut.dim() == 1
        tile_base = torch.arange(tiles, device=dev, dtype=dt)[:, None] * (cols * n_p if flat else 0)
        offset = (tile_base + torch.arange(cols, device=dev, dtype=dt) * n_p - lo).view(tiles, 1, cols)
        w = torch.cat([w, offset], 1)  # the constant input row turns each partial sum into its table index
    b = x_int.shape[0]
    n_planes = bit_w.numel()
    m = min(b, chunk_rows(tiles, n_planes, cols, cfg.runtime.chunk_elements))
    out = torch.empty(b, n, device=dev, dtype=dt)
    for start in range(0, b, m):
        xt = x_int[start:start + m].reshape(-1, tiles, rows).transpose(0, 1)  # [T, m, R]
        noise = None
        if adc.noise_sigma > 0 and lut is None:
            noise = adc.noise_sigma * torch.randn(tiles, n_planes * xt.shape[1], cols, generator=generator,
                                                  device=dev, dtype=dt)
        if cdf is not None:
            y = _table_chunk(xt, w, bit_w, col_w, cdf[0], cdf[1], lev, lo, generator, array.xnor)
        else:
            y = _chunk_forward(xt, w, bit_w, col_w, lut, srt, thr, lev, noise, adc, step, array.xnor)
        out[start:start + m] = y.reshape(-1, n_slices * n_pol, n).sum(1)
    if array.xnor:
        return xnor_periphery(out, cells[:, 0], bit_w, slice_w)
    return out


def reading_share(x_int: torch.Tensor, cells: torch.Tensor, cfg: CIMConfig, window: float = 0.0,
                  temperature: float = 0.0) -> torch.Tensor:
    """[B, N, T]: of every output's readings in row tile t (bit-planes x weight slices x polarities, each counted by
    its significance |plane weight x slice weight|), the share whose ideal partial sum lies within ``window`` of the
    ADC's threshold span [first threshold - window, last threshold + window] (static chip shifts not included).

    The gradient weight of a windowed straight-through estimator (:attr:`nn.config.QuantConfig.psum_ste_window`):
    a reading outside that span sits on the ADC's end level, and a small change of its partial sum does not move
    it, as a hard tanh passes no gradient outside [-1, 1]. Computed on the reference path (one batched matmul
    per chunk, the chip's own partial sums), without gradient.

    With ``temperature`` T > 0 instead (:attr:`nn.config.QuantConfig.psum_ste_smooth`), each reading counts by the
    slope of a soft staircase at its partial sum P, sum over thresholds t_k of h_k sigmoid'((P - t_k) / T) / T
    (h_k: the level step at t_k): the significance-weighted mean slope of the smooth readout a BPDA attacker
    differentiates in place of the hard one (Athalye et al., ICML 2018). It is no share: a slope can exceed 1."""
    if (window > 0) == (temperature > 0):
        raise ValueError("reading_share: give exactly one of window and temperature (> 0)")
    x_int, cells, w, slice_w, bit_w = _layout(x_int.detach(), cells, cfg)
    n_slices, n_pol, _, n = cells.shape
    tiles, rows, cols = w.shape
    dt = x_int.dtype
    thr, lev, _ = adc_tables(cfg.adc, *cfg.psum_range, x_int.device, dt)
    lo, hi = thr.min() - window, thr.max() + window  # (tensors: no host sync)
    rise = torch.diff(lev)  # the level step at each threshold
    bit_w = bit_w.abs()  # significance: a signed input's MSB plane counts as much as its weight
    col_w = slice_w.repeat_interleave(n_pol * n)  # [C]: (slice, polarity, column) order
    n_planes = bit_w.numel()
    total = bit_w.sum() * n_pol * slice_w.sum()  # every output column's total significance
    b = x_int.shape[0]
    m = min(b, chunk_rows(tiles, n_planes, cols, cfg.runtime.chunk_elements))
    out = torch.empty(b, n, tiles, device=x_int.device, dtype=dt)
    for start in range(0, b, m):
        xt = x_int[start:start + m].reshape(-1, tiles, rows).transpose(0, 1)  # [T, m, R]
        psum = torch.bmm(_planes(xt, n_planes, False, cfg.array.xnor), w)  # [T, P * m, C]
        if temperature > 0:
            inside = _soft_slope(psum, thr, rise, temperature) * col_w
        else:
            inside = ((psum >= lo) & (psum <= hi)).to(dt) * col_w
        per_plane = inside.view(tiles, n_planes, -1, cols) * bit_w.view(1, n_planes, 1, 1)
        share = per_plane.sum(1).view(tiles, -1, n_slices * n_pol, n).sum(2)  # [T, m, N]
        out[start:start + m] = (share / total).permute(1, 2, 0)
    return out


def _soft_slope(psum: torch.Tensor, thr: torch.Tensor, rise: torch.Tensor, temperature: float) -> torch.Tensor:
    """d/dP of the soft staircase sum_k rise_k sigmoid((P - thr_k) / T), one pass per threshold (memory: two
    partial-sum tensors)."""
    slope = torch.zeros_like(psum)
    for k in range(thr.numel()):
        s = torch.sigmoid((psum - thr[k]) / temperature)
        slope += rise[k] / temperature * s * (1 - s)
    return slope


def _table_chunk(xt: torch.Tensor, w: torch.Tensor, bit_w: torch.Tensor, col_w: torch.Tensor, cdf: torch.Tensor,
                 keys: torch.Tensor | None, lev: torch.Tensor, lo: int, generator: torch.Generator | None,
                 xnor: bool) -> torch.Tensor:
    """Measured-noise readout of one chunk: every reading is a code drawn from P(code | ideal psum) (one binary
    search per reading through ``keys``, :func:`nn.adc.cdf_keys`, where the dtype allows)."""
    psum = torch.bmm(_planes(xt, bit_w.shape[0], False, xnor), w)
    return _shift_add(lev[sample_codes(psum, cdf, lo, generator, keys)] * col_w, bit_w)
