"""Quantizers as autograd Functions with an explicit straight-through backward.

Order inside a CIM layer, written down once: activations are quantized (clip to the layer's learned range,
round) and split into bit-planes; weights are quantized (round, clip) and split into cells; each column's
partial sum gets per-inference noise, then the ADC quantizes it (thresholds shifted by the chip's static
offsets), then the digital periphery shifts and adds. Backward: rounding passes the gradient through
unchanged (straight-through estimator), clipping only inside the clip range; the whole crossbar + ADC
readout is straight-through as well: a layer returns y_ideal + (y_cim - y_ideal).detach(), so gradients
are those of the quantized digital layer ("forward on the chip, backward in software", seed 001 Sec. III.B).

Activation range: each CIM layer learns its clip value alpha (PACT, Choi et al. 2018): inputs clip to
[0, alpha] (or [-alpha, alpha] signed) and the gradient reaching alpha is 1 for every clipped input and 0
inside the range. Weight scale: per layer, the mean-squared-error optimal step of the symmetric uniform
quantizer, found by Lloyd iterations (for ternary weights this is TWN's threshold/scale rule; a max-abs
scale puts ~87 % of Gaussian weights at 0 in 2 bits and has 4x the MSE).
"""

from __future__ import annotations

import torch

_LLOYD_ITERATIONS = 10


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


class _PACTQuant(torch.autograd.Function):
    """Integer codes round(clamp(x / s, lo, hi)) with s = alpha / top; PACT gradients to x and alpha.

    The layer multiplies the codes by s = alpha / top (differentiable), so d(codes * s)/d alpha must be 0
    inside the range and codes/top (= 1 at the top clip) outside: the code's own alpha-gradient is
    -codes / alpha inside and 0 outside.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, lo: float, hi: float, top: float) -> torch.Tensor:
        scale = alpha / top
        y = x / scale
        inside = (y >= lo) & (y <= hi)
        q = torch.clamp(torch.round(y), lo, hi)
        ctx.save_for_backward(inside, q, alpha)
        ctx.top = top
        return q

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inside, q, alpha = ctx.saved_tensors
        grad_x = grad * inside * (ctx.top / alpha)
        grad_alpha = -(grad * q * inside).sum() / alpha
        return grad_x, grad_alpha.reshape(alpha.shape), None, None, None


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor MSE-optimal step of the symmetric ``bits``-bit quantizer (no gradient)."""
    a = w.detach().abs()
    if bits == 1:
        return a.mean().clamp_min(1e-12)
    q = 2 ** (bits - 1) - 1
    scale = (a.max() / q).clamp_min(1e-12)
    for _ in range(_LLOYD_ITERATIONS):  # scale <- <|w|, n> / <n, n> with n the current integer assignment
        n = torch.clamp(torch.round(a / scale), 0, q)
        scale = ((a * n).sum() / (n * n).sum().clamp_min(1)).clamp_min(1e-12)
    return scale


def quantize_weight(w: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed integer weights (float tensor of integers) and their scale; STE gradient to ``w``.

    1 bit: sign (+-1) with scale mean|w|. b >= 2 bits: integers in [-(2^(b-1)-1), 2^(b-1)-1] with the
    MSE-optimal scale of :func:`weight_scale`, or the given fixed ``scale`` (a programmed chip's).
    """
    s = weight_scale(w, bits) if scale is None else scale
    if bits == 1:
        return _SignSTE.apply(w), s
    q = 2 ** (bits - 1) - 1
    return RoundClampSTE.apply(w, s, -q, q), s


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


def input_code_range(bits: int, signed: bool) -> tuple[int, int, int]:
    """(lowest code, highest code, code of the clip value alpha) of the activation quantizer."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 2 ** (bits - 1) - 1
    return 0, 2**bits - 1, 2**bits - 1


def quantize_input(
    x: torch.Tensor, bits: int, input_max: float | torch.Tensor, signed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer activations (unsigned [0, 2^b - 1] or two's complement) and their scale alpha / top.

    ``input_max`` is the clip value alpha: a float (fixed) or a learnable tensor (PACT gradients).
    """
    if signed and bits < 2:
        raise ValueError("signed inputs need at least 2 bits")
    lo, hi, top = input_code_range(bits, signed)
    alpha = torch.as_tensor(input_max, dtype=x.dtype, device=x.device)
    return _PACTQuant.apply(x, alpha, float(lo), float(hi), float(top)), alpha / top
