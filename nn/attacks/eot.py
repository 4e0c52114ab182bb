"""EOT: expectation over transformation (Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018;
"Obfuscated Gradients Give a False Sense of Security", ICML 2018) as a wrapper around any attack of this package.

Whatever is random at inference -- per-inference ADC noise, or which chip of a population will receive the
example -- is averaged out of the gradient: every input gradient the wrapped attack asks for becomes the mean
of ``samples`` gradients, each from a fresh forward of the model (new noise draws), or the mean over a given
set of ``models`` (e.g. chips drawn from the offset population; the attacked model is then ignored). Logits
returned to the attack, and every forward it makes itself (PGD judging its restarts), are averaged the same way, so
success checks see the expected prediction of the population or the noise, not one draw or the ignored model.

``success="all"`` asks more of an example: the logits handed back are, per image, those of the draw (member)
farthest from being fooled -- for an untargeted attack the one whose true class leads by the most, for a targeted
one the one whose target trails by the most -- so an attack's own bookkeeping (C&W's success check, binary search
and best example; PGD's choice of restart) counts an example only when every member is fooled, where the mean
logits count it once one confident member carries the mean (a forward that names no labels gets the mean).
Gradients are the mean in both modes: the C&W margin is applied per member before averaging, so its gradient is
already that of the summed per-member margins, which vanish together only when every member is fooled by kappa.
Shapes and defaults are those of the wrapped attack.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from nn.attacks._base import Attack, AttackError, margin_loss

SUCCESS = ("mean", "all")


class EOT(Attack):
    """Average the wrapped attack's input gradients over ``samples`` draws, or over ``models``; ``success``:
    what the attack sees as logits, the members' mean ("mean") or per image the least fooled member's ("all")."""

    def __init__(self, attack: Attack, samples: int = 1, models: Sequence[torch.nn.Module] | None = None,
                 success: str = "mean") -> None:
        if samples < 1:
            raise AttackError(f"samples={samples} must be >= 1")
        if models is not None and len(models) == 0:
            raise AttackError("models must hold at least one model")
        if success not in SUCCESS:
            raise AttackError(f"success={success!r}: choose from {', '.join(SUCCESS)}")
        self.attack, self.samples, self.models = attack, samples, list(models) if models is not None else None
        self.success = success

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
        targeted = bool(getattr(self.attack, "targeted", False))

        def combine(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
            stacked = torch.stack(logits)  # [draws, B, classes]
            if self.success == "mean":
                return stacked.mean(0)
            lost = torch.stack([margin_loss(z, y) for z in logits])  # [draws, B]: > 0 where y lost
            worst = lost.argmax(0) if targeted else lost.argmin(0)
            return stacked[worst, torch.arange(stacked.shape[1], device=stacked.device)]

        def averaged(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
            grads, logits = zip(*(base(d, x, y, loss_fn) for d in draws), strict=True)
            return torch.stack(grads).mean(0), combine(list(logits), y)

        base_logits = self.attack.get_logits

        def population_logits(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            logits = [base_logits(d, x) for d in draws]
            return torch.stack(logits).mean(0) if y is None else combine(logits, y)

        # this copy only; its own success checks (PGD judging restarts) see the population's logits too
        inner.input_grad = averaged  # type: ignore[method-assign,assignment]
        inner.get_logits = population_logits  # type: ignore[method-assign,assignment]
        return inner.forward(model, images, labels)
