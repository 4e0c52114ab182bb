"""The pure-torch engine path (what an accelerator runs, and the fused engine's reference): one-pass readout of
noisy and shifted readings, and no host syncs or table rebuilds per forward once a chip is loaded.

A host sync on CUDA is an operation whose result the host must read (``.item()``, ``bool(t)``, ``torch.equal``,
``nonzero``, masked selection): on the CPU the same operations pass through torch's dispatcher, so a dispatch
mode counts them here, in CI, where no GPU is.
"""

from __future__ import annotations

import collections
import copy
import traceback
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nn.engine as engine
from nn import ADCConfig, ArrayConfig, CIMConfig, CIMLinear, QuantConfig, RuntimeConfig, cim_layers, create_model
from nn.adc import adc_read, adc_tables, cdf_keys, sample_codes, sar_effective_thresholds

TORCH_PATH = RuntimeConfig(fused=False)
ARRAY = ArrayConfig(rows=32, n_macros=2, adcs_per_macro=4)
#: Operations whose result the host reads (each a device-to-host sync on CUDA).
SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.equal", "aten.is_nonzero", "aten.masked_select",
            "aten._unique", "aten.unique")


class HostReads(TorchDispatchMode):
    """Counts host-reading operations by the source line (file:function) of the project that issued them."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(SYNC_OPS):
            ours = [f for f in traceback.extract_stack() if "/nn/" in f.filename]
            self.sites[f"{ours[-1].filename.rsplit('/', 1)[-1]}:{ours[-1].name}" if ours else str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["flash", "sar"])
def test_one_pass_count_equals_the_pass_per_threshold_readout(kind):
    """count_sorted on sorted (SAR: effective) thresholds reads every value as adc_read's loop/search does, with
    offsets large enough to reorder thresholds and leave codes missing, on integers, halves and noisy values."""
    adc = ADCConfig(bits=5, kind=kind)
    thr, lev, step = adc_tables(adc, 0, 31, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(0)
    tiles, cols = 3, 7
    shift = 2.0 * torch.randn(tiles, cols, 31, generator=gen)
    psum = torch.cat([torch.arange(-2, 34).repeat(tiles, 1).float(), torch.arange(-2, 34).repeat(tiles, 1) + 0.5,
                      40 * torch.rand(tiles, 50, generator=gen) - 4], 1)  # [T, M]
    psum = psum[:, :, None].expand(tiles, -1, cols).contiguous()  # [T, M, C]
    want = adc_read(psum, adc, thr, lev, step, shift.unsqueeze(1))
    t = thr + shift
    srt = torch.sort(sar_effective_thresholds(t) if kind == "sar" else t, -1).values.contiguous()
    assert torch.equal(lev[engine.count_sorted(psum, srt)], want)
    custom = ADCConfig(bits=2, thresholds=(0.5, 3.5, 12.0), levels=(0.0, 2.0, 8.0, 16.0))  # non-uniform
    thr_c, lev_c, step_c = adc_tables(custom, 0, 31, "cpu", torch.float32)
    assert torch.equal(lev_c[engine.count_sorted(psum, thr_c)],
                       adc_read(psum, custom, thr_c, lev_c, step_c, None))


@pytest.mark.parametrize("kind", ["flash", "sar"])
def test_torch_path_threshold_readout_equals_its_lookup_tables(kind):
    """On the torch path a noise of 1e-9 partial sums forces the sorted-threshold readout; it must read a chip
    exactly as the noise-free lookup tables (built by another route: a cumulative histogram, the SAR search)."""
    quant = QuantConfig(weight_bits=4, input_bits=4)
    torch.manual_seed(0)
    lut = CIMLinear(100, 9, cim_config=CIMConfig(adc=ADCConfig(bits=5, kind=kind), array=ARRAY, quant=quant,
                                                 runtime=TORCH_PATH))
    lut.load_adc_offsets(np.random.default_rng(0).normal(0, 1.5, (2, 4, 31)))
    direct = CIMLinear(100, 9, cim_config=CIMConfig(adc=ADCConfig(bits=5, kind=kind, noise_sigma=1e-9),
                                                    array=ARRAY, quant=quant, runtime=TORCH_PATH))
    direct.load_state_dict(lut.state_dict())
    direct.set_noise_seed(0)
    x = torch.rand(7, 100)
    assert torch.equal(lut.integer_forward(x)[0], direct.integer_forward(x)[0])
    lut.load_adc_offsets(np.random.default_rng(1).normal(0, 1.5, (2, 4, 31)))  # another chip, loaded in place
    direct.load_state_dict(lut.state_dict())
    assert torch.equal(lut.integer_forward(x)[0], direct.integer_forward(x)[0])


def test_one_pass_noise_table_draws_equal_the_loop_bit_for_bit():
    """The binary search over bit-pattern keys draws the loop's codes, also where u equals a cut exactly, on
    zero, denormal and all-one rows and cumulative sums a rounding above 1."""
    n_p, n_codes = 9, 7
    psum = torch.randint(0, n_p, (3, 400, 5), generator=torch.Generator().manual_seed(1)).float()
    u = torch.rand(psum.shape, generator=torch.Generator().manual_seed(7))  # the draws sample_codes will make
    p = torch.rand(n_p, n_codes, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cdf = (p.cumsum(-1) / p.sum(-1, keepdim=True))[:, :-1].float()
    cdf[4] = torch.sort(u.flatten()[:6]).values  # cuts equal to drawn u: ties decide by u >= cut
    cdf[5] = torch.tensor([0.0, 0.0, 1e-40, 1e-30, 0.5, 1.0000001])
    cdf[6], cdf[7] = 1.0, 0.0
    keys = cdf_keys(cdf)
    assert keys is not None and cdf_keys(cdf.double()) is None
    want = sample_codes(psum, cdf, 0, torch.Generator().manual_seed(7))
    got = sample_codes(psum, cdf, 0, torch.Generator().manual_seed(7), keys)
    assert torch.equal(got, want)
    assert (want[psum == 4] > 0).any() and (want[psum == 6] == 0).all() and (want[psum == 7] == n_codes - 1).all()


def _noise_table(n_p: int, n_codes: int, sigma: float) -> tuple[tuple[float, ...], ...]:
    rows = []
    for p in range(n_p):
        w = np.exp(-0.5 * ((np.arange(n_codes) - min(p, n_codes - 1)) / sigma) ** 2)
        rows.append(tuple(float(v) for v in w / w.sum()))
    return tuple(rows)


def _chip_model(cfg: CIMConfig, offsets: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("test_resnet", in_chans=1, cim_config=cfg)
    if offsets:
        rng = np.random.default_rng(0)
        for layer in cim_layers(model):
            a = layer.cim_config.array
            layer.load_adc_offsets(rng.normal(0, 0.5, (a.n_macros, a.adcs_per_macro, cfg.adc.n_thresholds)))
    return model


BASE = CIMConfig(adc=ADCConfig(bits=5, kind="flash", psum_max=31.0), array=ArrayConfig(rows=32),
                 quant=QuantConfig(weight_bits=2, input_bits=4, input_max=4.0), runtime=TORCH_PATH)
SETUPS = {
    "noise-free chip": (BASE, True),
    "gaussian noise, chip": (replace(BASE, adc=replace(BASE.adc, noise_sigma=0.5)), True),
    "gaussian noise, sar chip": (replace(BASE, adc=replace(BASE.adc, kind="sar", noise_sigma=0.5)), True),
    "noise table": (replace(BASE, adc=replace(BASE.adc, noise_table=_noise_table(33, 32, 0.7))), False),
    "multi-level inputs, chip": (replace(BASE, adc=replace(BASE.adc, psum_max=None),
                                         quant=replace(BASE.quant, input_mode="multilevel")), True),
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_torch_path_forward_and_backward_read_nothing_back_and_rebuild_no_table(setup, monkeypatch):
    """After a first forward (tables built, chip loaded), a forward and a training step issue no host-reading
    operation but the CPU-only weight-cells cache compare (``layers._cells``, skipped on accelerators), and the
    ADC tables are not rebuilt."""
    cfg, offsets = SETUPS[setup]
    model = _chip_model(cfg, offsets)
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        model.eval()(x)  # builds each layer's tables
    built = collections.Counter[str]()

    def counted(*args, **kwargs):
        built["adc_tables"] += 1
        return adc_tables(*args, **kwargs)

    monkeypatch.setattr(engine, "adc_tables", counted)
    reads = HostReads()
    with reads:
        with torch.no_grad():
            model.eval()(x)
        model.train()
        model(x).logsumexp(1).sum().backward()
    assert built["adc_tables"] == 0
    assert set(reads.sites) <= {"layers.py:_cells"}, reads.sites
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0


def test_flipped_cells_are_read_without_a_host_compare_and_as_the_compare_reads_them():
    """After bit flips (StoredBits writes weights and cells together) the chip forward trusts the cells without
    comparing them to the weights; a twin that must compare reads the same outputs."""
    from nn.attacks.bfa import StoredBits

    model = _chip_model(SETUPS["gaussian noise, chip"][0], True).eval()
    bits = StoredBits(model)
    for idx in (bits.values(0).reshape(-1) > 0).nonzero().reshape(-1)[:10].tolist():
        bits.replay(bits.names[0], idx, 0, "neg")  # both columns of a pair hold bits: not a canonical split
    twin = copy.deepcopy(model)  # fresh tensors: the twin's cells are checked by content
    for a, b in zip(cim_layers(model), cim_layers(twin), strict=True):
        assert a._stored_fresh() and not b._stored_fresh()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        model(x)  # the chip's offsets are checked once per load
    for m in (*cim_layers(model), *cim_layers(twin)):
        m.set_noise_seed(3)
    reads = HostReads()
    with reads, torch.no_grad():
        y = model(x)
    assert set(reads.sites) <= {"layers.py:_cells"}, reads.sites
    with torch.no_grad():
        assert torch.equal(y, twin(x))
