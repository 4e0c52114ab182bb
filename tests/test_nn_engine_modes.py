"""Engine modes: chunking, multi-level inputs, signed partial sums (Table I), measured noise tables."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import nn.engine as engine
from nn import ADCConfig, ArrayConfig, CIMConfig, CIMConfigError, CIMLinear, QuantConfig, RuntimeConfig
from nn.adc import adc_read, adc_tables, sample_codes
from nn.quant import quantize_input, quantize_weight


def _chip_layer(cfg: CIMConfig, k: int = 100, n: int = 9, seed: int = 0) -> CIMLinear:
    torch.manual_seed(seed)
    layer = CIMLinear(k, n, cim_config=cfg)
    a = cfg.array
    layer.load_adc_offsets(np.random.default_rng(seed).normal(0, 1.0, (a.n_macros, a.adcs_per_macro,
                                                                         cfg.adc.n_thresholds)))
    return layer


ARRAY = ArrayConfig(rows=32, n_macros=2, adcs_per_macro=4)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["flash", "sar"])
def test_chunk_size_and_table_layout_never_change_results(kind, fused, monkeypatch):
    base = CIMConfig(adc=ADCConfig(bits=5, kind=kind), array=ARRAY, quant=QuantConfig(weight_bits=4, input_bits=5),
                     runtime=RuntimeConfig(fused=fused))
    layer = _chip_layer(base)
    x = torch.rand(23, 100)
    want = layer.integer_forward(x)[0]
    tiny = CIMLinear(100, 9, cim_config=CIMConfig(adc=base.adc, array=ARRAY, quant=base.quant,
                                                  runtime=RuntimeConfig(chunk_elements=1, fused=fused)))
    tiny.load_state_dict(layer.state_dict())
    assert torch.equal(tiny.integer_forward(x)[0], want)  # one input row per chunk
    monkeypatch.setattr(engine, "_FLOAT32_EXACT", 2000)  # per-tile tables (the very-large-layer path)
    fresh = CIMLinear(100, 9, cim_config=base)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.integer_forward(x)[0], want) and torch.equal(layer.integer_forward(x)[0], want)
    if not fused:
        assert fresh._table_cache["tables"][4].dim() == 2  # per-tile rows, not one flat table


def test_multilevel_inputs_are_exact_with_a_lossless_adc():
    rows, ib = 8, 4
    cfg = CIMConfig(adc=ADCConfig(bits=7), array=ArrayConfig(rows=rows),
                    quant=QuantConfig(weight_bits=3, input_bits=ib, input_mode="multilevel"))
    assert cfg.psum_range == (0, rows * (2**ib - 1))
    torch.manual_seed(1)
    layer = CIMLinear(30, 6, cim_config=cfg).double()
    y_cim, y_ideal, _ = layer.integer_forward(torch.rand(5, 30, dtype=torch.float64))
    assert torch.equal(y_cim, y_ideal.detach())
    # a coarse ADC now quantizes whole multi-level sums, not bit-planes: the two modes differ
    coarse = CIMConfig(adc=ADCConfig(bits=3), array=ArrayConfig(rows=rows), quant=cfg.quant)
    serial = CIMConfig(adc=ADCConfig(bits=3), array=ArrayConfig(rows=rows), quant=QuantConfig(weight_bits=3,
                                                                                               input_bits=ib))
    a, b = CIMLinear(30, 6, cim_config=coarse).double(), CIMLinear(30, 6, cim_config=serial).double()
    b.load_state_dict(a.state_dict())
    x = torch.rand(5, 30, dtype=torch.float64)
    assert not torch.equal(a.integer_forward(x)[0], b.integer_forward(x)[0])


def test_signed_multilevel_inputs_need_signed_columns():
    q = QuantConfig(input_bits=4, input_signed=True, input_mode="multilevel")
    with pytest.raises(CIMConfigError, match="signed_psum=True"):
        CIMConfig(quant=q)
    cfg = CIMConfig(adc=ADCConfig(bits=8), array=ArrayConfig(rows=8, signed_psum=True), quant=q)
    assert cfg.psum_range == (-64, 64)
    layer = CIMLinear(20, 4, cim_config=cfg).double()
    y_cim, y_ideal, _ = layer.integer_forward(torch.randn(6, 20, dtype=torch.float64))
    assert torch.equal(y_cim, y_ideal.detach())


def test_signed_columns_read_table_one_scheme_per_tile():
    """Seed 000 input splitting: the ADC quantizes each tile's signed partial sum with Table I."""
    rows = 64
    cfg = CIMConfig(adc=ADCConfig.scheme("2bit"), array=ArrayConfig(rows=rows, signed_psum=True),
                    quant=QuantConfig(weight_bits=1, input_bits=1))
    torch.manual_seed(2)
    layer = CIMLinear(3 * rows, 5, cim_config=cfg).double()
    assert layer.adc_shift.shape == (3, 1, 1, 5, 3)  # one ADC per column pair
    x = torch.rand(7, 3 * rows, dtype=torch.float64)
    x_int, _ = quantize_input(x, 1, 1.0)
    w_int, _ = quantize_weight(layer.weight.double(), 1)
    psum = torch.einsum("btr,ntr->btn", x_int.view(7, 3, rows), w_int.view(5, 3, rows))  # signed, per tile
    thr = torch.tensor([-24.0, 0.0, 24.0], dtype=torch.float64)
    lev = torch.tensor([-36.0, -12.0, 12.0, 36.0], dtype=torch.float64)
    want = lev[(psum.unsqueeze(-1) >= thr).sum(-1)].sum(1)
    assert torch.equal(layer.integer_forward(x)[0], want)
    assert (psum < 0).any() and (psum > 0).any()


