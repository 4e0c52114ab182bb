"""Turn a torch model into its CIM twin, and load one chip's ADC offsets into every CIM layer."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch

from nn.config import CIMConfig, CIMConfigError
from nn.layers import CIMConv2d, CIMLinear, _CIMMixin


def convert(model: torch.nn.Module, cim_config: CIMConfig | None = None) -> torch.nn.Module:
    """Replace every Linear/Conv2d (groups=1) by its CIM twin in place; assigns each layer's ADC base.

    Layers are numbered in ``model.modules()`` order and take consecutive logical ADCs, so the mapping
    onto the die's physical ADCs is the same every time for the same model. The first of them reads the
    image: with ``quant.first_input_bits`` set it gets that many input bits (its config says so), and with
    ``array.first_layer_digital`` it computes digitally for good (:func:`set_digital` leaves it so).
    """
    _swap_layers(model, cim_config)
    layers = cim_layers(model)
    base = 0
    for m in layers:
        m.adc_base = base
        base += m.n_adcs()
    q = cim_config.quant if cim_config is not None else None
    if layers and q is not None and q.first_input_bits is not None:
        first = layers[0]
        first.cim_config = replace(first.cim_config, quant=replace(first.cim_config.quant,
                                                                   input_bits=q.first_input_bits))
    if layers and cim_config is not None and cim_config.array.first_layer_digital:
        layers[0].always_digital = layers[0].digital = True
    return model


def _swap_layers(model: torch.nn.Module, cim_config: CIMConfig | None) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, _CIMMixin):
            continue
        if isinstance(child, torch.nn.Conv2d) and child.groups == 1:
            setattr(model, name, CIMConv2d.from_float(child, cim_config))
        elif isinstance(child, torch.nn.Linear):
            setattr(model, name, CIMLinear.from_float(child, cim_config))
        else:
            _swap_layers(child, cim_config)


def cim_layers(model: torch.nn.Module) -> list[Any]:
    """The CIM layers of a model, in mapping order."""
    return [m for m in model.modules() if isinstance(m, _CIMMixin)]


def load_chip(model: torch.nn.Module, table: Any, adc: str, wl_ratio: float, chip_id: int) -> None:
    """Load chip ``chip_id`` of design (``adc``, ``wl_ratio``) from an offset table into every CIM layer.

    ``table`` is a :class:`pipeline.offset_table.OffsetTable` (or anything with
    ``threshold_shifts_lsb(adc, wl_ratio, chip_id)``); only the layers' ``adc_shift`` buffers change.
    """
    layers = cim_layers(model)
    if not layers:
        raise CIMConfigError("model has no CIM layers; call nn.convert(model, cim_config) first")
    shifts = table.threshold_shifts_lsb(adc, wl_ratio, chip_id)
    for layer in layers:
        if layer.cim_config.adc.kind != adc:
            raise CIMConfigError(f"layer ADC kind {layer.cim_config.adc.kind!r} but the table design is {adc!r}")
        layer.load_adc_offsets(shifts)


def set_digital(model: torch.nn.Module, digital: bool = True) -> None:
    """Run every CIM layer as the integer digital layer (ideal, lossless ADC; no engine call) or on the chip
    (a layer marked ``always_digital`` stays digital).

    The digital path equals the CIM path with a lossless ADC bit for bit (tests), at float speed: model0 is
    trained on it, and "model1" (a chip's weights read out into a pure digital model) is evaluated on it.
    """
    for layer in cim_layers(model):
        layer.digital = digital or layer.always_digital


def mean_field_twin(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """(a copy of ``model`` whose noisy CIM layers read their expected levels, the number of such layers).

    Every layer with read noise (Gaussian or a table) gets ``ADCConfig(noise_mean=True)``: the same weights and
    chip, each reading replaced by its mean over the noise. Deterministic, so a score-based search does not stall
    on it and a gradient sees no draw: an attacker's surrogate of the noisy model, whose examples are then applied
    to the noisy model itself."""
    twin = copy.deepcopy(model)
    noisy = 0
    for layer in cim_layers(twin):
        cfg = layer.cim_config
        if cfg.adc.reads_noise:
            layer.cim_config = replace(cfg, adc=replace(cfg.adc, noise_mean=True))
            noisy += 1
    return twin, noisy


#: At this many input bits or fewer the clip is the quantization-MSE optimal one, not the quantile.
_MSE_CLIP_BITS = 4


def _mse_clip(x: torch.Tensor, top_clip: float, bits: int, signed: bool, n_grid: int = 100) -> float:
    """The clip alpha in (0, ``top_clip``] whose ``bits``-bit activation quantizer has the least mean squared
    error on the values ``x`` (a grid of ``n_grid`` candidates, 2^16 values at most). At few bits the step
    is alpha / top with top = 1..15, so a clip at the tail of the distribution rounds most activations to 0
    (a 2-bit signed quantizer has top = 1: a 99.99 % clip of 24 reads everything below 12 as zero)."""
    from nn.quant import input_code_range

    lo, hi, top = input_code_range(bits, signed)
    v = x[:: max(1, x.numel() // 2**16)]
    if not signed:
        v = v.clamp_min(0)
    alphas = torch.linspace(top_clip / n_grid, top_clip, n_grid, dtype=v.dtype, device=v.device)
    step = (alphas / top)[:, None]
    err = (torch.clamp(torch.round(v[None, :] / step), lo, hi) * step - v[None, :]).pow(2).mean(1)
    return float(alphas[int(torch.argmin(err))])


@torch.no_grad()
def calibrate_act_ranges(model: torch.nn.Module, x: torch.Tensor, quantile: float = 0.9999) -> dict[str, float]:
    """Set each CIM layer's activation clip ``act_max`` to the ``quantile`` of |its input| on batch ``x``
    (at <= 4 input bits: the clip below it with the least quantization error, :func:`_mse_clip`).

    Layers are calibrated in order (each sees the already-calibrated layers before it), on the digital path,
    with normalization layers using the batch's statistics (as training will; an untrained network's
    running statistics would shrink deep activations by orders of magnitude) and their running statistics
    left untouched. Returns {layer name: clip}. Training then learns the clips (PACT).
    """
    names = {m: n for n, m in model.named_modules()}
    layers = cim_layers(model)
    done: set[int] = set()

    def hook(mod: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        if id(mod) in done:
            return
        x = inputs[0].detach().flatten().float()
        if x.numel() > 2**24:  # torch.quantile's input limit; a strided subsample keeps it deterministic
            x = x[:: x.numel() // 2**24 + 1]
        clip = float(torch.quantile(x.abs(), quantile)) if x.numel() else 1.0
        q = mod.cim_config.quant
        if clip > 0 and q.input_bits <= _MSE_CLIP_BITS:
            clip = _mse_clip(x, clip, q.input_bits, q.input_signed)
        mod.act_max.fill_(clip if clip > 0 else 1.0)
        done.add(id(mod))

    was_training = model.training
    digital = [layer.digital for layer in layers]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        model.train()
        set_digital(model, True)
        model(x)
    finally:
        for h in handles:
            h.remove()
        for layer, d in zip(layers, digital, strict=True):
            layer.digital = d
        for m, sd in zip(norms, saved, strict=True):
            m.load_state_dict(sd)
        model.train(was_training)
    return {names[m]: float(m.act_max.detach()) for m in layers}
