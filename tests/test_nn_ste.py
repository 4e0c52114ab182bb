"""The gradient estimators of coarse partial-sum readouts: windowed straight through (QuantConfig.psum_ste_window)
and the smooth soft-staircase surrogate (QuantConfig.psum_ste_smooth)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nn import ADCConfig, ArrayConfig, CIMConfig, CIMConfigError, CIMConv2d, CIMLinear, QuantConfig
from nn.engine import reading_share, weight_cells

ROWS, K, N = 16, 40, 6  # 3 tiles, the last one 8 rows short
CFG = CIMConfig(adc=ADCConfig.scheme("1bit"), array=ArrayConfig(rows=ROWS, signed_psum=True, xnor=True),
                quant=QuantConfig(weight_bits=3, input_bits=2))


def _brute_share(x_int: torch.Tensor, w_int: torch.Tensor, cfg: CIMConfig, window: float,
                 temperature: float = 0.0) -> torch.Tensor:
    """Every reading by hand: bit-plane p, weight slice s, tile t; P = sum over the tile's rows of (2 x_p - 1) c_s."""
    q, rows = cfg.quant, cfg.array.rows
    tiles = -(-w_int.shape[1] // rows)
    pad = tiles * rows - w_int.shape[1]
    cells = weight_cells(w_int, q.weight_bits, cfg.array.cell_bits)  # [S, 2, K, N]
    signed = torch.nn.functional.pad(cells[:, 0] - cells[:, 1], (0, 0, 0, pad))  # [S, K', N]
    xp = torch.nn.functional.pad(x_int, (0, pad)).long()
    thr = torch.tensor(cfg.adc.thresholds, dtype=torch.float64)
    lo, hi = float(thr.min()) - window, float(thr.max()) + window
    num = torch.zeros(x_int.shape[0], w_int.shape[0], tiles, dtype=torch.float64)
    for p in range(q.input_bits):
        drive = (2 * ((xp >> p) & 1) - 1).double().view(-1, tiles, rows)
        for s in range(signed.shape[0]):
            psum = torch.einsum("btr,trn->bnt", drive, signed[s].double().view(tiles, rows, -1))
            if temperature > 0:  # the soft staircase's slope, one sigmoid per level step
                lev = cfg.adc.levels
                weight = sum((lev[k + 1] - lev[k]) / temperature * torch.sigmoid((psum - t) / temperature)
                             * (1 - torch.sigmoid((psum - t) / temperature)) for k, t in enumerate(cfg.adc.thresholds))
            else:
                weight = ((psum >= lo) & (psum <= hi)).double()
            num += 2**p * 2**s * weight
    return num / ((2**q.input_bits - 1) * (2 ** signed.shape[0] - 1))


@pytest.mark.parametrize("window", [0.5, 2.0, 5.0])
def test_reading_share_counts_each_reading_inside_the_window_by_its_significance(window):
    gen = torch.Generator().manual_seed(4)
    x_int = torch.randint(0, 4, (9, K), generator=gen).double()
    w_int = torch.randint(-3, 4, (N, K), generator=gen).double()
    cells = weight_cells(w_int, 3, 1)
    got = reading_share(x_int, cells, CFG, window)
    want = _brute_share(x_int, w_int, CFG, window)
    assert torch.allclose(got, want, atol=1e-12)
    assert 0 < float(want.mean()) < 1  # the window cuts: neither everything nor nothing passes


@pytest.mark.parametrize("scheme,temperature", [("1bit", 1.0), ("3.5bit", 2.0), ("3.5bit", 6.0)])
def test_soft_staircase_slope_weights_each_reading_by_its_significance(scheme, temperature):
    cfg = replace(CFG, adc=ADCConfig.scheme(scheme))
    gen = torch.Generator().manual_seed(7)
    x_int = torch.randint(0, 4, (9, K), generator=gen).double()
    w_int = torch.randint(-3, 4, (N, K), generator=gen).double()
    got = reading_share(x_int, weight_cells(w_int, 3, 1), cfg, temperature=temperature)
    want = _brute_share(x_int, w_int, cfg, 0.0, temperature)
    assert torch.allclose(got, want, atol=1e-12)
    assert float(want.std()) > 0  # readings near a threshold count more than readings on a plateau


def test_reading_share_takes_one_estimator():
    x_int, cells = torch.zeros(1, K, dtype=torch.float64), weight_cells(torch.zeros(N, K), 3, 1).double()
    with pytest.raises(ValueError, match="exactly one"):
        reading_share(x_int, cells, CFG, 2.0, 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        reading_share(x_int, cells, CFG)


def _grads(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), layer.weight.grad.clone(), x.grad.clone()


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_the_window_changes_gradients_never_forward_values(kind):
    torch.manual_seed(5)
    plain = CIMLinear(K, N, cim_config=CFG) if kind == "linear" else CIMConv2d(4, N, 3, padding=1, cim_config=CFG)
    plain = plain.double()
    x = torch.rand(5, K, dtype=torch.float64) if kind == "linear" else torch.rand(2, 4, 5, 5, dtype=torch.float64)
    y0, gw0, gx0 = _grads(plain, x)

    def windowed(w: float) -> torch.nn.Module:
        m = type(plain).__new__(type(plain))
        m.__dict__.update(plain.__dict__)
        m.cim_config = replace(CFG, quant=replace(CFG.quant, psum_ste_window=w))
        return m

    wide = _grads(windowed(1e9), x)  # every reading inside: the digital layer's gradient
    assert torch.equal(wide[0], y0) and torch.allclose(wide[1], gw0) and torch.allclose(wide[2], gx0)
    narrow = _grads(windowed(2.0), x)
    assert torch.equal(narrow[0], y0)  # forward values are the chip's, bit for bit
    assert not torch.allclose(narrow[1], gw0)  # the gradient is not the digital layer's
    assert narrow[1].abs().sum() < gw0.abs().sum()  # clipped readings pass none


@pytest.mark.parametrize("window,temperature", [(3.0, 0.0), (0.0, 1.5)])
def test_linear_gradient_is_the_share_weighted_tile_products(window, temperature):
    torch.manual_seed(6)
    cfg = replace(CFG, quant=replace(CFG.quant, psum_ste_window=window, psum_ste_smooth=temperature))
    layer = CIMLinear(K, N, bias=False, cim_config=cfg).double()
    x = torch.rand(5, K, dtype=torch.float64)
    y, gw, _ = _grads(layer, x)
    plain = CIMLinear(K, N, bias=False, cim_config=CFG).double()
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(y, plain(x).detach())  # forward values are the chip's, bit for bit
    x_int, sx, w_int, sw = layer.quantize(x)
    share = _brute_share(x_int.detach(), w_int.detach(), cfg, window, temperature)  # [B, N, T]
    coef = torch.linspace(-1, 1, 5 * N, dtype=torch.float64).view(5, N) * (sx * sw).detach()
    tile = torch.arange(K) // ROWS  # each weight's tile
    dw_int = torch.einsum("bn,bnk,bk->nk", coef, share[:, :, tile], x_int.detach())
    w = layer.weight.detach().clone().requires_grad_(True)  # the chain through the weight quantizer's STE
    from nn.quant import quantize_weight
    wq, _ = quantize_weight(w, cfg.quant.weight_bits, layer._weight_scale(layer.weight))
    (wq * dw_int).sum().backward()
    assert torch.allclose(gw, w.grad)


def test_bad_window_is_named():
    with pytest.raises(CIMConfigError, match="psum_ste_window"):
        QuantConfig(psum_ste_window=-1.0)
    with pytest.raises(CIMConfigError, match="psum_ste_smooth"):
        QuantConfig(psum_ste_smooth=float("nan"))
    with pytest.raises(CIMConfigError, match="set one"):
        QuantConfig(psum_ste_window=2.0, psum_ste_smooth=1.0)
