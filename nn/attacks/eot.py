"""EOT: expectation over transformation (Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018;
"Obfuscated Gradients Give a False Sense of Security", ICML 2018) as a wrapper around any attack of this package.

Whatever is random at inference -- per-inference ADC noise, or which chip of a population will receive the
example -- is averaged out of the gradient: every input gradient the wrapped attack asks for becomes the mean
of ``samples`` gradients, each from a fresh forward of the model (new noise draws), or the mean over a given
set of ``models`` (e.g. chips drawn from the offset population; the attacked model is then ignored). Logits
returned to the attack, and every forward it makes itself (PGD judging its restarts), are averaged the same way, so
success checks see the expected prediction of the population or the noise, not one draw or the ignored model.
Shapes and defaults are those of the wrapped attack.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from nn.attacks._base import Attack, AttackError


class EOT(Attack):
    """Average the wrapped attack's input gradients over ``samples`` draws, or over ``models``."""

    def __init__(self, attack: Attack, samples: int = 1, models: Sequence[torch.nn.Module] | None = None) -> None:
        if samples < 1:
            raise AttackError(f"samples={samples} must be >= 1")
        if models is not None and len(models) == 0:
            raise AttackError("models must hold at least one model")
        self.attack, self.samples, self.models = attack, samples, list(models) if models is not None else None

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.models is None:
            return super().__call__(model, images, labels)
        states = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in self.models]
        try:
            for m, _, flags in states:
                m.eval()
                for p, _ in flags:
                    p.requires_grad_(False)
            return super().__call__(model, images, labels)
        finally:
            for m, was, flags in states:
                for p, flag in flags:
                    p.requires_grad_(flag)
                m.train(was)

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inner = copy.copy(self.attack)
        draws = self.models if self.models is not None else [model] * self.samples
        base = self.attack.input_grad

        def averaged(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
            grads, logits = zip(*(base(d, x, y, loss_fn) for d in draws), strict=True)
            return torch.stack(grads).mean(0), torch.stack(logits).mean(0)

        base_logits = self.attack.get_logits

        def mean_logits(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([base_logits(d, x) for d in draws]).mean(0)

        # this copy only; its own success checks (PGD judging restarts) see the mean logits too
        inner.input_grad = averaged  # type: ignore[method-assign,assignment]
        inner.get_logits = mean_logits  # type: ignore[method-assign,assignment]
        return inner.forward(model, images, labels)
