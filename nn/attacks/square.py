"""Square Attack, L-inf: score-based, gradient-free random search (Andriushchenko, Croce, Flammarion and Hein,
"Square Attack: a query-efficient black-box adversarial attack via random search", ECCV 2020; reference code
max-andr/square-attack, ``square_attack_linf``, BSD-3-Clause -- read, not copied).

Why it is here: it never asks for a gradient, so neither straight-through estimators through an ADC nor
binarized activations nor per-inference noise can mask anything from it. Where a model resists every
gradient attack but falls to this one, its robustness was gradient masking.

Threat model: untargeted, L-inf ball of radius ``eps`` around each image, images [B, C, H, W] in [0, 1],
only the model's logits are read. Algorithm, per image: start from vertical stripes (each column of the image
shifted by +eps or -eps, one sign per channel and column); then ``queries - 1`` times, pick a square window of
side s at a random position and set the perturbation inside it to +eps or -eps (one sign per channel), keep
the change only if it lowers the margin Z_y - max_{j != y} Z_j. The window's area is a fraction p of the
image, p following the reference's piecewise-constant schedule (``p_init`` halved at 0.1 %, 0.5 %, 2 %, 5 %,
10 %, 20 %, 40 %, 60 % and 80 % of the budget). A window whose new values would leave the image unchanged is
redrawn (the reference's ``while`` loop). An image stops as soon as its margin is <= 0 (fooled); each query
forwards only the images not fooled yet (not under ``reseed``, below). :attr:`Square.queries_used` holds, after
a call, the number of forward passes per image (1 for the start, +1 per tried window, +2 with ``reseed``).

Noisy models: every query sees one noise draw, so the kept "best" margin is the minimum of noisy scores and
the search stalls on a lucky draw as soon as the noise exceeds what one window changes (measured: logit noise
of 0.01 takes a small CNN from 28 % to 5 % fooled). Averaging (:class:`nn.attacks.EOT`, ``samples=K``: the mean
logits of K draws per query) shrinks the noise by sqrt(K) only. ``reseed`` (our addition, not in the
reference) removes it from the comparison instead, with common random numbers: every iteration reads the
candidate and the current best afresh, each read preceded by ``reseed(s)`` with the same new integer s (for
a model whose noise streams are seeded, e.g. the CIM layers' ``set_noise_seed``), so both reads see the same
noise and their difference is the window's effect; the best's fresh read is the bar, so no lucky draw is kept
(two queries per iteration). One noisy read cannot tell that an image is fooled (measured: images stopped at a
true margin of +0.25), so under ``reseed`` no image stops early: each runs its whole budget, lowering its margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nn.attacks._base import Attack, AttackError

# the reference's p schedule: p_init / 2**k after these fractions (in 1/10,000) of the query budget
_P_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, it: int, queries: int) -> float:
    """Fraction of the image the window covers at iteration ``it`` of ``queries`` (reference schedule)."""
    frac = int(it / queries * 10000)
    halvings = sum(frac > step for step in _P_STEPS)
    return p_init / 2 ** halvings if frac <= 10000 else p_init


class Square(Attack):
    """L-inf Square Attack: random square windows of +-eps, kept when they lower the margin."""

    def __init__(self, eps: float = 0.03, queries: int = 1000, p_init: float = 0.05, seed: int | None = 0,
                 reseed: Callable[[int], None] | None = None) -> None:
        if not 0 < eps <= 1:
            raise AttackError(f"eps={eps} must be in (0, 1] for an L-inf attack on [0, 1] images")
        if queries < 1:
            raise AttackError(f"queries={queries} must be >= 1")
        if not 0 < p_init <= 1:
            raise AttackError(f"p_init={p_init} must be in (0, 1] (the fraction of the image one window covers)")
        self.eps, self.queries, self.p_init, self.seed, self.reseed = eps, queries, p_init, seed, reseed
        self.queries_used = torch.zeros(0, dtype=torch.long)

    def margin(self, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Z_y - max_{j != y} Z_j per image (> 0: still classified right); one query."""
        with torch.no_grad():
            logits = self.get_logits(model, x, labels)
        real = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], -torch.inf).amax(1)
        return real - other

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise AttackError(f"Square needs images [B, C, H, W], got {tuple(images.shape)}")
        n, c, h, w = images.shape
        dev, eps = images.device, self.eps
        self.queries_used = torch.zeros(n, dtype=torch.long)
        if n == 0:
            return images
        gen = torch.Generator(device=dev)
        if self.seed is not None:
            gen.manual_seed(self.seed)
        else:
            gen.seed()

        def signs(*shape: int) -> torch.Tensor:
            return (torch.randint(0, 2, shape, generator=gen, device=dev).to(images.dtype) * 2 - 1) * eps

        best = (images + signs(n, c, 1, w)).clamp(0, 1)
        margin = self.margin(model, best, labels)
        used = torch.ones(n, dtype=torch.long, device=dev)
        rows = torch.arange(h, device=dev)[None, :, None]
        cols = torch.arange(w, device=dev)[None, None, :]
        for it in range(self.queries - 1):
            todo = (margin > 0).nonzero().flatten() if self.reseed is None else torch.arange(n, device=dev)
            if not len(todo):
                break
            x0, xb = images[todo], best[todo]
            delta = xb - x0
            side = min(max(round(math.sqrt(p_selection(self.p_init, it, self.queries) * h * w)), 1), h - 1, w - 1)
            top = torch.randint(0, h - side, (len(todo),), generator=gen, device=dev)[:, None, None]
            left = torch.randint(0, w - side, (len(todo),), generator=gen, device=dev)[:, None, None]
            window = (((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side))[:, None]
                      .expand(-1, c, -1, -1))
            value = signs(len(todo), c, 1, 1).expand(-1, -1, h, w)
            for _ in range(100):  # redraw the signs of windows that would not change the image
                x_new = (x0 + torch.where(window, value, delta)).clamp(0, 1)
                same = ((x_new - xb).abs() < 1e-7).logical_or(~window).flatten(1).all(1)
                if not same.any():
                    break
                value = torch.where(same[:, None, None, None], signs(len(todo), c, 1, 1).expand(-1, -1, h, w), value)
            if self.reseed is not None:  # common random numbers: candidate and best read under the same noise
                crn = int(torch.randint(0, 2**62, (1,), generator=gen, device=dev))
                self.reseed(crn)
                m = self.margin(model, x_new, labels[todo])
                self.reseed(crn)
                bar = self.margin(model, xb, labels[todo])
                used[todo] += 2
            else:
                m, bar = self.margin(model, x_new, labels[todo]), margin[todo]
                used[todo] += 1
            better = m < bar
            margin[todo] = torch.where(better, m, bar)
            best[todo] = torch.where(better[:, None, None, None], x_new, xb)
        self.queries_used = used.cpu()
        return best
