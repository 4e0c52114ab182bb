"""C&W L0: the Carlini-Wagner attack minimizing the number of changed pixels (S&P 2017, Sec. V.B; reference
code carlini/nn_robust_attacks l0_attack.py, BSD-2-Clause; our own implementation).

L0 is not differentiable, so the attack repeatedly solves an L2 problem on the pixels still allowed to change
and then freezes the pixels that mattered least: per round, from the previous solution (modifier and Adam
restarted), minimize ||x - x0||_2^2 + c * f(x) over the allowed pixels (f = the f6 margin with kappa 0.01, as
the reference), in tanh space with Adam, up to ``max_iterations`` steps per constant; a step with f below
1e-4 is a success (``abort_early``); without one, c doubles (same modifier, same Adam) until
``largest_const`` and the image ends with its last solution. After a success each allowed pixel's total
change |sum over channels of (x - x0)| times sum over channels of |gradient| ranks it; in ascending order the
pixels are frozen back to the original until one whose change exceeds 0.01 was frozen or 0.3 * sqrt(changed
pixels) were. The constant carries over between rounds (the reference's REDUCE_CONST=False).

Batched: each image keeps its own mask, constant, start, Adam state and step count, and runs its rounds on its
own clock: an image whose round succeeds freezes and starts its next round at the next step while the others go
on (a round of the whole batch would wait for its slowest image, ``max_iterations`` steps, every round).
Threat model, shapes and gradient hook as :mod:`nn.attacks.cw_l2`; "pixel" = one spatial position (all
channels), dimension 1 is channels.
"""

from __future__ import annotations

import logging

import torch

from nn.attacks._base import Attack, AttackError
from nn.attacks._cw import BatchAdam, from_tanh_space, margin, per_image, to_tanh_space

logger = logging.getLogger(__name__)
PROGRESS_STEPS = 500  # a progress line every this many steps (an L0 run has no fixed length)


class CWL0(Attack):
    """Carlini-Wagner L0."""

    def __init__(self, initial_const: float = 1e-3, largest_const: float = 2e6, const_factor: float = 2.0,
                 max_iterations: int = 1000, learning_rate: float = 1e-2, abort_early: bool = True,
                 targeted: bool = False) -> None:
        if not (const_factor > 1 and 0 < initial_const < largest_const):
            raise AttackError("need const_factor > 1 and 0 < initial_const < largest_const")
        if max_iterations < 1 or learning_rate <= 0:
            raise AttackError("max_iterations must be >= 1 and learning_rate > 0")
        self.initial_const, self.largest_const, self.const_factor = initial_const, largest_const, const_factor
        self.max_iterations, self.learning_rate = max_iterations, learning_rate
        self.abort_early, self.targeted = abort_early, targeted

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if images.dim() < 3:
            raise AttackError("C&W L0 needs images [B, C, ...] (pixels are positions, dimension 1 is channels)")
        b, dev, dt = images.shape[0], images.device, images.dtype
        x0 = from_tanh_space(to_tanh_space(images))
        valid = torch.ones(b, 1, *images.shape[2:], dtype=dt, device=dev)  # 1: the pixel may change
        const = torch.full((b,), self.initial_const, dtype=dt, device=dev)
        prev = images.clone()
        answer = images.clone()  # the last successful example; the original where none was found
        active = torch.ones(b, dtype=torch.bool, device=dev)
        fresh = torch.ones_like(active)
        start = to_tanh_space(images)
        modifier = torch.zeros_like(images)
        adam = BatchAdam(modifier, self.learning_rate)
        it = torch.zeros(b, dtype=torch.long, device=dev)  # steps at the current constant of the current round
        hit = torch.zeros_like(active)  # a success at the current constant (its example in ``solution``)
        solution, grad_at = images.clone(), torch.zeros_like(images)
        step = 0
        while active.any():
            step += 1
            if step % PROGRESS_STEPS == 0:
                logger.info("C&W L0: step %d, %d of %d images still searching, median %d pixels allowed", step,
                            int(active.sum()), b, int(valid.flatten(1).sum(1).median()))
            if fresh.any():  # a new round: from the last solution, modifier and Adam restarted
                m = per_image(fresh, images)
                start = torch.where(m, to_tanh_space(prev), start)
                modifier = torch.where(m, torch.zeros_like(modifier), modifier)
                adam.reset(fresh)
                it = torch.where(fresh, torch.zeros_like(it), it)
            x = from_tanh_space(start + modifier) * valid + (1 - valid) * images
            cw = per_image(const, x)

            def loss_fn(logits: torch.Tensor, y: torch.Tensor, c: torch.Tensor = cw) -> torch.Tensor:
                return (c.flatten() * margin(logits, y, 0.01, self.targeted)).sum()

            grad_x, logits = self.input_grad(model, x, labels, loss_fn)
            # gradient of the whole loss w.r.t. the modifier (what the reference ranks pixels by)
            grad_w = (grad_x + 2 * (x - x0)) * valid * (1 - torch.tanh(start + modifier) ** 2) / 2
            ok = active & (margin(logits, labels, 0.01, self.targeted) < 1e-4)
            solution = torch.where(per_image(ok, x), x.detach(), solution)
            grad_at = torch.where(per_image(ok, x), grad_w, grad_at)
            hit |= ok
            last = it == self.max_iterations - 1
            won = ok if self.abort_early else active & hit & last  # without abort: the constant's last success
            going = active & ~won
            adam.step(modifier, grad_w, going)
            lost = going & last  # no success at this constant: double it, same modifier and Adam
            it = torch.where(lost, torch.zeros_like(it), torch.where(going, it + 1, it))
            const = torch.where(lost, const * self.const_factor, const)
            active = active & ~(lost & (const >= self.largest_const))
            if won.any():
                w = per_image(won, images)
                answer = torch.where(w, solution, answer)
                prev = torch.where(w, solution, prev)
                valid = self._freeze(valid, won, solution, images, grad_at)
                active = active & ~(won & (valid.flatten(1).sum(1) == 0))
            fresh = won & active
            hit &= ~(won | lost)
        return answer

    @staticmethod
    def _freeze(valid: torch.Tensor, won: torch.Tensor, solution: torch.Tensor, images: torch.Tensor,
                grad: torch.Tensor) -> torch.Tensor:
        """Freeze the least useful allowed pixels of the images that just succeeded (the reference's rule)."""
        valid = valid.clone()
        total = ((solution - images).sum(1).abs() * grad.abs().sum(1)).flatten(1)  # [B, pixels]
        changed = ((solution - images).abs() > 1e-4).any(1).flatten(1).sum(1)
        for i in torch.nonzero(won).flatten().tolist():
            v = valid[i].view(-1)
            limit = 0.3 * float(changed[i]) ** 0.5
            did = 0
            for e in torch.argsort(total[i]).tolist():
                if v[e] == 0:
                    continue
                v[e] = 0
                did += 1
                if total[i, e] > 0.01 or did >= limit:
                    break
        return valid
