"""Pieces shared by the three Carlini-Wagner attacks (nn/attacks/cw_*.py): the tanh change of variables, the
f6 margin objective, an Adam optimizer with per-image state, and perturbation norms.

Reference: N. Carlini and D. Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017,
and their code, github.com/carlini/nn_robust_attacks (BSD-2-Clause); this is our own PyTorch code.
Images live in [0, 1] here (the reference uses [-0.5, 0.5]): x = (tanh(w) + 1) / 2.
"""

from __future__ import annotations

import torch

from nn.attacks._base import margin_loss

#: The reference maps images into tanh space with arctanh(x * 1.999999): keep 1e-6 away from +-1.
TANH_SCALE = 0.999999


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1) * TANH_SCALE)


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


def margin(logits: torch.Tensor, labels: torch.Tensor, confidence: float, targeted: bool) -> torch.Tensor:
    """The f6 objective per image: max(Z_y - max_{j != y} Z_j + kappa, 0) untargeted (push the true class
    below the best other by kappa), max(max_{j != t} Z_j - Z_t + kappa, 0) targeted."""
    lost = margin_loss(logits, labels)
    return torch.clamp((lost if targeted else -lost) + confidence, min=0)


def succeeded(logits: torch.Tensor, labels: torch.Tensor, confidence: float, targeted: bool) -> torch.Tensor:
    """Adversarial with margin kappa: untargeted, Z_y + kappa below the best other class; targeted, Z_t - kappa
    above every other class. (The reference's untargeted check lowers Z_y by kappa instead, which accepts
    examples that do not reach the margin; foolbox 3 raises it, as here.)"""
    z = logits.clone()
    z.scatter_add_(1, labels[:, None], torch.full_like(labels[:, None], -confidence if targeted else confidence,
                                                         dtype=z.dtype))
    pred = z.argmax(1)
    return pred == labels if targeted else pred != labels


def per_image(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-image vector [B] so it broadcasts against ``like`` [B, ...]."""
    return t.view(-1, *([1] * (like.dim() - 1)))


class BatchAdam:
    """Adam (Kingma & Ba; the reference uses TensorFlow's, lr given, betas 0.9/0.999, eps 1e-8) on one tensor
    whose first axis is the image; each image has its own step count and can be reset or frozen alone."""

    def __init__(self, like: torch.Tensor, lr: float) -> None:
        self.lr = lr
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)

    def reset(self, mask: torch.Tensor) -> None:
        self.m[mask] = 0
        self.v[mask] = 0
        self.t[mask] = 0

    def step(self, param: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> None:
        """In-place update of ``param`` for the images where ``active`` is True."""
        a = per_image(active, grad)
        self.t = self.t + active.to(self.t.dtype)
        self.m = torch.where(a, 0.9 * self.m + 0.1 * grad, self.m)
        self.v = torch.where(a, 0.999 * self.v + 0.001 * grad * grad, self.v)
        t = per_image(self.t.clamp_min(1), grad)
        update = self.lr * (self.m / (1 - 0.9**t)) / ((self.v / (1 - 0.999**t)).sqrt() + 1e-8)
        param.sub_(torch.where(a, update, torch.zeros_like(update)))


def norms(adv: torch.Tensor, images: torch.Tensor, eq_tol: float = 1e-4) -> dict[str, torch.Tensor]:
    """Per-image L0 (pixels with any channel changed by more than ``eq_tol``, the reference's equality
    threshold), L2 and L-inf of adv - images."""
    d = (adv - images).flatten(2) if adv.dim() > 2 else (adv - images).unsqueeze(1)
    return {"l0": (d.abs() > eq_tol).any(1).sum(1).to(adv.dtype), "l2": d.flatten(1).norm(dim=1),
            "linf": d.abs().flatten(1).amax(1)}
