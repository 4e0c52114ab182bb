"""Turn a torch model into its CIM twin, and load one chip's ADC offsets into every CIM layer."""

from __future__ import annotations

from typing import Any

import torch

from nn.config import CIMConfig, CIMConfigError
from nn.layers import CIMConv2d, CIMLinear, _CIMMixin


def convert(model: torch.nn.Module, cim_config: CIMConfig | None = None) -> torch.nn.Module:
    """Replace every Linear/Conv2d (groups=1) by its CIM twin in place; assigns each layer's ADC base.

    Layers are numbered in ``model.modules()`` order and take consecutive logical ADCs, so the mapping
    onto the die's physical ADCs is the same every time for the same model.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, _CIMMixin):
            continue
        if isinstance(child, torch.nn.Conv2d) and child.groups == 1:
            setattr(model, name, CIMConv2d.from_float(child, cim_config))
        elif isinstance(child, torch.nn.Linear):
            setattr(model, name, CIMLinear.from_float(child, cim_config))
        else:
            convert(child, cim_config)
    base = 0
    for m in model.modules():
        if isinstance(m, _CIMMixin):
            m.adc_base = base
            base += m.n_adcs()
    return model


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
