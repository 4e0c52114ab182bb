"""FGSM: the fast gradient sign method (Goodfellow et al., "Explaining and Harnessing Adversarial Examples",
ICLR 2015).

Threat model: white-box, untargeted, L-inf ball of radius ``eps``, images in [0, 1]: one step
x + eps * sign(grad_x CE(f(x), y)), clipped to the box. Shapes: images [B, ...], labels [B] -> [B, ...].
"""

from __future__ import annotations

import torch

from nn.attacks._base import Attack, AttackError


class FGSM(Attack):
    """One signed-gradient step of size ``eps``."""

    def __init__(self, eps: float = 0.03) -> None:
        if not 0 < eps <= 1:
            raise AttackError(f"eps={eps} must be in (0, 1]")
        self.eps = eps

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grad, _ = self.input_grad(model, images, labels)
        return (images + self.eps * grad.sign()).clamp(0, 1)
