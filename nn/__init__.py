"""Torch CIM simulator: crossbar layers with bit-serial inputs, sliced weights and per-chip ADC offsets.

nn knows nothing of SPICE: per-chip offsets arrive as threshold shifts in ADC LSB units (the chips
stage's ``offset_lsb``, see pipeline/offset_table.py).
"""

from nn.config import ADCConfig, ArrayConfig, CIMConfig, CIMConfigError, QuantConfig, RuntimeConfig
from nn.convert import cim_layers, convert, load_chip
from nn.layers import CIMConv2d, CIMLinear
from nn.models import create_model, list_models

__all__ = ["ADCConfig", "ArrayConfig", "CIMConfig", "CIMConfigError", "CIMConv2d", "CIMLinear", "QuantConfig",
           "RuntimeConfig", "cim_layers", "convert", "create_model", "list_models", "load_chip"]
