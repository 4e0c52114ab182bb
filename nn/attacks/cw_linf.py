"""C&W L-inf: the Carlini-Wagner attack minimizing the L-inf distance (S&P 2017, Sec. V.C; reference code
carlini/nn_robust_attacks li_attack.py, BSD-2-Clause; our own implementation).

L-inf is not differentiable in a useful way, so the reference replaces it by a penalty on every coordinate
beyond a threshold tau: minimize c * f(x) + sum_i max(|x_i - x0_i| - tau, 0) (f = the f6 margin with
kappa = 0), in tanh space, with Adam. Schedule per image: start at tau = 1 and c = ``initial_const``;
optimize from the previous solution (the modifier and Adam restart at every new tau) for up to
``max_iterations`` steps; a step whose loss is below 1e-4 * c with the label changed is a success
(``abort_early`` stops there); without success c doubles (same modifier, same Adam) until
``largest_const``, and the image ends with its last solution; after a success tau becomes
min(tau, max|x - x0|) * ``decrease_factor``, and the search repeats until tau <= 1/256.

Batched: every image keeps its own tau, c, start point, Adam state and finished flag; images that succeed
in a round wait for the others. Threat model, shapes and gradient hook as :mod:`nn.attacks.cw_l2`.
"""

from __future__ import annotations

import torch

from nn.attacks._base import Attack, AttackError
from nn.attacks._cw import BatchAdam, from_tanh_space, margin, per_image, to_tanh_space


class CWLinf(Attack):
    """Carlini-Wagner L-inf."""

    def __init__(self, initial_const: float = 1e-5, largest_const: float = 20.0, const_factor: float = 2.0,
                 decrease_factor: float = 0.9, max_iterations: int = 1000, learning_rate: float = 5e-3,
                 abort_early: bool = True, targeted: bool = False) -> None:
        if not (0 < decrease_factor < 1 and const_factor > 1 and 0 < initial_const < largest_const):
            raise AttackError("need 0 < decrease_factor < 1, const_factor > 1, 0 < initial_const < largest_const")
        if max_iterations < 1 or learning_rate <= 0:
            raise AttackError("max_iterations must be >= 1 and learning_rate > 0")
        self.initial_const, self.largest_const, self.const_factor = initial_const, largest_const, const_factor
        self.decrease_factor, self.max_iterations = decrease_factor, max_iterations
        self.learning_rate, self.abort_early, self.targeted = learning_rate, abort_early, targeted

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, dev, dt = images.shape[0], images.device, images.dtype
        x0 = from_tanh_space(to_tanh_space(images))
        tau = torch.ones(b, dtype=dt, device=dev)
        const = torch.full((b,), self.initial_const, dtype=dt, device=dev)
        prev = images.clone()  # the last successful example (the answer of images that stop)
        active = torch.ones(b, dtype=torch.bool, device=dev)
        fresh = torch.ones_like(active)
        start = to_tanh_space(images)
        modifier = torch.zeros_like(images)
        adam = BatchAdam(modifier, self.learning_rate)
        while active.any():
            m = per_image(fresh, images)
            start = torch.where(m, to_tanh_space(prev), start)
            modifier = torch.where(m, torch.zeros_like(modifier), modifier)
            adam.reset(fresh)
            fresh = torch.zeros_like(active)
            done = ~active
            solution = prev.clone()
            for _ in range(self.max_iterations):
                x = from_tanh_space(start + modifier)
                cw, t = per_image(const, x), per_image(tau, x)

                def loss_fn(logits: torch.Tensor, y: torch.Tensor, c: torch.Tensor = cw) -> torch.Tensor:
                    return (c.flatten() * margin(logits, y, 0.0, self.targeted)).sum()

                grad_x, logits = self.input_grad(model, x, labels, loss_fn)
                excess = (x - x0).abs() - t
                loss = const * margin(logits, labels, 0.0, self.targeted) + excess.clamp_min(0).flatten(1).sum(1)
                pred = logits.argmax(1)
                changed = pred == labels if self.targeted else pred != labels
                ok = ~done & (loss < 1e-4 * const) & changed
                solution = torch.where(per_image(ok, x), x.detach(), solution)
                done |= ok
                if self.abort_early and done.all():
                    break
                grad_w = (grad_x + torch.sign(x - x0) * (excess > 0)) * (1 - torch.tanh(start + modifier) ** 2) / 2
                adam.step(modifier, grad_w, ~done)
            won = done & active
            actual = (solution - images).flatten(1).abs().amax(1)
            tau = torch.where(won, torch.minimum(tau, actual) * self.decrease_factor, tau)
            prev = torch.where(per_image(won, images), solution, prev)
            fresh = won.clone()
            lost = active & ~won
            const = torch.where(lost, const * self.const_factor, const)
            active = active & ~(lost & (const >= self.largest_const)) & ~(won & (tau <= 1 / 256))
        return prev
