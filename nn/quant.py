"""Quantizers as autograd Functions with an explicit straight-through backward.

Order inside a CIM layer, written down once: activations are quantized (clip, round) and split into
bit-planes; weights are quantized (round, clip) and split into cells; each column's partial sum gets
per-inference noise, then the ADC quantizes it (thresholds shifted by the chip's static offsets), then
the digital periphery shifts and adds. Backward: rounding passes the gradient through unchanged
(straight-through estimator), clipping only inside the clip range; the whole crossbar + ADC readout is
straight-through as well: a layer returns y_ideal + (y_cim - y_ideal).detach(), so gradients are those of
the quantized digital layer ("forward on the chip, backward in software", seed 001 Sec. III.B).
"""

from __future__ import annotations

import torch


class RoundClampSTE(torch.autograd.Function):
    """round(x / scale) clamped to [lo, hi], as integers in float; gradient 1/scale inside the range."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        y = x / scale
        ctx.save_for_backward((y >= lo) & (y <= hi), scale)
        return torch.clamp(torch.round(y), lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inside, scale = ctx.saved_tensors
        return grad * inside / scale, None, None, None


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed integer weights (float tensor of integers) and their scale; STE gradient to ``w``."""
    if bits == 1:
        return _sign_ste(w), w.detach().abs().mean().clamp_min(1e-12)
    q = 2 ** (bits - 1) - 1
    scale = (w.detach().abs().max() / q).clamp_min(1e-12)
    return RoundClampSTE.apply(w, scale, -q, q), scale


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


def _sign_ste(w: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(w)


def quantize_input(
    x: torch.Tensor, bits: int, input_max: float, signed: bool = False
) -> tuple[torch.Tensor, float]:
    """Integer activations (unsigned [0, 2^b - 1] or two's complement) and their scale; STE inside the range."""
    if signed:
        if bits < 2:
            raise ValueError("signed inputs need at least 2 bits")
        scale = input_max / (2 ** (bits - 1) - 1)
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        scale = input_max / (2**bits - 1)
        lo, hi = 0, 2**bits - 1
    return RoundClampSTE.apply(x, torch.tensor(scale, dtype=x.dtype, device=x.device), lo, hi), scale
