"""The mean-field readout (``ADCConfig.noise_mean``): every reading outputs its expected level over the read noise.

A layer's integer output is a weighted sum of its readings, so the mean-field layer's output must be the expected
output of the noisy layer exactly; the tests compare it with the average of many noisy forwards of the same chip
(Gaussian noise with Flash and SAR offsets, a noise table), on the fused engine and on the torch path.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nn import (
    ADCConfig,
    ArrayConfig,
    CIMConfig,
    CIMConfigError,
    CIMLinear,
    QuantConfig,
    RuntimeConfig,
    cim_layers,
    create_model,
)
from nn.adc import adc_read, adc_tables, mean_lookup_tables
from nn.convert import mean_field_twin

ARRAY = ArrayConfig(rows=32, n_macros=2, adcs_per_macro=4)
QUANT = QuantConfig(weight_bits=4, input_bits=3)
DRAWS = 400


def _table(n_p: int, n_codes: int, spread: float) -> tuple[tuple[float, ...], ...]:
    """P(code | partial sum): a discretized Gaussian around the sum's nominal code (a 3-bit ADC over 0..32)."""
    rows = []
    for p in range(n_p):
        w = np.exp(-0.5 * ((np.arange(n_codes) - p * (n_codes - 1) / (n_p - 1)) / spread) ** 2)
        rows.append(tuple(float(v) for v in w / w.sum()))
    return tuple(rows)


ADCS = {
    "gaussian, flash chip": (ADCConfig(bits=3, kind="flash", psum_max=28.0, noise_sigma=3.0), True),
    "gaussian, sar chip": (ADCConfig(bits=3, kind="sar", psum_max=28.0, noise_sigma=3.0), True),
    "gaussian, non-uniform levels, flash chip": (ADCConfig(bits=3, thresholds=(2.0, 4.0, 9.0, 14.0, 20.0),
                                                           levels=(0.0, 3.0, 5.0, 11.0, 17.0, 26.0),
                                                           noise_sigma=3.0), True),
    "noise table": (ADCConfig(bits=3, psum_max=28.0, noise_table=_table(33, 8, 0.8)), False),
}


def _pair(adc: ADCConfig, offsets: bool, fused: bool) -> tuple[CIMLinear, CIMLinear]:
    """(noisy layer, its mean-field twin): the same weights and chip."""
    cfg = CIMConfig(adc=adc, array=ARRAY, quant=QUANT, runtime=RuntimeConfig(fused=fused))
    torch.manual_seed(0)
    noisy = CIMLinear(70, 6, cim_config=cfg)
    if offsets:
        noisy.load_adc_offsets(np.random.default_rng(3).normal(0, 0.7, (2, 4, adc.n_thresholds)))
    mean = CIMLinear(70, 6, cim_config=replace(cfg, adc=replace(adc, noise_mean=True)))
    mean.load_state_dict(noisy.state_dict())
    return noisy, mean


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch path"])
@pytest.mark.parametrize("setup", list(ADCS))
def test_mean_field_output_is_the_expected_noisy_output(setup, fused):
    """Within 5 standard errors of the average of 400 noisy forwards, element by element, and far from the
    noise-free chip's output (the noise is a full ADC step: its mean is not the noise-free reading)."""
    adc, offsets = ADCS[setup]
    noisy, mean = _pair(adc, offsets, fused)
    noisy.set_noise_seed(0)
    x = torch.rand(5, 70, generator=torch.Generator().manual_seed(1))
    draws = torch.stack([noisy.integer_forward(x)[0] for _ in range(DRAWS)]).double()
    want, err = draws.mean(0), draws.std(0) / DRAWS**0.5
    got = mean.integer_forward(x)[0].double()
    assert err.min() > 0  # every output is noisy
    assert ((got - want).abs() <= 5 * err + 1e-6).all(), float(((got - want).abs() / err).max())
    if not adc.noise_table:  # the same chip without noise reads something else
        quiet = CIMLinear(70, 6, cim_config=replace(noisy.cim_config, adc=replace(adc, noise_sigma=0.0)))
        quiet.load_state_dict(noisy.state_dict())
        assert ((quiet.integer_forward(x)[0].double() - got).abs() > 5 * err).any()
    assert torch.equal(mean.integer_forward(x)[0], mean.integer_forward(x)[0])  # deterministic


