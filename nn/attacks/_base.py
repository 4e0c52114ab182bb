"""The small base class every attack derives from (torchattacks style).

An attack is configured once and called on ``(model, images, labels)``; it returns adversarial images in
[0, 1] of the same shape. ``__call__`` owns the model's state: it puts the model in eval mode, stops
parameter gradients, and restores both in ``finally``, so an attack never changes the model's train/eval
state, its parameters or their ``.grad``. Every model call goes through :meth:`Attack.get_logits`, the one
hook that "attack chip 2", "attack the digital readout" or "expectation over noise/chips" replace.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F


class AttackError(ValueError):
    """An attack was configured or called with invalid values."""


def check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Images must be a float batch in [0, 1] with one integer label each."""
    if not torch.is_floating_point(images) or images.dim() < 2:
        raise AttackError(f"images must be a float batch [B, ...], got {images.dtype} {tuple(images.shape)}")
    if images.numel() and (images.min() < 0 or images.max() > 1 or not torch.isfinite(images).all()):
        raise AttackError("images must lie in [0, 1] (the attack's valid input range); normalize inside the model")
    if labels.shape != images.shape[:1]:
        raise AttackError(f"labels {tuple(labels.shape)} do not match the batch of images {tuple(images.shape)}")


class Attack(ABC):
    """Base of all input attacks: state handling in ``__call__``, model calls through ``get_logits``."""

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_images(images, labels)
        was_training = model.training
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            adv = self.forward(model, images.detach(), labels.detach())
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)
        return adv.detach().clamp(0, 1)

    @abstractmethod
    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images for one batch (model already in eval mode, parameters frozen)."""

    def get_logits(self, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """The one place an attack calls the model; ``labels`` (when the caller judges success against them)
        let a wrapper pick whose logits to return (EOT's ``success="all"``); the model never sees them."""
        return model(x)

    def input_grad(self, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient of the summed loss w.r.t. ``x``, logits); parameters get no gradient."""
        x = x.detach().requires_grad_(True)
        logits = self.get_logits(model, x, labels)
        loss = (loss_fn or _ce_sum)(logits, labels)
        (grad,) = torch.autograd.grad(loss, x)
        return grad, logits.detach()


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, the best logit other than ``labels``' minus ``labels``' own (positive: the label lost)."""
    real = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -torch.inf).amax(1)
    return other - real


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="sum")
