"""PGD: projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018).

Threat model: white-box, untargeted, L-inf (default) or L2 ball of radius ``eps`` around each image,
images in [0, 1]. From a uniform random start inside the ball (``random_start``), ``steps`` ascent steps
on the cross-entropy loss: sign of the gradient times ``alpha`` (L-inf) or the L2-normalized gradient
times ``alpha`` (L2), each followed by projection onto the ball and the box. Shapes: images [B, ...] in
[0, 1], labels [B] -> adversarial images [B, ...]. Defaults are seed 000's (eps 0.03, alpha 2/255, 10 steps).

Against masked gradients (a defence is only as strong as the strongest attack tried on it), two knobs:
``loss="margin"`` ascends max_{j != y} Z_j - Z_y on the logits instead of the cross-entropy, which keeps a
useful gradient where the softmax saturates (Carlini and Wagner's f6 without the clamp; the DLR idea of
Croce and Hein's AutoAttack, ICML 2020, without its rescaling); ``restarts=R`` runs R random starts and keeps,
per image, the first example that fools the model, else the one of highest loss (Madry et al.'s restarts).
A restart attacks only the images no start has fooled yet (as AutoAttack's restarts do): a fooling example is
never replaced, so the others' starts would be wasted work.

``confidence=kappa`` (margin loss only) ascends min(margin, kappa), C&W's f6 with its clamp: an image (under EOT,
a draw or member) fooled by more than kappa stops pulling the gradient, so the others drive it. Through
:class:`nn.attacks.EOT` over K noise draws that is an attack on a K-read vote: the mean of per-draw hinges rises
with the number of draws fooled, where the unclamped mean margin can be carried by a few draws fooled by far.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nn.attacks._base import Attack, AttackError, margin_loss

LOSSES = ("ce", "margin")


class PGD(Attack):
    """Projected gradient descent in the L-inf or L2 ball."""

    def __init__(self, eps: float = 0.03, alpha: float = 2 / 255, steps: int = 10, norm: str = "linf",
                 random_start: bool = True, seed: int | None = None, loss: str = "ce", restarts: int = 1,
                 confidence: float | None = None) -> None:
        if not 0 < eps <= 1 and norm == "linf":
            raise AttackError(f"eps={eps} must be in (0, 1] for an L-inf attack on [0, 1] images")
        if not eps > 0:
            raise AttackError(f"eps={eps} must be > 0")
        if not alpha > 0 or steps < 1:
            raise AttackError(f"alpha={alpha} must be > 0 and steps={steps} >= 1")
        if norm not in ("linf", "l2"):
            raise AttackError(f"norm {norm!r}: choose 'linf' or 'l2'")
        if loss not in LOSSES:
            raise AttackError(f"loss {loss!r}: choose one of {', '.join(LOSSES)}")
        if restarts < 1 or (restarts > 1 and not random_start):
            raise AttackError(f"restarts={restarts} must be >= 1 (and > 1 only with a random start)")
        if confidence is not None and (loss != "margin" or not 0 <= confidence < math.inf):
            raise AttackError(f"confidence={confidence} needs loss='margin' and a finite value >= 0 (as C&W's)")
        self.eps, self.alpha, self.steps, self.norm = eps, alpha, steps, norm
        self.loss, self.restarts, self.confidence = loss, restarts, confidence
        self.random_start = random_start
        self.seed = seed
        self._gen: torch.Generator | None = None

    def _generator(self, device: torch.device) -> torch.Generator | None:
        """One stream per attack object (seeded once), so consecutive batches draw different starts."""
        if self.seed is None:
            return None
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(self.seed)
        return self._gen

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
        return delta * torch.clamp(self.eps / norms, max=1.0)

    def per_image_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "margin":
            margin = margin_loss(logits, labels)
            return margin if self.confidence is None else margin.clamp(max=self.confidence)
        return F.cross_entropy(logits, labels, reduction="none")

    def judge(self, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fooled, loss) per image of one start's examples."""
        with torch.no_grad():
            logits = self.get_logits(model, x, labels)
        return logits.argmax(1) != labels, self.per_image_loss(logits, labels)

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        best = self.one_start(model, images, labels)
        if self.restarts == 1:
            return best
        best_fooled, best_loss = self.judge(model, best, labels)
        for _ in range(self.restarts - 1):
            todo = (~best_fooled).nonzero().flatten()
            if not len(todo):
                break
            x = self.one_start(model, images[todo], labels[todo])
            fooled, loss = self.judge(model, x, labels[todo])
            better = fooled | (loss > best_loss[todo])
            idx = todo[better]
            best = best.index_copy(0, idx, x[better])
            best_fooled = best_fooled.index_fill(0, idx[fooled[better]], True)
            best_loss = best_loss.index_copy(0, idx, loss[better])
        return best

    def one_start(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One run of PGD from a (random) start."""
        loss_fn = (lambda z, t: self.per_image_loss(z, t).sum()) if self.loss == "margin" else None
        delta = torch.zeros_like(images)
        if self.random_start:
            u = torch.rand(images.shape, generator=self._generator(images.device), device=images.device,
                           dtype=images.dtype)
            delta = self.project((2 * u - 1) * self.eps)
        x = (images + delta).clamp(0, 1)
        for _ in range(self.steps):
            grad, _ = self.input_grad(model, x, labels, loss_fn)
            if self.norm == "linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
            x = (images + self.project(x + self.alpha * step - images)).clamp(0, 1)
        return x
