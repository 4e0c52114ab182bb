"""Black-box transfer attack through a substitute model (seed 000 Sec. III.D and Fig. 2; after Papernot et
al., "Practical Black-Box Attacks against Machine Learning", AsiaCCS 2017, without the Jacobian augmentation).

The attacker sees only the target's output labels. It labels its own images (``attacker_images``) with the
target's predictions -- the target runs as deployed, with its noise and partial-sum quantization -- trains a
full-precision substitute of the same architecture on those labels (``make_substitute`` builds it untrained),
runs the wrapped white-box attack (PGD by default: eps 0.03, step 2/255, 10 iterations, the seed's values) on
the substitute, and returns those examples for the target. ``agreement`` after a call is the share of held-out
attacker images on which substitute and target agree (how well the substitute learned the target).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nn.attacks._base import Attack, AttackError
from nn.attacks.pgd import PGD
from nn.training import cosine_lr, make_optimizer, predict, train_steps


class Substitute(Attack):
    """Train a substitute on the target's labels, attack the substitute, transfer to the target."""

    def __init__(self, make_substitute: Callable[[], torch.nn.Module], attacker_images: torch.Tensor,
                 attack: Attack | None = None, epochs: int = 5, batch: int = 128, lr: float = 2e-3,
                 holdout: float = 0.1, seed: int = 0) -> None:
        if len(attacker_images) < 2 or epochs < 1 or batch < 1 or not lr > 0 or not 0 < holdout < 1:
            raise AttackError("need >= 2 attacker images, epochs >= 1, batch >= 1, lr > 0, 0 < holdout < 1")
        self.make_substitute, self.images = make_substitute, attacker_images
        self.attack = attack or PGD(seed=seed)
        self.epochs, self.batch, self.lr, self.holdout, self.seed = epochs, batch, lr, holdout, seed
        self.substitute: torch.nn.Module | None = None
        self.agreement = float("nan")

    def fit(self, target: torch.nn.Module) -> torch.nn.Module:
        """Label the attacker's images with ``target`` and train the substitute on them."""
        labels = predict(target, self.images, batch=500, device=self.images.device)
        n_hold = max(1, int(len(self.images) * self.holdout))
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.images), generator=gen)
        train, hold = order[n_hold:], order[:n_hold]
        with torch.random.fork_rng(devices=[]):  # seeded initialization without touching the caller's RNG
            torch.manual_seed(self.seed)
            sub = self.make_substitute().to(self.images.device)
        opt = make_optimizer(sub, self.lr, 5e-4)
        steps = self.epochs * max(1, len(train) // self.batch)
        train_steps(sub, opt, self.images[train], labels[train], steps=steps, batch=min(self.batch, len(train)),
                    generator=gen, lr_at=lambda s: cosine_lr(self.lr, s, steps), device=self.images.device)
        sub.eval()
        self.agreement = float((predict(sub, self.images[hold], batch=500) == labels[hold]).float().mean())
        self.substitute = sub
        return sub

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sub = self.substitute if self.substitute is not None else self.fit(model)
        return self.attack(sub, images, labels)
