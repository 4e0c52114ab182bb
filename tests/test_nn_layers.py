"""CIM layers: exactness against the integer digital layer, ADC offset semantics, noise, gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nn import ADCConfig, ArrayConfig, CIMConfig, CIMConfigError, CIMConv2d, CIMLinear, QuantConfig
from nn.adc import adc_read, adc_tables
from nn.quant import quantize_input, quantize_weight


def _lossless(wb: int, cb: int, ib: int, rows: int = 32) -> CIMConfig:
    bits = int(np.ceil(np.log2(rows * (2**cb - 1) + 1)))
    return CIMConfig(adc=ADCConfig(bits=bits), array=ArrayConfig(rows=rows, cell_bits=cb),
                     quant=QuantConfig(weight_bits=wb, input_bits=ib))


@pytest.mark.parametrize("wb, cb, ib", [(1, 1, 1), (2, 1, 8), (4, 2, 4), (8, 2, 8), (8, 1, 3)])
def test_linear_equals_integer_digital_layer(wb, cb, ib):
    torch.manual_seed(wb * 10 + cb + ib)
    layer = CIMLinear(75, 13, cim_config=_lossless(wb, cb, ib)).double()
    x = torch.rand(6, 75, dtype=torch.float64) * 1.2
    y_cim, y_ideal, _ = layer.integer_forward(x)
    assert torch.equal(y_cim, y_ideal.detach())
    x_int, sx = quantize_input(x, ib, 1.0)
    w_int, sw = quantize_weight(layer.weight, wb)
    ref = (x_int @ w_int.t()) * sx * sw + layer.bias
    assert torch.allclose(layer(x), ref, rtol=0, atol=1e-9)


def test_signed_inputs_are_exact():
    torch.manual_seed(5)
    cfg = CIMConfig(adc=ADCConfig(bits=6), array=ArrayConfig(rows=32),
                    quant=QuantConfig(weight_bits=4, input_bits=6, input_signed=True))
    layer = CIMLinear(50, 7, cim_config=cfg).double()
    x = torch.randn(5, 50, dtype=torch.float64)
    y_cim, y_ideal, _ = layer.integer_forward(x)
    assert torch.equal(y_cim, y_ideal.detach()) and (quantize_input(x, 6, 1.0, True)[0] < 0).any()


@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv_equals_integer_digital_conv(stride, padding, dilation):
    torch.manual_seed(stride + padding + dilation)
    cfg = _lossless(4, 2, 4)
    conv = CIMConv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation, cim_config=cfg).double()
    x = torch.rand(2, 3, 11, 9, dtype=torch.float64)
    x_int, sx = quantize_input(x, 4, 1.0)
    w_int, sw = quantize_weight(conv.weight, 4)
    ref = F.conv2d(x_int, w_int, None, stride, padding, dilation) * sx * sw + conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(conv(x), ref, rtol=0, atol=1e-9)


def test_shifted_comparator_changes_exactly_its_band():
    adc = ADCConfig(bits=4, psum_max=15)
    thr, lev, step = adc_tables(adc, 0, 128, "cpu", torch.float64)
    psum = torch.linspace(-1, 17, 20001, dtype=torch.float64)
    shift = torch.zeros(15, dtype=torch.float64)
    j, delta = 6, 0.3
    shift[j] = delta
    base = adc_read(psum, adc, thr, lev, step, None)
    moved = adc_read(psum, adc, thr, lev, step, shift)
    band = (psum >= thr[j]) & (psum < thr[j] + delta)
    assert torch.equal(base != moved, band) and band.any()
    assert torch.all(base[band] - moved[band] == step)


def test_sar_shift_moves_all_thresholds_together():
    adc = ADCConfig(bits=5, psum_max=31, kind="sar")
    thr, lev, step = adc_tables(adc, 0, 128, "cpu", torch.float64)
    psum = torch.linspace(0, 31, 3001, dtype=torch.float64)
    shift = torch.full((31,), -1.4, dtype=torch.float64)  # one SA, every reference moved down
    got = adc_read(psum, adc, thr, lev, step, shift)
    assert torch.equal(got, adc_read(psum + 1.4, adc, thr, lev, step, None))


def test_table_one_schemes_and_bad_schemes():
    s = ADCConfig.scheme("2bit")
    thr, lev, step = adc_tables(s, -128, 128, "cpu", torch.float64)
    out = adc_read(torch.tensor([-30.0, -5.0, 5.0, 100.0], dtype=torch.float64), s, thr, lev, step, None)
    assert out.tolist() == [-36.0, -12.0, 12.0, 36.0]
    assert ADCConfig.scheme("3.5bit").n_thresholds == 10
    with pytest.raises(CIMConfigError, match="not strictly increasing"):
        ADCConfig(thresholds=(0.0, -1.0), levels=(0.0, 1.0, 2.0))
    with pytest.raises(CIMConfigError, match="need 3"):
        ADCConfig(thresholds=(0.0, 1.0), levels=(0.0, 1.0))
    with pytest.raises(CIMConfigError, match="bits=0"):
        ADCConfig(bits=0)
    with pytest.raises(CIMConfigError, match="weight_bits=-1"):
        QuantConfig(weight_bits=-1)


def test_offsets_load_into_buffers_and_noise_is_seeded():
    cfg = CIMConfig(adc=ADCConfig(bits=5, noise_sigma=0.0), array=ArrayConfig(rows=32, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=2, input_bits=4))
    torch.manual_seed(0)
    layer = CIMLinear(64, 10, cim_config=cfg)
    x = torch.rand(4, 64)
    clean = layer(x)
    assert torch.equal(clean, layer(x))  # noise off: deterministic
    rng = np.random.default_rng(1)
    layer.load_adc_offsets(rng.normal(0, 0.8, (2, 4, 31)))
    assert "adc_shift" in layer.state_dict() and layer.adc_shift.abs().sum() > 0
    assert not torch.equal(layer(x), clean)
    w_before = layer.weight.detach().clone()
    layer.clear_adc_offsets()
    assert torch.equal(layer(x), clean) and torch.equal(layer.weight, w_before)
    flat = layer.adc_map()
    assert flat.shape == layer.adc_shift.shape[:4] and flat.max() < 8
    with pytest.raises(CIMConfigError, match="does not match the mapping"):
        layer.load_adc_offsets(np.zeros((3, 4, 31)))
    with pytest.raises(CIMConfigError, match="expected 64"):
        layer(torch.rand(4, 63))
    noisy = CIMLinear(64, 10, cim_config=CIMConfig(adc=ADCConfig(bits=5, noise_sigma=1.0),
                                                   array=cfg.array, quant=cfg.quant))
    noisy.load_state_dict(layer.state_dict())
    noisy.set_noise_seed(3)
    a = noisy(x)
    noisy.set_noise_seed(3)
    assert torch.equal(a, noisy(x))
    noisy.set_noise_seed(4)
    assert not torch.equal(a, noisy(x))


def test_gradients_reach_weights_and_inputs():
    layer = CIMConv2d(2, 4, 3, padding=1, cim_config=_lossless(2, 1, 8))
    layer.load_adc_offsets(np.random.default_rng(0).normal(0, 0.5, (8, 16, layer.cim_config.adc.n_thresholds)))
    x = torch.rand(3, 2, 6, 6, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    assert layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_float_roundtrip():
    lin = torch.nn.Linear(10, 3)
    cim = CIMLinear.from_float(lin, _lossless(8, 2, 8))
    assert torch.equal(cim.to_float().weight, lin.weight)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    assert torch.equal(CIMConv2d.from_float(conv).to_float().weight, conv.weight)
    with pytest.raises(CIMConfigError, match="groups=1"):
        CIMConv2d(4, 4, 3, groups=2)


@pytest.mark.parametrize("kind", ["flash", "sar"])
def test_lookup_table_adc_equals_threshold_path(kind):
    """Noise-free partial sums use per-ADC lookup tables; a 1e-9 noise forces the threshold path."""
    array = ArrayConfig(rows=32, n_macros=2, adcs_per_macro=4)
    quant = QuantConfig(weight_bits=4, input_bits=4)
    torch.manual_seed(0)
    lut = CIMLinear(100, 9, cim_config=CIMConfig(adc=ADCConfig(bits=5, kind=kind), array=array, quant=quant))
    lut.load_adc_offsets(np.random.default_rng(0).normal(0, 1.5, (2, 4, 31)))
    direct = CIMLinear(100, 9, cim_config=CIMConfig(adc=ADCConfig(bits=5, kind=kind, noise_sigma=1e-9),
                                                    array=array, quant=quant))
    direct.load_state_dict(lut.state_dict())  # the chip travels with the state dict
    assert direct.has_offsets
    direct.set_noise_seed(0)
    x = torch.rand(7, 100)
    assert torch.equal(lut.integer_forward(x)[0], direct.integer_forward(x)[0])


def test_offset_flag_follows_every_way_the_chip_buffer_changes():
    """``has_offsets`` is remembered per buffer version (no host sync per forward on an accelerator); every way of
    loading or clearing a chip must still be seen, and the forward must read the chip that is loaded now."""
    cfg = CIMConfig(adc=ADCConfig(bits=5, kind="flash"), array=ArrayConfig(rows=32, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=4, input_bits=4))
    torch.manual_seed(0)
    layer, other = CIMLinear(100, 9, cim_config=cfg), CIMLinear(100, 9, cim_config=cfg)
    other.load_state_dict(layer.state_dict())
    x = torch.rand(7, 100)
    nominal = layer.integer_forward(x)[0]
    assert not layer.has_offsets
    layer.load_adc_offsets(np.random.default_rng(0).normal(0, 3.0, (2, 4, 31)))
    assert layer.has_offsets
    on_chip = layer.integer_forward(x)[0]
    assert not torch.equal(on_chip, nominal)
    layer.clear_adc_offsets()
    assert not layer.has_offsets and torch.equal(layer.integer_forward(x)[0], nominal)
    layer.adc_shift[0, 0, 0, 0, 3] = 2.0  # an in-place write of one threshold
    assert layer.has_offsets
    other.load_state_dict(layer.state_dict())  # copied in place into other's buffer
    assert other.has_offsets
    layer.adc_shift = torch.zeros_like(layer.adc_shift)  # a new buffer object
    assert not layer.has_offsets
    twin = copy.deepcopy(other)
    assert twin.has_offsets and torch.equal(twin.integer_forward(x)[0], other.integer_forward(x)[0])