def test_xnor_rows_read_the_centred_partial_sum_and_the_periphery_restores_it():
    """ArrayConfig.xnor: a 0 bit drives -1; the ADC reads P = sum (2x - 1) w per tile, the periphery adds the
    tile's weight sum S and halves. Lossless ADC: exactly x @ w (padding rows add nothing); Table I: the scheme
    quantizes P, not sum x w."""
    rows, k = 64, 150  # 3 tiles, the last one 22 rows short
    quant = QuantConfig(weight_bits=1, input_bits=1)
    lossless = CIMConfig(adc=ADCConfig(bits=8), array=ArrayConfig(rows=rows, signed_psum=True, xnor=True),
                         quant=quant)
    torch.manual_seed(3)
    layer = CIMLinear(k, 5, cim_config=lossless).double()
    x = torch.rand(7, k, dtype=torch.float64) * torch.tensor([0.2, 1.0], dtype=torch.float64).repeat(75)
    x_int, _ = quantize_input(x, 1, 1.0)
    w_int, _ = quantize_weight(layer.weight.double(), 1)
    assert torch.equal(layer.integer_forward(x)[0], x_int @ w_int.T)
    table = replace(lossless, adc=ADCConfig.scheme("2bit"))
    layer.cim_config = table
    pad = 3 * rows - k
    xp = torch.nn.functional.pad(2 * x_int - 1, (0, pad)).view(7, 3, rows)
    wp = torch.nn.functional.pad(w_int, (0, pad)).view(5, 3, rows)
    p = torch.einsum("btr,ntr->btn", xp, wp)
    s = wp.sum(-1)  # [N, T]
    thr = torch.tensor([-24.0, 0.0, 24.0], dtype=torch.float64)
    lev = torch.tensor([-36.0, -12.0, 12.0, 36.0], dtype=torch.float64)
    want = ((lev[(p.unsqueeze(-1) >= thr).sum(-1)] + s.T.unsqueeze(0)) / 2).sum(1)
    assert torch.equal(layer.integer_forward(x)[0], want)
    # without xnor the same scheme reads sum x w, a different (and here non-negative-skewed) partial sum
    layer.cim_config = replace(table, array=replace(table.array, xnor=False))
    assert not torch.equal(layer.integer_forward(x)[0], want)
    with pytest.raises(CIMConfigError, match="xnor"):
        CIMConfig(array=ArrayConfig(xnor=True))


