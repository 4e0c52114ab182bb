"""Torch side of cimcosim (CIM simulator, models, training, attacks); see the project README."""
