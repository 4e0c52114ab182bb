"""The fused bit-packed engine (nn/fused.py) against the pure-torch reference path."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from nn import (
    ADCConfig,
    ArrayConfig,
    CIMConfig,
    CIMConv2d,
    CIMLinear,
    QuantConfig,
    RuntimeConfig,
    _simd,
    fused,
    fused_buckets,
    fused_columns,
    fused_pack,
)
from nn.adc import adc_read, adc_tables, sar_effective_thresholds
from nn.engine import weight_cells as fused_weight_cells

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba not installed (the engine falls back to torch)")

REF = RuntimeConfig(fused=False)


def _both(layer, x):
    """(fused, reference) integer outputs of a layer for input x."""
    cfg = layer.cim_config
    x_int, _, w_int, _ = layer.quantize(x)
    a = layer.chip_matmul(x_int, w_int)
    layer.cim_config = replace(cfg, runtime=REF)
    b = layer.chip_matmul(x_int, w_int)
    layer.cim_config = cfg
    return a, b


CASES = [c for c in itertools.product([1, 2, 4], [1, 2], [1, 3, 8], [False, True], ["bit_serial", "multilevel"],
                                      [False, True], ["flash", "sar"], [None, "2bit", "3.5bit"])
         if not (c[5] and c[2] < 2) and not (c[4] == "multilevel" and c[5] and not c[3]) and not (c[7] and not c[3])]


@pytest.mark.parametrize("case", [CASES[i] for i in np.random.default_rng(0).choice(len(CASES), 40, replace=False)])
def test_fused_equals_reference_bit_for_bit(case):
    wb, cb, ib, signed, mode, signed_in, kind, scheme = case
    adc = replace(ADCConfig.scheme(scheme) if scheme else ADCConfig(bits=5), kind=kind)
    cfg = CIMConfig(adc=adc, array=ArrayConfig(rows=40, cell_bits=cb, signed_psum=signed, n_macros=2,
                                               adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=wb, input_bits=ib, input_mode=mode, input_signed=signed_in))
    torch.manual_seed(hash(case) % 1000)
    layer = CIMLinear(100, 7, cim_config=cfg).double()
    if scheme is None or kind == "flash":
        n_thr = cfg.adc.n_thresholds
        layer.load_adc_offsets(np.random.default_rng(1).normal(0, 1.0, (2, 4, n_thr)))
    a, b = _both(layer, torch.randn(9, 100, dtype=torch.float64) * 2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode,lut_limit", [("bit_serial", None), ("bit_serial", 0), ("multilevel", 0)])
def test_fused_blocks_of_rows_equal_reference_bit_for_bit(mode, lut_limit, monkeypatch):
    """The kernels run rows in blocks of ``fused._BLOCK``, tile by tile: 2.3 blocks of rows (two full, one ragged)
    read exactly what the reference reads, through lookup tables and (tables off) the threshold search."""
    if lut_limit is not None:
        monkeypatch.setattr(fused, "_LUT_MAX_ENTRIES", lut_limit)
    cfg = CIMConfig(adc=ADCConfig(bits=5), array=ArrayConfig(rows=40, cell_bits=2, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=4, input_bits=6, input_mode=mode))
    torch.manual_seed(4)
    layer = CIMLinear(100, 7, cim_config=cfg).double()
    layer.load_adc_offsets(np.random.default_rng(2).normal(0, 1.5, (2, 4, cfg.adc.n_thresholds)))
    n_rows = 2 * fused._BLOCK + fused._BLOCK // 3
    a, b = _both(layer, torch.randn(n_rows, 100, dtype=torch.float64) * 2)
    assert torch.equal(a, b) and len(set(a.flatten().tolist())) > 20


XNOR_CASES = [c for c in itertools.product([1, 4], [1, 2], [1, 4], [False, True], ["flash", "sar"],
                                           [None, "1bit", "3.5bit"]) if not (c[3] and c[2] < 2)]


@pytest.mark.parametrize("case", [XNOR_CASES[i] for i in np.random.default_rng(1).choice(len(XNOR_CASES), 12,
                                                                                         replace=False)])
def test_fused_xnor_equals_reference_bit_for_bit(case):
    """XNOR rows (a 0 bit drives -1): the popcount kernel's P = 2 sum(x w) - S and the periphery's (Q(P) + S) / 2
    equal the reference's +-1 planes, offsets and all."""
    wb, cb, ib, signed_in, kind, scheme = case
    adc = replace(ADCConfig.scheme(scheme) if scheme else ADCConfig(bits=6), kind=kind)
    cfg = CIMConfig(adc=adc, array=ArrayConfig(rows=40, cell_bits=cb, signed_psum=True, xnor=True, n_macros=2,
                                               adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=wb, input_bits=ib, input_signed=signed_in))
    torch.manual_seed(hash(case) % 1000)
    layer = CIMLinear(100, 7, cim_config=cfg).double()
    if scheme is None or kind == "flash":
        layer.load_adc_offsets(np.random.default_rng(1).normal(0, 1.0, (2, 4, cfg.adc.n_thresholds)))
    a, b = _both(layer, torch.randn(9, 100, dtype=torch.float64) * 2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_fused_conv_packs_windows_like_unfold(stride, padding, dilation):
    cfg = CIMConfig(adc=ADCConfig(bits=4), array=ArrayConfig(rows=16, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=2, input_bits=4))
    torch.manual_seed(stride + padding)
    conv = CIMConv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation, cim_config=cfg).double()
    conv.load_adc_offsets(np.random.default_rng(2).normal(0, 0.7, (2, 4, 15)))
    x = torch.rand(2, 3, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        a = conv(x)
        conv.cim_config = replace(cfg, runtime=REF)
        b = conv(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("rows,nbits,geometry", [(31, 8, (3, 1, 1, 1)), (128, 5, (3, 2, 0, 1)), (100, 8, (2, 1, 2, 2)),
                                                 (64, 1, (1, 1, 0, 1))])
def test_byte_window_packing_equals_the_bit_loop(rows, nbits, geometry):
    """The 8-bit window packer (byte lanes, one multiply per 8 rows and plane) writes exactly the words of the
    bit-by-bit packer: tiles of 31 / 64 / 100 / 128 rows (a partial second word), padding, stride, dilation."""
    k, stride, pad, dil = geometry
    v = np.random.default_rng(rows).integers(0, 2**nbits, (3, 7, 9, 8)).astype(np.uint8)
    v[v < 2**nbits // 3] = 0  # ReLU-like zeros
    ho = (9 + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (8 + 2 * pad - dil * (k - 1) - 1) // stride + 1
    tiles = -(-7 * k * k // rows)
    args = (k, k, stride, stride, pad, pad, dil, dil, ho, wo, tiles, rows, nbits)
    a = fused_pack.pack_windows(v, (k, k), (stride, stride), (pad, pad), (dil, dil), (ho, wo), tiles, rows, nbits)
    b = fused_pack._pack_windows(v, *args)
    assert a.shape == b.shape and np.array_equal(a, b) and b.any()


@pytest.mark.parametrize("kind,signed,sigma", [("flash", False, 0.0), ("sar", False, 3.0), ("flash", True, 3.0)])
def test_multilevel_matmul_path_equals_the_popcount_path_draw_for_draw(kind, signed, sigma):
    """Multi-level inputs read through a float matmul's partial sums give exactly what the bit-packed
    popcount kernel gives, noise draws included (same reading keys), on shifted thresholds."""
    cfg = CIMConfig(adc=ADCConfig(bits=5, kind=kind, noise_sigma=sigma),
                    array=ArrayConfig(rows=32, cell_bits=2, signed_psum=signed, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=4, input_bits=6, input_mode="multilevel", input_signed=signed))
    torch.manual_seed(0)
    layer = CIMLinear(70, 5, cim_config=cfg).double()
    layer.load_adc_offsets(np.random.default_rng(1).normal(0, 1.0, (2, 4, cfg.adc.n_thresholds)))
    x_int, _, w_int, _ = layer.quantize(torch.randn(13, 70, dtype=torch.float64) * 2)
    cells = fused_weight_cells(w_int, 4, 2)
    tiles = 3
    bits = fused._input_bits(torch.nn.functional.pad(x_int, (0, tiles * 32 - 70)), cfg)
    xw = fused_pack.pack_rows(bits, tiles, 32, 6)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = fused.cim_matmul_fused(x_int, cells, cfg, layer.adc_shift, gen_a, None)
    b = fused._run(xw, cells, cfg, layer.adc_shift, gen_b, None, x_int.dtype)
    assert torch.equal(a, b) and (sigma == 0 or len(set(a.flatten().tolist())) > 20)


@pytest.mark.parametrize("lut_limit,offset_lsb", [(None, 1.0), (0, 1.0), (0, 3.0)])
def test_multilevel_conv_equals_reference_bit_for_bit(lut_limit, offset_lsb, monkeypatch):
    """Multi-level conv == reference, through the lookup table or (tables off) the computed code stepped over
    the chip's offsets (3 LSB offsets: codes more than one step away walk on)."""
    if lut_limit is not None:
        monkeypatch.setattr(fused, "_LUT_MAX_ENTRIES", lut_limit)
    cfg = CIMConfig(adc=ADCConfig(bits=5), array=ArrayConfig(rows=20, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=3, input_bits=4, input_mode="multilevel"))
    torch.manual_seed(2)
    conv = CIMConv2d(3, 4, 3, padding=1, stride=2, cim_config=cfg).double()
    step = adc_tables(cfg.adc, *cfg.psum_range, "cpu", torch.float64)[2]
    conv.load_adc_offsets(np.random.default_rng(3).normal(0, offset_lsb, (2, 4, cfg.adc.n_thresholds)))
    assert step > 1  # offsets (in LSB) move thresholds across partial sums
    x = torch.rand(3, 3, 9, 9, dtype=torch.float64) * 3
    with torch.no_grad():
        a = conv(x)
        conv.cim_config = replace(cfg, runtime=REF)
        b = conv(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind,signed,offset_lsb", [("flash", False, 4.0), ("sar", True, 1.0), ("flash", True, 0.3)])
def test_multilevel_bucket_tables_equal_reference_bit_for_bit(kind, signed, offset_lsb, monkeypatch):
    """A wide partial-sum range (128 rows x 8-bit drives x 2-bit cells) is read through the bucket tables of
    nn.fused_buckets: buckets with no, one and (offsets crowding the thresholds) several cut points all read
    what the reference reads; with the tables off (too large) the threshold search reads the same."""
    monkeypatch.setattr(fused, "_LUT_MAX_ENTRIES", 0)  # (a layer this small would get lookup tables)
    cfg = CIMConfig(adc=ADCConfig(bits=5, kind=kind),
                    array=ArrayConfig(rows=128, cell_bits=2, signed_psum=signed, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=4, input_bits=8, input_mode="multilevel"))
    torch.manual_seed(7)
    layer = CIMLinear(300, 6, cim_config=cfg).double()
    layer.load_adc_offsets(np.random.default_rng(5).normal(0, offset_lsb, (2, 4, cfg.adc.n_thresholds)))
    x = torch.rand(40, 300, dtype=torch.float64)
    x_int, _, w_int, _ = layer.quantize(x)
    cells = fused_weight_cells(w_int, 4, 2)
    _, rd, _ = fused._prepare(cells, cfg, layer.adc_shift, None, None)
    tab, shift, _ = fused._buckets(cfg, rd[1], rd[3], rd[7], None)
    cut = (tab.astype(np.int64) >> 8) & 0x7F
    assert shift == fused_buckets.MAX_SHIFT and (cut < 2**shift).any() and (cut == 2**shift).any()
    assert (tab >= 0x8000).any() or offset_lsb < 4  # (Flash W/L 4 measured 4.3 LSB rms)
    a, b = _both(layer, x)
    assert torch.equal(a, b) and len(set(a.flatten().tolist())) >= 4
    monkeypatch.setattr(fused_buckets, "MAX_BYTES", 0)
    assert fused._buckets(cfg, rd[1], rd[3], rd[7], None)[1] == -1
    assert torch.equal(_both(replace_layer(layer), x)[0], b)


@pytest.mark.parametrize("bits,signed_in,signed_psum,cell_bits", [(8, False, False, 1), (8, True, True, 2),
                                                                    (5, False, True, 3)])
def test_int8_matmul_partial_sums_equal_the_float_matmul(bits, signed_in, signed_psum, cell_bits, monkeypatch):
    """Multi-level partial sums from torch's int8 matmul (8-bit drives 0..255 read as x - 128 plus 128 times the
    column's cell sum) read exactly what the float matmul's read, and what the reference reads."""
    if not fused._INT_MM:
        pytest.skip("this torch build has no CPU int8 matmul (the float matmul is used)")
    cfg = CIMConfig(adc=ADCConfig(bits=6), array=ArrayConfig(rows=64, cell_bits=cell_bits, signed_psum=signed_psum,
                                                             n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=4, input_bits=bits, input_mode="multilevel", input_signed=signed_in))
    assert fused._int8_matmul(cfg)
    torch.manual_seed(11)
    layer = CIMLinear(150, 5, cim_config=cfg).double()
    layer.load_adc_offsets(np.random.default_rng(6).normal(0, 1.0, (2, 4, cfg.adc.n_thresholds)))
    x = torch.randn(37, 150, dtype=torch.float64)
    a, ref = _both(layer, x)
    monkeypatch.setattr(fused, "_INT_MM", False)
    b = _both(replace_layer(layer), x)[0]
    assert torch.equal(a, b) and torch.equal(a, ref) and len(set(a.flatten().tolist())) > 10


def replace_layer(layer):
    """The same layer with a fresh table cache (so the tables are rebuilt under a monkeypatched limit)."""
    fresh = CIMLinear(layer.in_features, layer.out_features, cim_config=layer.cim_config).double()
    fresh.load_state_dict(layer.state_dict())
    return fresh


def test_fused_noise_matches_reference_distribution_and_is_seeded():
    """Gaussian noise: the fused path's output distribution equals the reference path's (two-sample
    chi-square on the readings of one column, fixed seed; false-alarm rate 1e-3), and a seeded layer repeats."""
    cfg = CIMConfig(adc=ADCConfig(bits=4, noise_sigma=1.5), array=ArrayConfig(rows=16, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=2, input_bits=1))
    torch.manual_seed(3)
    layer = CIMLinear(16, 1, cim_config=cfg).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.ones(4000, 16, dtype=torch.float64)
    x[:, 9:] = 0  # partial sum 9 on the positive column: readings spread over a few codes
    layer.set_noise_seed(11)
    a, b = _both(layer, x)
    layer.set_noise_seed(11)
    a2, _ = _both(layer, x)
    assert torch.equal(a, a2)
    values = sorted(set(a.flatten().tolist()) | set(b.flatten().tolist()))
    ca = np.array([(a == v).sum().item() for v in values])
    cb = np.array([(b == v).sum().item() for v in values])
    keep = (ca + cb) >= 10
    _, p, _, _ = stats.chi2_contingency(np.stack([ca[keep], cb[keep]]))
    assert len(values) >= 3 and p > 1e-3


@pytest.mark.parametrize("kind,lut_limit,sigma,offset", [("sar", None, 1.0, 1.5), ("flash", None, 1.0, 1.5),
                                                         ("sar", 0, 1.0, 1.5), ("flash", None, 0.5, 0.5),
                                                         ("sar", None, 0.5, 0.5)])
def test_fused_noise_with_offsets_matches_reference_distribution(kind, lut_limit, sigma, offset, monkeypatch):
    """Gaussian noise on shifted thresholds: the fused path (a SAR read through its equivalent sorted
    thresholds; sigma 1 LSB: the step from the noise-free code, or bisection where the code table would be too
    large; sigma 0.5 LSB: the cut tables of nn/fused_noise.py) reads like the reference path's threshold loop /
    SAR search (chi-square, false-alarm rate 1e-3)."""
    if lut_limit is not None:
        monkeypatch.setattr(fused, "_LUT_MAX_ENTRIES", lut_limit)
    cfg = CIMConfig(adc=ADCConfig(bits=4, kind=kind, noise_sigma=sigma, psum_max=15.0),
                    array=ArrayConfig(rows=16, n_macros=1, adcs_per_macro=1), quant=QuantConfig(weight_bits=2,
                                                                                                input_bits=1))
    torch.manual_seed(3)
    layer = CIMLinear(16, 1, cim_config=cfg).double()
    layer.load_adc_offsets(np.random.default_rng(2).normal(0, offset, (1, 1, cfg.adc.n_thresholds)))
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.ones(6000, 16, dtype=torch.float64)
    x[:, 7:] = 0
    layer.set_noise_seed(11)
    a, b = _both(layer, x)
    assert (layer._table_cache["fused_tables"][0] in (fused.MODE_CUTS, fused.MODE_CUT_COLUMNS)) == (sigma == 0.5)
    values = sorted(set(a.flatten().tolist()) | set(b.flatten().tolist()))
    ca = np.array([(a == v).sum().item() for v in values])
    cb = np.array([(b == v).sum().item() for v in values])
    keep = (ca + cb) >= 10
    _, p, _, _ = stats.chi2_contingency(np.stack([ca[keep], cb[keep]]))
    assert keep.sum() >= 3 and p > 1e-3


def _three_readouts(layer, x_int, w_int, seed, monkeypatch):
    """(outputs, fused tables) of a noisy layer read three ways under one noise seed: the column kernel with the
    AVX-512 code where it runs, the column kernel with numba's code, the row kernel. The column kernel's blocks
    split into 3 output ranges (as for a layer of few rows) read the same, checked here too."""
    outs, tables = [], []
    for columns, simd in ((True, _simd.ENABLED), (True, False), (False, False)):
        monkeypatch.setattr(fused, "_COLUMN_CUTS", columns)
        monkeypatch.setattr(fused_columns, "SIMD", simd)
        layer._table_cache.clear()
        layer.set_noise_seed(seed)
        outs.append(layer.chip_matmul(x_int, w_int))
        tables.append(layer._table_cache["fused_tables"])
    monkeypatch.setattr(fused, "_COLUMN_CUTS", True)
    monkeypatch.setattr(fused_columns, "SIMD", _simd.ENABLED)
    monkeypatch.setattr(fused_columns, "splits", lambda *args: 3)
    layer._table_cache.clear()
    layer.set_noise_seed(seed)
    assert torch.equal(layer.chip_matmul(x_int, w_int), outs[0])
    return outs, tables


@pytest.mark.parametrize("case", [c for c in itertools.product([1, 2, 4], [1, 2], [1, 3, 8], [False, True],
                                                                [False, True], ["flash", "sar"], [False, True])
                                  if not (c[4] and c[2] < 2) and not (c[6] and not c[3])][::5])
def test_column_by_column_cut_readout_equals_the_row_kernel_bit_for_bit(case, monkeypatch):
    """nn/fused_columns.py (a chip's per-column Gaussian cuts, read column by column, by nn/_simd.c's AVX-512
    code where it runs and by numba's) gives the output of the row-by-row cut kernel bit for bit: the same
    readings, random bits, slow-path draws and order of the float additions; over weight / cell / input bits,
    signed columns and inputs, Flash and SAR, XNOR rows, and more rows than one block and columns not a
    multiple of the four that share a random word."""
    wb, cb, ib, signed, signed_in, kind, xnor = case
    adc = ADCConfig(bits=4, kind=kind, noise_sigma=0.4, psum_max=15.0)
    cfg = CIMConfig(adc=adc, array=ArrayConfig(rows=24, cell_bits=cb, signed_psum=signed, xnor=xnor, n_macros=2,
                                               adcs_per_macro=3),
                    quant=QuantConfig(weight_bits=wb, input_bits=ib, input_signed=signed_in))
    torch.manual_seed(hash(case) % 1000)
    layer = CIMLinear(60, 7, cim_config=cfg).double()
    layer.load_adc_offsets(np.random.default_rng(1).normal(0, 0.6, (2, 3, cfg.adc.n_thresholds)))
    x = torch.randn(37, 60, dtype=torch.float64) * 2
    x[:5, :30] = 0  # all-zero planes
    x_int, _, w_int, _ = layer.quantize(x)
    outs, tables = _three_readouts(layer, x_int, w_int, 5, monkeypatch)
    assert [t[0] for t in tables] == [fused.MODE_CUT_COLUMNS] * 2 + [fused.MODE_CUTS]
    assert (tables[0][1].shape[0] > 0) == _simd.ENABLED and tables[1][1].shape[0] == 0  # (C reads with tables)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    assert not torch.equal(outs[0], layer.chip_matmul(x_int, w_int))  # (the draws are live: a new seed differs)


def test_a_wide_chip_range_reads_through_128_row_tables_bit_for_bit(monkeypatch):
    """A chip whose per-column cuts span 65-129 partial sums (5-bit ADC over 0..90, 100-row arrays) gets
    128-row column tables (rows 64-127 from memory); the output is numba's and the row kernel's bit for bit."""
    adc = ADCConfig(bits=5, noise_sigma=1.2, psum_max=90.0)
    cfg = CIMConfig(adc=adc, array=ArrayConfig(rows=100, n_macros=1, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=2, input_bits=3))
    torch.manual_seed(9)
    layer = CIMLinear(200, 6, cim_config=cfg).double()
    with torch.no_grad():
        layer.weight.abs_()  # (dense positive cells and inputs: partial sums over the whole 0..100)
    layer.load_adc_offsets(np.random.default_rng(3).normal(0, 0.5, (1, 4, cfg.adc.n_thresholds)))
    x = torch.rand(40, 200, dtype=torch.float64) * 4
    x[:20] = 3.5 + 0.5 * torch.rand(20, 200, dtype=torch.float64)
    x_int, _, w_int, _ = layer.quantize(x)
    outs, tables = _three_readouts(layer, x_int, w_int, 2, monkeypatch)
    assert tables[0][5].shape[2] > 64  # (the cuts' range)
    if _simd.ENABLED:
        assert tables[0][1][0, 0, -_simd.HEADER] == 128
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[2])


@pytest.mark.parametrize("source,signed", [("table", False), ("table", True), ("gaussian", False), ("gaussian", True)])
def test_shared_cuts_read_column_by_column_equal_the_row_kernel_bit_for_bit(source, signed, monkeypatch):
    """Cut tables every column shares (a measured noise table; Gaussian noise without offsets) are read by the
    column kernel where nn/_simd.c runs, their trailing repeated entries cut off (a table of 41 partial sums
    fits the 64-entry lane tables); the output is the row kernel's bit for bit, and the numba path agrees."""
    adc = ADCConfig(bits=4, noise_sigma=0.4, psum_max=15.0)
    if source == "table":
        edges = np.arange(15) + 0.5
        rows = []
        for ps in range(41 if not signed else 81):
            cdf = stats.norm.cdf((edges - (ps - (40 if signed else 0))) / 0.45)
            rows.append(tuple(float(v) for v in np.diff(np.concatenate([[0.0], cdf, [1.0]]))))
        adc = ADCConfig(bits=4, psum_max=15.0, noise_table=tuple(rows))
    cfg = CIMConfig(adc=adc, array=ArrayConfig(rows=40, signed_psum=signed, n_macros=1, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=2, input_bits=4))
    torch.manual_seed(8)
    layer = CIMLinear(80, 9, cim_config=cfg).double()
    x = torch.rand(37, 80, dtype=torch.float64) * 3
    x[:4, :40] = 0  # all-zero planes
    x_int, _, w_int, _ = layer.quantize(x)
    outs, tables = _three_readouts(layer, x_int, w_int, 3, monkeypatch)
    modes = [t[0] for t in tables]
    assert modes == [fused.MODE_CUT_COLUMNS if _simd.ENABLED else fused.MODE_CUTS] + [fused.MODE_CUTS] * 2
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[2])
    layer.set_noise_seed(4)
    assert not torch.equal(outs[2], layer.chip_matmul(x_int, w_int))


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_sar_effective_thresholds_read_like_the_sar_search(scale):
    """A ones count over the SAR's equivalent sorted thresholds equals its binary search for every value,
    values exactly on a threshold included, at offsets large enough to skip codes."""
    adc = ADCConfig(bits=5, kind="sar", psum_max=31.0)
    thr, lev, step = adc_tables(adc, 0, 128, "cpu", torch.float64)
    gen = torch.Generator().manual_seed(int(scale * 10))
    shift = torch.randn(64, 31, dtype=torch.float64, generator=gen) * scale
    eff = sar_effective_thresholds(thr + shift)
    v = torch.cat([torch.rand(64, 3000, dtype=torch.float64, generator=gen) * 50 - 10, thr + shift], 1)
    sar = adc_read(v, adc, thr, lev, step, shift[:, None, :])
    assert (torch.diff(eff, dim=-1) >= 0).all()
    assert torch.equal(lev[(v[..., None] >= eff[:, None, :]).sum(-1)], sar)


@pytest.mark.parametrize("xnor", [False, True])
def test_fused_noise_table_matches_reference_distribution(xnor):
    cfg = CIMConfig(adc=ADCConfig.scheme("2bit"), array=ArrayConfig(rows=4, signed_psum=True, xnor=xnor, n_macros=1,
                                                                    adcs_per_macro=2),
                    quant=QuantConfig(weight_bits=1, input_bits=1))
    lo, hi = cfg.psum_range
    rng = np.random.default_rng(4)
    table = rng.dirichlet(np.ones(4), size=hi - lo + 1)
    cfg = replace(cfg, adc=replace(cfg.adc, noise_table=tuple(tuple(r) for r in table)))
    layer = CIMLinear(4, 1, cim_config=cfg).double()
    layer.set_noise_seed(5)
    x = torch.ones(6000, 4, dtype=torch.float64)
    if xnor:
        x[:, :2] = 0  # rows driven -1
    a, b = _both(layer, x)
    values = sorted(set(a.flatten().tolist()) | set(b.flatten().tolist()))
    ca = np.array([(a == v).sum().item() for v in values])
    cb = np.array([(b == v).sum().item() for v in values])
    _, p, _, _ = stats.chi2_contingency(np.stack([ca, cb]))
    assert p > 1e-3


@pytest.mark.parametrize("table,low", [(False, -0.1), (False, -0.3), (True, 0.0)])
def test_all_zero_planes_read_like_the_reference(table, low):
    """A tile's all-zero input planes (ReLU inputs' high bits) read partial sum 0 through the noise; on the cut
    path they read the tile's entries of partial sum 0, gathered once per block. Per output column, the fused
    outputs follow the reference path's distribution (chi-square, false-alarm rate 1e-3 per column), with
    shifted thresholds (Gaussian) or a measured table whose row 0 leaves the noise-free code."""
    adc = ADCConfig(bits=4, noise_sigma=0.3, psum_max=15.0)
    if table:
        rows = np.zeros((17, 16))
        rows[np.arange(17), np.minimum(np.arange(17), 15)] = 1.0  # exact for psum 1..16 (clipped at 15) ...
        rows[0] = [0.03, 0.93, 0.04] + [0.0] * 13  # ... and psum 0 leaves code 1 (down or up) with probability 0.07
        adc = ADCConfig(bits=4, psum_max=15.0, noise_table=tuple(tuple(r) for r in rows))
    cfg = CIMConfig(adc=adc, array=ArrayConfig(rows=16, columns_per_adc=1, n_macros=1, adcs_per_macro=24),
                    quant=QuantConfig(weight_bits=2, input_bits=3))
    torch.manual_seed(4)
    layer = CIMLinear(32, 3, cim_config=cfg).double()
    if not table:  # every column's own ADC, its first threshold moved by low..0.1 LSB
        layer.load_adc_offsets(np.random.default_rng(2).uniform(low, 0.1, (1, 24, cfg.adc.n_thresholds)))
    x = torch.zeros(6000, 32, dtype=torch.float64)
    x[:, :5] = 1.0  # tile 0: plane 0 live, planes 1-2 all zero; tile 1: every plane all zero
    x[3000:, :5] = 3.0
    layer.set_noise_seed(7)
    a, b = _both(layer, x)
    for n in range(3):
        values = sorted(set(a[:, n].tolist()) | set(b[:, n].tolist()))
        ca = np.array([(a[:, n] == v).sum().item() for v in values])
        cb = np.array([(b[:, n] == v).sum().item() for v in values])
        keep = (ca + cb) >= 10
        _, p, _, _ = stats.chi2_contingency(np.stack([ca[keep], cb[keep]]))
        assert keep.sum() >= 3 and p > 1e-3, (n, p)


def test_ziggurat_normal_is_standard_normal_tails_included():
    """The counter-based ziggurat draw: KS against N(0, 1) on 200k keys (false alarm 1e-3 at a fixed seed), and
    the share beyond the ziggurat's base R (drawn by the tail branch) within 5 sigma of its expectation."""
    from nn._numba_prims import _ZIG_R, _normal

    seed = np.uint64(12345)
    z = np.array([_normal(seed, np.uint64(k)) for k in range(200_000)])
    assert stats.kstest(z, "norm").pvalue > 1e-3
    expected = 200_000 * 2 * stats.norm.sf(_ZIG_R)
    beyond = int((np.abs(z) > _ZIG_R).sum())
    assert abs(beyond - expected) < 5 * np.sqrt(expected)
    assert _normal(seed, np.uint64(7)) == _normal(seed, np.uint64(7)) != _normal(seed + np.uint64(1), np.uint64(7))


@pytest.mark.parametrize("mode", ["bit_serial", "multilevel"])
def test_programmed_weights_are_reused_and_follow_every_weight_change(mode):
    """The cells and the engine's packed weights are built once while the integer weights stay the same and
    rebuilt after any change, however it is made (here through ``.data``, which no version counter sees)."""
    cfg = CIMConfig(adc=ADCConfig(bits=4), array=ArrayConfig(rows=16, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=3, input_bits=4, input_mode=mode))
    torch.manual_seed(5)
    layer = CIMLinear(40, 6, cim_config=cfg).double().eval()
    layer.load_adc_offsets(np.random.default_rng(3).normal(0, 0.7, (2, 4, 15)))
    x = torch.rand(5, 40, dtype=torch.float64) * 3

    def fresh_output():
        twin = CIMLinear(40, 6, cim_config=cfg).double().eval()
        twin.load_state_dict(layer.state_dict())
        return twin(x)

    with torch.no_grad():
        y0 = layer(x)
        programmed = layer._table_cache["programmed"]
        assert torch.equal(layer(x), y0) and layer._table_cache["programmed"] is programmed
        layer.weight.data.mul_(-1)
        y1 = layer(x)
        assert layer._table_cache["programmed"] is not programmed
        assert not torch.equal(y1, y0) and torch.equal(y1, fresh_output())


def test_blocks_of_few_rows_are_split_over_output_ranges():
    """fused_columns.splits: one task a block where the blocks alone give every thread two; otherwise output
    ranges of at least 8 outputs, enough for that (a batch-16 classifier of 1,024 outputs on 2 threads: 4)."""
    assert fused_columns.splits(16384, 32, 128, 2) == 1
    assert fused_columns.splits(16, 32, 1024, 2) == 4
    assert fused_columns.splits(64, 32, 1024, 4) == 4
    assert fused_columns.splits(16, 32, 7, 2) == 1  # (too few outputs to split)
    assert fused_columns.splits(16, 32, 20, 8) == 2


def test_partial_sums_beyond_int16_keep_numbas_codes(monkeypatch):
    """The AVX-512 code reads partial sums as int16: a layer whose range does not fit (11,000-row arrays of
    2-bit cells: 0..33,000) gets no column tables, and its column kernel (numba's codes, int64 sums) still
    reads what the row kernel reads, bit for bit."""
    assert fused_columns.fits_int16((-32767, 32767)) and not fused_columns.fits_int16((0, 32768))
    assert not fused_columns.fits_int16((-32768, 0))
    adc = ADCConfig(bits=4, noise_sigma=0.4, psum_max=15.0)
    cfg = CIMConfig(adc=adc, array=ArrayConfig(rows=11000, cell_bits=2, n_macros=1, adcs_per_macro=2),
                    quant=QuantConfig(weight_bits=3, input_bits=2))
    assert cfg.psum_range[1] > 32767
    torch.manual_seed(4)
    layer = CIMLinear(11000, 2, cim_config=cfg).double()
    layer.load_adc_offsets(np.random.default_rng(5).normal(0, 0.5, (1, 2, cfg.adc.n_thresholds)))
    x_int, _, w_int, _ = layer.quantize(torch.rand(5, 11000, dtype=torch.float64) * 0.01)
    outs, tables = _three_readouts(layer, x_int, w_int, 3, monkeypatch)
    assert tables[0][0] == fused.MODE_CUT_COLUMNS and tables[0][1].shape[0] == 0
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[2])
