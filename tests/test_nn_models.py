"""Model registry: every tiny test_* twin builds, runs as float and as CIM, and backpropagates."""

from __future__ import annotations

import pytest
import torch

from nn import ADCConfig, ArrayConfig, CIMConfig, CIMConfigError, QuantConfig, cim_layers, create_model, list_models

TINY = [n for n in list_models() if n.startswith("test_")]


def test_registry_has_the_seed_networks_and_twins():
    names = set(list_models())
    assert {"vgg8", "densenet40", "resnet18", "resnet18_celu", "vgg8_fmnist", "densenet_fmnist", "densenet40_fmnist",
            "resnet18_fmnist"} <= names and len(TINY) == 3
    with pytest.raises(CIMConfigError, match="unknown model 'vgg99'"):
        create_model("vgg99")


def test_reference_shapes():
    assert create_model("vgg8")(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("vgg8_fmnist")(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    d40 = create_model("densenet40")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in d40.modules()) == 39  # 36 dense + stem + 2 transitions


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_float_and_cim(name):
    torch.manual_seed(0)
    size = 28 if name == "test_vgg" else 12
    x = torch.rand(2, 1, size, size)
    cfg = CIMConfig(adc=ADCConfig(bits=5), array=ArrayConfig(rows=32),
                    quant=QuantConfig(weight_bits=2, input_bits=4, input_max=4.0))
    model = create_model(name, num_classes=3, cim_config=cfg)
    assert cim_layers(model) and not any(type(m) in (torch.nn.Conv2d, torch.nn.Linear) for m in model.modules())
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", TINY)
def test_declared_stages_chain_to_the_forward(name):
    """``stages()`` (used by the bit-flip attack to recompute from a flipped layer on) is the forward."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    h = x
    for stage in model.stages():
        h = stage(h)
    assert torch.equal(h, model(x))


def test_first_layer_digital_keeps_the_image_layer_exact_through_set_digital_and_a_header():
    from dataclasses import replace

    from nn.convert import set_digital
    from pipeline.checkpoint import build_model, model_header

    torch.manual_seed(0)
    psq = CIMConfig(adc=ADCConfig.scheme("1bit"), array=ArrayConfig(rows=256, signed_psum=True),
                    quant=QuantConfig(weight_bits=4, input_bits=4))
    pinned = replace(psq, array=replace(psq.array, first_layer_digital=True))
    plain, kept = create_model("test_resnet", cim_config=psq), create_model("test_resnet", cim_config=pinned)
    kept.load_state_dict(plain.state_dict())
    for m in (plain, kept):
        set_digital(m, False)
    first, first_plain = cim_layers(kept)[0], cim_layers(plain)[0]
    assert first.digital and not any(layer.digital for layer in cim_layers(kept)[1:])
    assert not first_plain.digital
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        exact = first(x)
        set_digital(plain, True)
        ideal = first_plain(x)
        set_digital(plain, False)
        lossy = first_plain(x)
    assert torch.equal(exact, ideal) and not torch.equal(exact, lossy)  # 1-bit PSQ would binarize it
    rebuilt = build_model(model_header("test_resnet", 10, 1, "relu", pinned))
    set_digital(rebuilt, False)
    assert cim_layers(rebuilt)[0].digital and not cim_layers(rebuilt)[1].digital