@pytest.mark.parametrize("setup", list(ADCS)[:3])
def test_mean_tables_are_the_average_reading_with_thresholds_reordered(setup):
    """Per column and partial sum, against 20,000 noisy reads through adc_read (the Flash ones count, the SAR
    search), with offsets of 2 partial sums that reorder neighbouring thresholds and leave SAR codes missing."""
    adc = ADCS[setup][0]
    tiles, cols, n_draws = 2, 3, 20_000
    thr, lev, step = adc_tables(adc, 0, 32, "cpu", torch.float64)
    shift = 2.0 * torch.randn(tiles, cols, thr.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = mean_lookup_tables(adc, thr, lev, shift, tiles, cols, 0, 32)  # [T, C, 33]
    grid = torch.arange(33, dtype=torch.float64).expand(tiles, cols, 33)
    noise = adc.noise_sigma * torch.randn(n_draws, tiles, cols, 33, generator=torch.Generator().manual_seed(6),
                                          dtype=torch.float64)
    reads = adc_read(grid + noise, adc, thr, lev, step, shift.unsqueeze(2))
    err = reads.std(0) / n_draws**0.5
    assert ((got - reads.mean(0)).abs() <= 5 * err + 0.01).all()  # (+0.01: a tail no draw reached)


@pytest.mark.parametrize("setup", list(ADCS))
def test_fused_and_torch_path_read_the_same_means(setup):
    adc, offsets = ADCS[setup]
    x = torch.rand(9, 70, generator=torch.Generator().manual_seed(2))
    fused = _pair(adc, offsets, True)[1].integer_forward(x)[0]
    torch_path = _pair(adc, offsets, False)[1].integer_forward(x)[0]
    assert torch.allclose(fused.double(), torch_path.double(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["flash", "sar"])
def test_vanishing_noise_reads_the_noise_free_chip(kind):
    """sigma -> 0: the expected level is the noise-free level (offsets reordering thresholds included)."""
    adc = ADCConfig(bits=3, kind=kind, psum_max=28.0, noise_sigma=1e-7)
    _, mean = _pair(adc, True, False)
    quiet = CIMLinear(70, 6, cim_config=replace(mean.cim_config, adc=replace(adc, noise_sigma=0.0, noise_mean=False)))
    quiet.load_state_dict(mean.state_dict())
    x = torch.rand(9, 70, generator=torch.Generator().manual_seed(4))
    assert torch.equal(mean.integer_forward(x)[0], quiet.integer_forward(x)[0])


def test_mean_readout_needs_a_noise():
    with pytest.raises(CIMConfigError, match="noise_sigma > 0 or a noise_table"):
        ADCConfig(noise_mean=True)


def test_mean_field_twin_reads_every_noisy_layer_by_its_mean_and_leaves_the_model_alone():
    cfg = CIMConfig(adc=ADCConfig(bits=5, psum_max=31.0, noise_sigma=1.0), array=ArrayConfig(rows=32),
                    quant=QuantConfig(weight_bits=2, input_bits=4, input_max=4.0))
    torch.manual_seed(0)
    model = create_model("test_resnet", in_chans=1, cim_config=cfg).eval()
    twin, noisy = mean_field_twin(model)
    layers, twin_layers = cim_layers(model), cim_layers(twin)
    assert noisy == len(layers) > 0
    assert all(t.cim_config.adc.noise_mean and not m.cim_config.adc.noise_mean
               for m, t in zip(layers, twin_layers, strict=True))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(twin(x), twin(x))
        assert not torch.equal(model(x), model(x))  # the model itself still draws
    quiet, none = mean_field_twin(create_model("test_resnet", in_chans=1, cim_config=replace(
        cfg, adc=replace(cfg.adc, noise_sigma=0.0))))
    assert none == 0 and not any(layer.cim_config.adc.noise_mean for layer in cim_layers(quiet))
