"""Black-box substitute attack and white-box EOT on a noisy chip model (seed 000's attacks)."""

from __future__ import annotations

import copy

import pytest
import torch

from nn import ADCConfig, ArrayConfig, CIMConfig, QuantConfig, convert
from nn.attacks import EOT, PGD
from nn.attacks.substitute import Substitute
from nn.convert import calibrate_act_ranges, cim_layers
from nn.data import fashion_mnist
from nn.training import accuracy


def _cnn() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16 * 49, 10))


@pytest.fixture(scope="module")
def target():
    """A small CNN trained on the first 1,000 training images (the attacker never sees its weights or data)."""
    x, y = fashion_mnist(True, limit=1000).tensors
    torch.manual_seed(0)
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(4):
        for i in range(0, 1000, 100):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def test_substitute_learns_the_targets_labels_and_transfers(target):
    attacker_images = fashion_mnist(True, limit=2000).tensors[0][1200:]  # disjoint from the target's data
    attack = Substitute(_cnn, attacker_images, PGD(eps=0.1, seed=0), epochs=6, batch=50, seed=0)
    x, y = fashion_mnist(False, limit=100).tensors
    adv = attack(target, x, y)
    assert attack.agreement > 0.6  # well above the 0.1 of an untrained substitute
    assert adv.shape == x.shape and (adv - x).abs().max() <= 0.1 + 1e-6
    assert accuracy(target, adv, y) < accuracy(target, x, y) - 0.05  # the examples transfer
    assert all(p.grad is None for p in target.parameters())


def test_eot_over_noise_is_at_least_as_strong_as_one_draw(target):
    """The target on a noisy chip (W4/A8, 32-row arrays, a lossless 6-bit ADC plus Gaussian read noise of
    0.7 partial-sum units): PGD averaged over 4 noise draws per step fools it at least as well as PGD on one."""
    cfg = CIMConfig(adc=ADCConfig(bits=6, noise_sigma=0.7), array=ArrayConfig(rows=32),
                    quant=QuantConfig(weight_bits=4, input_bits=8))
    chip = convert(copy.deepcopy(target), cfg).eval()
    calibrate_act_ranges(chip, fashion_mnist(True, limit=256).tensors[0])
    x, y = fashion_mnist(False, limit=60).tensors

    def acc(images):
        for k, layer in enumerate(cim_layers(chip)):
            layer.set_noise_seed(100 + k)
        return accuracy(chip, images, y)

    clean = acc(x)
    plain = PGD(eps=0.03, steps=5, seed=1)(chip, x, y)
    eot = EOT(PGD(eps=0.03, steps=5, seed=1), samples=4)(chip, x, y)
    assert clean > 0.45  # 0.70 without noise
    assert acc(eot) <= acc(plain) + 0.05 and acc(eot) < clean
