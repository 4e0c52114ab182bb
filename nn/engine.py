"""The CIM engine: integer activations x integer weights through tiled crossbars, bit-serial inputs and ADCs.

Work: one dense batched matmul per input bit-plane over all row tiles and all weight-cell slices and
polarities at once, then the elementwise ADC, then shift-and-add. The only Python loop is over input
bit-planes (<= input_bits iterations), which also bounds peak memory to one bit-plane's partial sums.

Signed weights use differential columns: w = w+ - w-, each non-negative and sliced into cells of
``cell_bits``; positive and negative columns are read by their own ADCs and subtracted digitally. This
keeps every partial sum non-negative (what a current-sensing ADC reads) and makes a zero weight two off
cells, at the cost of twice the columns; an offset-binary scheme would need a reference column per tile.
"""

from __future__ import annotations

import math

import torch

from nn.config import ADCConfig, ArrayConfig, CIMConfigError


def weight_slices(weight_bits: int, cell_bits: int) -> int:
    """Cells per weight magnitude."""
    mag_bits = 1 if weight_bits == 1 else weight_bits - 1
    return math.ceil(mag_bits / cell_bits)


def weight_cells(w_int: torch.Tensor, weight_bits: int, cell_bits: int) -> torch.Tensor:
    """Cells [S, 2, K, N] (slice, polarity +/-) of integer weights ``w_int`` [N, K]; values 0..2^cell_bits-1."""
    n_slices = weight_slices(weight_bits, cell_bits)
    mags = torch.stack([torch.relu(w_int), torch.relu(-w_int)])  # [2, N, K]
    base = 2**cell_bits
    cells = [torch.remainder(torch.div(mags, base**s, rounding_mode="floor"), base) for s in range(n_slices)]
    return torch.stack(cells).transpose(-1, -2).contiguous()  # [S, 2, K, N]


def psum_max(array: ArrayConfig) -> float:
    """Largest partial sum a column can produce: every row on with the largest cell value."""
    return float(array.rows * (2**array.cell_bits - 1))


