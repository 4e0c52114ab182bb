"""ADC models in partial-sum units: thresholds/levels, threshold readout, per-column lookup tables, noise tables.

Order of one reading, written down once: ideal integer partial sum -> per-inference noise (Gaussian
``noise_sigma``, or a draw from the measured table P(code | ideal partial sum)) -> comparison with the
thresholds, each moved by the chip's static shift -> output level of the code.
"""

from __future__ import annotations

import math

import torch

from nn.config import ADCConfig, CIMConfigError


def adc_tables(adc: ADCConfig, psum_lo: int, psum_hi: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(thresholds, levels, step) in partial-sum units; step converts table offsets (LSB) to partial sums.

    Uniform unsigned (``psum_lo == 0``): levels 0, step, ..., (2^bits - 1) step. Uniform signed: levels
    k * step for k = -2^(bits-1) .. 2^(bits-1) - 1 (two's-complement codes). Without ``adc.psum_max`` the
    step is the smallest integer >= 1 whose levels cover ``psum_hi``, so an ADC with enough bits reads
    every partial sum exactly. Thresholds lie halfway between levels.
    """
    if adc.thresholds is not None and adc.levels is not None:
        thr = torch.tensor(adc.thresholds, device=device, dtype=dtype)
        lev = torch.tensor(adc.levels, device=device, dtype=dtype)
        levels = adc.levels  # (from the config's floats: no device round trip on CUDA)
        step = min(abs(b - a) for a, b in zip(levels, levels[1:], strict=False)) if len(levels) > 1 else 1.0
        return thr, lev, step
    n = 2**adc.bits
    top = n - 1 if psum_lo >= 0 else max(1, n // 2 - 1)  # largest positive code
    step = adc.psum_max / top if adc.psum_max is not None else float(max(1, math.ceil(psum_hi / top)))
    first = 0 if psum_lo >= 0 else -(n // 2)
    codes = torch.arange(first, first + n, device=device, dtype=dtype)
    return (codes[:-1] + 0.5) * step, codes * step, step


def adc_read(psum: torch.Tensor, adc: ADCConfig, thr: torch.Tensor, lev: torch.Tensor, step: float,
             shift: torch.Tensor | None) -> torch.Tensor:
    """ADC output value for every partial sum.

    ``shift`` (broadcastable to psum.shape + [n_thresholds]) moves each threshold, partial-sum units.
    Uniform without shifts: closed form. Flash: code = number of thresholds at or below the partial sum
    (ones count, bubble-tolerant like the SPICE Flash). SAR: binary search over the thresholds.
    """
    if shift is None and adc.thresholds is None:
        code = torch.clamp(torch.floor((psum - lev[0]) / step + 0.5), 0, len(lev) - 1)
        return lev[0] + code * step
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


def sar_effective_thresholds(t: torch.Tensor) -> torch.Tensor:
    """Sorted thresholds [..., n] that a ones count reads like the SAR search over ``t`` [..., n] (each
    threshold already moved by its shift) reads: code_sar(v) == number of returned thresholds <= v, for all v.

    The SAR search is monotone in v (at the first comparison where two values part, the larger goes up) and
    right-continuous, stepping only at threshold values, so L_k = min{v : code(v) >= k} is the smallest
    threshold value whose own code is >= k (+inf where no value reaches k: a missing top code).
    """
    n = t.shape[-1]
    n_bits = int(math.log2(n + 1))
    if 2**n_bits - 1 != n:
        raise CIMConfigError(f"a SAR ADC needs 2^k - 1 thresholds, this scheme has {n}")
    x, _ = torch.sort(t, -1)
    code = torch.zeros(x.shape, dtype=torch.long, device=t.device)
    for bit in reversed(range(n_bits)):
        trial = code | (1 << bit)
        code = torch.where(x >= torch.gather(t, -1, trial - 1), trial, code)
    # codes along sorted x are non-decreasing: L_k is x at the first code >= k
    k = torch.arange(1, n + 1, device=t.device).expand(*t.shape[:-1], n).contiguous()
    first = torch.searchsorted(code.contiguous(), k)
    big = torch.full((*t.shape[:-1], 1), math.inf, dtype=t.dtype, device=t.device)
    return torch.gather(torch.cat([x, big], -1), -1, first)


def lookup_tables(adc: ADCConfig, thr: torch.Tensor, lev: torch.Tensor, step: float, shift: torch.Tensor | None,
                  tiles: int, cols: int, psum_lo: int, psum_hi: int) -> torch.Tensor:
    """ADC output for every integer partial sum psum_lo..psum_hi of every physical column: [T, C, n_p]."""
    n_p = psum_hi - psum_lo + 1
    t = thr.expand(tiles, cols, -1) if shift is None else thr + shift.reshape(tiles, cols, -1)
    if adc.kind == "flash" or shift is None:
        # ones count: threshold j counts from the first integer p >= t_j on, so code(p) is a cumulative
        # histogram of those first integers (exactly the threshold loop, in O(n_thr + n_p) per column)
        first = torch.ceil(t - psum_lo).clamp(0, n_p).long()
        hist = torch.zeros(tiles, cols, n_p + 1, dtype=torch.long, device=thr.device)
        hist.scatter_add_(-1, first, torch.ones_like(first))
        return lev[hist.cumsum(-1)[..., :n_p]]
    grid = torch.arange(psum_lo, psum_hi + 1, device=thr.device, dtype=thr.dtype).expand(tiles, cols, -1)
    return adc_read(grid, adc, thr, lev, step, shift.reshape(tiles, cols, 1, -1))


def mean_lookup_tables(adc: ADCConfig, thr: torch.Tensor, lev: torch.Tensor, shift: torch.Tensor | None,
                       tiles: int, cols: int, psum_lo: int, psum_hi: int) -> torch.Tensor:
    """Expected ADC output over the read noise for every integer partial sum psum_lo..psum_hi of every physical
    column: [T, C, n_p] (:attr:`nn.config.ADCConfig.noise_mean`).

    Gaussian noise: a reading's code is at least c exactly when the noisy sum reaches s_c, the c-th lowest
    effective threshold (Flash: the shifted thresholds sorted; SAR: :func:`sar_effective_thresholds`), so
    E[level | p] = lev_0 + sum_c (lev_c - lev_(c-1)) Phi((p - s_c) / sigma). Noise table: sum_c lev_c P(c | p)."""
    n_p = psum_hi - psum_lo + 1
    dev, f64 = thr.device, torch.float64
    lev64 = lev.to(f64)
    if adc.noise_table is not None:
        probs = torch.tensor(adc.noise_table, device=dev, dtype=f64)
        return (probs @ lev64).to(lev.dtype).expand(tiles, cols, n_p)
    t = thr.expand(tiles, cols, -1) if shift is None else thr + shift.reshape(tiles, cols, -1)
    if adc.kind == "sar" and shift is not None:
        t = sar_effective_thresholds(t)
    s = torch.sort(t.to(f64), -1).values
    grid = torch.arange(psum_lo, psum_hi + 1, device=dev, dtype=f64)
    rise = torch.diff(lev64)
    out = lev64[0].expand(tiles, cols, n_p).clone()
    for c in range(s.shape[-1]):  # one pass per threshold: memory stays one table
        out += rise[c] * torch.special.ndtr((grid - s[..., c:c + 1]) / adc.noise_sigma)
    return out.to(lev.dtype)


def noise_table_cdf(adc: ADCConfig, device, dtype) -> torch.Tensor:
    """Cumulative P(code <= k | ideal partial sum) [n_p, n_codes - 1] of ``adc.noise_table``."""
    assert adc.noise_table is not None
    p = torch.tensor(adc.noise_table, device=device, dtype=torch.float64)
    return p.cumsum(-1)[:, :-1].to(dtype)


def cdf_keys(cdf: torch.Tensor) -> torch.Tensor | None:
    """Sorted int64 search keys [n_p * (n_codes - 1)] of a float32 CDF ``cdf`` [n_p, n_codes - 1] for
    :func:`sample_codes`' one-pass draw: row r's key k is r * 2^31 + the bit pattern of cdf[r, k]. For
    non-negative float32 values the bit pattern orders as the value does, so u >= cdf[r, k] exactly when
    r * 2^31 + bits(u) >= key: the draw is the loop's, bit for bit. None for other dtypes."""
    if cdf.dtype != torch.float32:
        return None
    rows = torch.arange(cdf.shape[0], device=cdf.device, dtype=torch.int64)[:, None] << 31
    return (rows + cdf.contiguous().view(torch.int32).to(torch.int64)).reshape(-1)


def sample_codes(psum: torch.Tensor, cdf: torch.Tensor, psum_lo: int,
                 generator: torch.Generator | None, keys: torch.Tensor | None = None) -> torch.Tensor:
    """A code per ideal integer partial sum, drawn from the measured table (inverse CDF, one uniform each):
    code = #{k : u >= cdf[row, k]}. With ``keys`` (:func:`cdf_keys`, float32) one binary search per reading,
    else one pass per code (the reference); the same draws either way."""
    u = torch.rand(psum.shape, generator=generator, device=psum.device, dtype=psum.dtype)
    row = (psum - psum_lo).long()
    if keys is not None and u.dtype == torch.float32:
        vals = (row << 31) + u.view(torch.int32).to(torch.int64)
        return torch.searchsorted(keys, vals, right=True) - row * cdf.shape[1]
    code = torch.zeros(psum.shape, dtype=torch.long, device=psum.device)
    for k in range(cdf.shape[1]):
        code += u >= cdf[:, k][row]
    return code


def xnor_periphery(readings: torch.Tensor, signed_cells: torch.Tensor, bit_w: torch.Tensor,
                   slice_w: torch.Tensor) -> torch.Tensor:
    """An XNOR array's output [B, N] from the weighted sum of its readings Q(P) (``readings`` [B, N]): the
    periphery adds every tile's column weight sum S and halves, sum over planes and tiles of bit_w * (Q(P) + S)
    / 2 (:attr:`nn.config.ArrayConfig.xnor`); ``signed_cells`` [S, K, N] are the signed cells c+ - c-."""
    w_sum = (signed_cells.to(readings.dtype) * slice_w.to(readings.dtype).view(-1, 1, 1)).sum((0, 1))  # [N]
    return 0.5 * readings + 0.5 * bit_w.to(readings.dtype).sum() * w_sum  # (no host sync on a GPU)