def _one_hot_table(cfg: CIMConfig) -> tuple[tuple[float, ...], ...]:
    lo, hi = cfg.psum_range
    thr, lev, step = adc_tables(cfg.adc, lo, hi, "cpu", torch.float64)
    p = torch.arange(lo, hi + 1, dtype=torch.float64)
    codes = torch.bucketize(adc_read(p, cfg.adc, thr, lev, step, None), lev)
    return tuple(tuple(float(v) for v in row) for row in torch.eye(len(lev), dtype=torch.float64)[codes])


def test_noise_table_one_hot_equals_noise_free_and_random_table_is_seeded():
    quant = QuantConfig(weight_bits=4, input_bits=4)
    clean_cfg = CIMConfig(adc=ADCConfig(bits=3), array=ArrayConfig(rows=16), quant=quant)
    table = _one_hot_table(clean_cfg)
    cfg = CIMConfig(adc=ADCConfig(bits=3, noise_table=table), array=clean_cfg.array, quant=quant)
    torch.manual_seed(3)
    clean = CIMLinear(40, 6, cim_config=clean_cfg)
    measured = CIMLinear(40, 6, cim_config=cfg)
    measured.load_state_dict(clean.state_dict())
    x = torch.rand(9, 40)
    assert torch.equal(measured.integer_forward(x)[0], clean.integer_forward(x)[0])
    blur = tuple(tuple(0.5 * a + 0.25 * b + 0.25 * c for a, b, c in zip(r, r[1:] + (r[0],), (r[-1],) + r[:-1],
                                                                        strict=True)) for r in table)
    noisy = CIMLinear(40, 6, cim_config=CIMConfig(adc=ADCConfig(bits=3, noise_table=blur), array=cfg.array,
                                                  quant=quant))
    noisy.load_state_dict(clean.state_dict())
    noisy.set_noise_seed(7)
    a = noisy.integer_forward(x)[0]
    noisy.set_noise_seed(7)
    assert torch.equal(a, noisy.integer_forward(x)[0]) and not torch.equal(a, clean.integer_forward(x)[0])
    with pytest.raises(CIMConfigError, match="already holds"):
        noisy.load_adc_offsets(np.zeros((8, 16, 7)))


def test_noise_table_draws_follow_the_table_and_bad_tables_are_named():
    cdf = torch.tensor([[0.2], [1.0]], dtype=torch.float64)  # psum 0: P(code 0) = 0.2; psum 1: always 0
    g = torch.Generator().manual_seed(0)
    codes = sample_codes(torch.zeros(20000, dtype=torch.float64), cdf, 0, g)
    assert abs(codes.double().mean().item() - 0.8) < 0.02
    assert sample_codes(torch.ones(100, dtype=torch.float64), cdf, 0, g).eq(0).all()
    with pytest.raises(CIMConfigError, match="probability distribution"):
        ADCConfig(bits=1, noise_table=((0.5, 0.6),))
    with pytest.raises(CIMConfigError, match="2 codes"):
        ADCConfig(bits=1, noise_table=((1.0,),))
    with pytest.raises(CIMConfigError, match="partial sums take 17 values"):
        CIMConfig(adc=ADCConfig(bits=1, noise_table=((1.0, 0.0),)), array=ArrayConfig(rows=16))
    with pytest.raises(CIMConfigError, match="not both"):
        ADCConfig(bits=1, noise_sigma=1.0, noise_table=((1.0, 0.0),))


def test_cached_lookup_tables_follow_the_loaded_chip():
    cfg = CIMConfig(adc=ADCConfig(bits=5), array=ARRAY, quant=QuantConfig(weight_bits=2, input_bits=4))
    layer = _chip_layer(cfg, seed=0)
    x = torch.rand(5, 100)
    first = layer.integer_forward(x)[0]
    other = np.random.default_rng(9).normal(0, 1.0, (2, 4, 31))
    layer.load_adc_offsets(other)  # in place: the cached tables must not survive
    fresh = CIMLinear(100, 9, cim_config=cfg)
    fresh.load_state_dict(layer.state_dict())
    got = layer.integer_forward(x)[0]
    assert torch.equal(got, fresh.integer_forward(x)[0]) and not torch.equal(got, first)
    layer.double()  # new buffer and dtype
    assert torch.equal(layer.integer_forward(x.double())[0], got.double())
