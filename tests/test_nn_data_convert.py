"""Data loaders on real (Debian) and tiny written files; model conversion and chip loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from nn import ADCConfig, ArrayConfig, CIMConfig, CIMConv2d, CIMLinear, QuantConfig
from nn.convert import cim_layers, convert, load_chip
from nn.data import FASHION_DIR, DataError, cifar10, fashion_mnist


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_files():
    ds = fashion_mnist(train=False, limit=500)
    x, y = ds.tensors
    assert x.shape == (500, 1, 28, 28) and x.min() >= 0 and x.max() <= 1 and x.std() > 0.1
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) == 10


def test_fashion_mnist_missing_is_clear(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fashion_mnist(train=True, root=tmp_path)


def test_cifar10_pickle_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    x, y = cifar10(tmp_path, train=True).tensors
    assert x.shape == (15, 3, 32, 32) and y.shape == (15,)
    assert cifar10(tmp_path, train=False).tensors[0].shape == (4, 3, 32, 32)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="malformed"):
        cifar10(tmp_path, train=False)
    with pytest.raises(DataError, match="not found"):
        cifar10(tmp_path / "nope", train=True)


class _FakeTable:
    def __init__(self, shape):
        self.shape = shape

    def threshold_shifts_lsb(self, adc, wl_ratio, chip_id):
        return np.random.default_rng(chip_id).normal(0, 0.7, self.shape).astype(np.float32)


def test_first_input_bits_keeps_the_image_at_its_own_precision():
    # a binary network thresholds its input at every layer; with first_input_bits only the first layer's input
    # (the image) keeps more bits, so two images that differ below the threshold no longer look the same
    from nn import create_model
    from pipeline.checkpoint import build_model, model_header

    quant = QuantConfig(weight_bits=1, input_bits=1)
    cfg = CIMConfig(adc=ADCConfig(bits=5), array=ArrayConfig(rows=16), quant=quant)
    f8 = CIMConfig(adc=cfg.adc, array=cfg.array, quant=QuantConfig(weight_bits=1, input_bits=1, first_input_bits=8))
    torch.manual_seed(0)
    plain = create_model("test_vgg", cim_config=cfg).eval()
    wide = create_model("test_vgg", cim_config=f8).eval()
    wide.load_state_dict(plain.state_dict())
    assert [m.cim_config.quant.input_bits for m in cim_layers(wide)][:3] == [8, 1, 1]
    assert {m.cim_config.quant.input_bits for m in cim_layers(plain)} == {1}
    for layer in cim_layers(plain) + cim_layers(wide):
        layer.digital = True
    x = torch.full((1, 1, 28, 28), 0.1)
    y = torch.full((1, 1, 28, 28), 0.4)  # both below the 1-bit threshold (act_max / 2 = 0.5)
    with torch.no_grad():
        first_plain, first_wide = cim_layers(plain)[0], cim_layers(wide)[0]
        assert torch.equal(first_plain(x), first_plain(y))
        assert not torch.equal(first_wide(x), first_wide(y))
        assert plain(x).shape == wide(x).shape == (1, 10)
    rebuilt = build_model(model_header("test_vgg", 10, 1, "relu", f8))  # the header round trip keeps it
    assert [m.cim_config.quant.input_bits for m in cim_layers(rebuilt)][:2] == [8, 1]
    with pytest.raises(Exception, match="first_input_bits=0"):
        QuantConfig(first_input_bits=0)


def test_convert_and_load_chip_changes_only_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5))
    cfg = CIMConfig(adc=ADCConfig(bits=5), array=ArrayConfig(rows=16, n_macros=2, adcs_per_macro=4),
                    quant=QuantConfig(weight_bits=2, input_bits=4))
    cim = convert(model, cfg)
    layers = cim_layers(cim)
    assert [type(m) for m in layers] == [CIMConv2d, CIMLinear]
    assert layers[1].adc_base == layers[0].n_adcs()
    x = torch.rand(3, 1, 6, 6)
    ideal = cim(x)
    params = {k: v.clone() for k, v in cim.named_parameters()}
    load_chip(cim, _FakeTable((2, 4, 31)), "flash", 10.0, 1)
    chip1 = cim(x)
    load_chip(cim, _FakeTable((2, 4, 31)), "flash", 10.0, 2)
    assert not torch.equal(chip1, ideal) and not torch.equal(chip1, cim(x))
    assert all(torch.equal(v, params[k]) for k, v in cim.named_parameters())
    with pytest.raises(Exception, match="table design is 'sar'"):
        load_chip(cim, _FakeTable((2, 4, 31)), "sar", 10.0, 1)