def adc_tables(adc: ADCConfig, array: ArrayConfig, device, dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(thresholds, levels, step) in partial-sum units; step converts table offsets (LSB) to partial sums."""
    if adc.thresholds is not None and adc.levels is not None:
        thr = torch.tensor(adc.thresholds, device=device, dtype=dtype)
        lev = torch.tensor(adc.levels, device=device, dtype=dtype)
        step = float(torch.diff(lev).abs().min()) if len(lev) > 1 else 1.0
        return thr, lev, step
    if adc.psum_max is not None:
        step = adc.psum_max / (2**adc.bits - 1)
    else:  # integer step >= 1: lossless whenever 2^bits - 1 covers the largest partial sum
        step = float(max(1, math.ceil(psum_max(array) / (2**adc.bits - 1))))
    codes = torch.arange(2**adc.bits, device=device, dtype=dtype)
    return (codes[:-1] + 0.5) * step, codes * step, step


def adc_read(psum: torch.Tensor, adc: ADCConfig, thr: torch.Tensor, lev: torch.Tensor, step: float,
             shift: torch.Tensor | None) -> torch.Tensor:
    """ADC output value for every partial sum.

    ``shift`` (broadcastable to psum.shape + [n_thresholds]) moves each threshold, partial-sum units.
    Uniform without shifts: closed form. Flash: code = number of thresholds at or below the partial sum
    (ones count, bubble-tolerant like the SPICE Flash). SAR: binary search over the thresholds.
    """
    uniform = adc.thresholds is None
    if shift is None and uniform:
        code = torch.clamp(torch.floor(psum / step + 0.5), 0, len(lev) - 1)
        return code * step
    t = thr if shift is None else thr + shift
    if adc.kind == "flash" or shift is None:
        # one pass per threshold: memory stays one partial-sum tensor (a [..., n_thr] compare would not)
        code = torch.zeros(psum.shape, dtype=torch.long, device=psum.device)
        for j in range(thr.numel()):
            code += psum >= t[..., j]
        return lev[code]
    n_thr = thr.numel()
    n_bits = int(math.log2(n_thr + 1))
    if 2**n_bits - 1 != n_thr:
        raise CIMConfigError(f"a SAR ADC needs 2^k - 1 thresholds, this scheme has {n_thr}")
    t = t.expand(*psum.shape, n_thr)
    code = torch.zeros_like(psum, dtype=torch.long)
    for bit in reversed(range(n_bits)):
        trial = code | (1 << bit)
        above = psum >= torch.gather(t, -1, (trial - 1).unsqueeze(-1)).squeeze(-1)
        code = torch.where(above, trial, code)
    return lev[code]


def _lookup_tables(adc: ADCConfig, thr: torch.Tensor, lev: torch.Tensor, step: float, shift: torch.Tensor | None,
                   tiles: int, cols: int, p_max: int, dtype: torch.dtype) -> torch.Tensor:
    """ADC output for every integer partial sum 0..p_max of every physical column: [T, C, p_max + 1]."""
    t = thr.expand(tiles, cols, -1) if shift is None else thr + shift.reshape(tiles, cols, -1)
    if adc.kind == "flash" or shift is None:
        # ones count: threshold j counts from the first integer p >= t_j on, so code(p) is a cumulative
        # histogram of those first integers (exactly the threshold loop, in O(n_thr + p_max) per column)
        first = torch.ceil(t).clamp(0, p_max + 1).long()
        hist = torch.zeros(tiles, cols, p_max + 2, dtype=torch.long, device=thr.device)
        hist.scatter_add_(-1, first, torch.ones_like(first))
        return lev[hist.cumsum(-1)[..., : p_max + 1]].to(dtype)
    grid = torch.arange(p_max + 1, device=thr.device, dtype=dtype).expand(tiles, cols, -1)
    return adc_read(grid, adc, thr, lev, step, shift.reshape(tiles, cols, 1, -1))


def cim_matmul(
    x_int: torch.Tensor,
    cells: torch.Tensor,
    adc: ADCConfig,
    array: ArrayConfig,
    input_bits: int,
    shift: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    signed: bool = False,
) -> torch.Tensor:
    """y[B, N] = sum over bit-planes, tiles, slices, polarities of the ADC readings, shifted and added.

    Args:
        x_int: unsigned integer activations [B, K] (float dtype).
        cells: weight cells [S, 2, K, N] from :func:`weight_cells`.
        shift: per-physical-ADC threshold shifts [T, S, 2, N, n_thr] in partial-sum units, or None.
        generator: RNG of the per-inference noise (used only when ``adc.noise_sigma > 0``).
        signed: inputs are two's complement; the MSB bit-plane is weighted -2^(input_bits-1).
    """
    n_slices, _, k, n = cells.shape
    rows = array.rows
    tiles = math.ceil(k / rows)
    pad = tiles * rows - k
    if pad:
        x_int = torch.nn.functional.pad(x_int, (0, pad))
        cells = torch.nn.functional.pad(cells, (0, 0, 0, pad))
    b = x_int.shape[0]
    # [T, R, S*2*N]: every tile's rows against every slice/polarity/column at once
    w = cells.reshape(n_slices * 2, tiles, rows, n).permute(1, 2, 0, 3).reshape(tiles, rows, n_slices * 2 * n)
    thr, lev, step = adc_tables(adc, array, x_int.device, x_int.dtype)
    sig = torch.tensor([1.0, -1.0], device=x_int.device, dtype=x_int.dtype)
    slice_w = (2.0 ** (array.cell_bits * torch.arange(n_slices, device=x_int.device))).to(x_int.dtype)
    combine = (slice_w[:, None] * sig[None, :]).reshape(1, 1, n_slices, 2, 1)
    if signed:
        x_int = torch.remainder(x_int, 2**input_bits)  # two's-complement bit pattern
    xt = x_int.reshape(b, tiles, rows).transpose(0, 1)  # [T, B, R]
    out = torch.zeros(b, n, device=x_int.device, dtype=x_int.dtype)
    lut = None
    p_max = int(psum_max(array))
    if adc.noise_sigma == 0 and (shift is not None or adc.thresholds is not None) and p_max <= 4096:
        # Noise-free partial sums are integers 0..p_max: every physical ADC is a lookup table over them,
        # built once per call (n_thr passes over a [T, S*2*N, p_max+1] grid) and read with one gather.
        lut = _lookup_tables(adc, thr, lev, step, shift, tiles, n_slices * 2 * n, p_max, x_int.dtype)
    for bit in range(input_bits):
        plane = torch.remainder(torch.div(xt, 2**bit, rounding_mode="floor"), 2)
        psum = torch.bmm(plane, w).reshape(tiles, b, n_slices, 2, n)
        if adc.noise_sigma > 0:
            noise = torch.randn(psum.shape, generator=generator, device=psum.device, dtype=psum.dtype)
            psum = psum + adc.noise_sigma * noise
        if lut is not None:
            idx = psum.reshape(tiles, b, -1, 1).long()
            reading = torch.gather(lut.unsqueeze(1).expand(tiles, b, -1, -1), -1, idx).reshape(psum.shape)
        else:
            s = None if shift is None else shift.unsqueeze(1)  # [T, 1, S, 2, N, n_thr]
            reading = adc_read(psum, adc, thr, lev, step, s)
        weight = -(2.0**bit) if signed and bit == input_bits - 1 else 2.0**bit
        out += weight * (reading * combine).sum(dim=(0, 2, 3))
    return out
