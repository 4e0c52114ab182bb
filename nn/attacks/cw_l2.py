"""C&W L2: the Carlini-Wagner attack minimizing the L2 distance (S&P 2017, Sec. V.A; reference code
carlini/nn_robust_attacks l2_attack.py, BSD-2-Clause; our own implementation).

Threat model: white-box, untargeted by default (``targeted=True`` takes target labels in place of the true
ones), images in [0, 1]. Objective per image, in tanh space w (x = (tanh(w) + 1) / 2, so the box holds by
construction): ||x - x0||_2^2 + c * f6(x), f6 = max(Z_y - max_{j != y} Z_j + kappa, 0); Adam
(``learning_rate``) for up to ``max_iterations`` steps per constant, aborting when the batch loss has not
fallen by 0.01 % over a tenth of the steps (``abort_early``); a binary search over c per image
(``binary_search_steps``, from ``initial_const``: x10 until a success, then bisection; with 10 or more steps
the last one repeats at the upper bound). Each image keeps its own constant, bounds and best example.
Returns, per image, the adversarial example of smallest L2 found, or the original image where none was.
Shapes: images [B, ...] in [0, 1], labels [B] -> [B, ...]. Gradients reach the model through
:meth:`Attack.input_grad`, so EOT wrappers and "attack the chip" models plug in unchanged.
"""

from __future__ import annotations

import torch

from nn.attacks._base import Attack, AttackError
from nn.attacks._cw import BatchAdam, from_tanh_space, margin, per_image, succeeded, to_tanh_space


class CWL2(Attack):
    """Carlini-Wagner L2."""

    def __init__(self, confidence: float = 0.0, initial_const: float = 1e-3, binary_search_steps: int = 9,
                 max_iterations: int = 1000, learning_rate: float = 1e-2, abort_early: bool = True,
                 targeted: bool = False) -> None:
        if confidence < 0 or initial_const <= 0 or learning_rate <= 0:
            raise AttackError("confidence must be >= 0, initial_const and learning_rate > 0")
        if binary_search_steps < 1 or max_iterations < 1:
            raise AttackError("binary_search_steps and max_iterations must be >= 1")
        self.confidence, self.initial_const = confidence, initial_const
        self.binary_search_steps, self.max_iterations = binary_search_steps, max_iterations
        self.learning_rate, self.abort_early, self.targeted = learning_rate, abort_early, targeted

    def forward(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        w0 = to_tanh_space(images)
        x0 = from_tanh_space(w0)  # the reference measures distance to the tanh-reconstructed original
        lower = torch.zeros(b, dtype=images.dtype, device=images.device)
        upper = torch.full_like(lower, 1e10)
        const = torch.full_like(lower, self.initial_const)
        best_l2 = torch.full_like(lower, torch.inf)
        best = images.clone()
        every = max(self.max_iterations // 10, 1)
        for outer in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and outer == self.binary_search_steps - 1:
                const = upper.clone()
            modifier = torch.zeros_like(images)
            adam = BatchAdam(modifier, self.learning_rate)
            step_success = torch.zeros(b, dtype=torch.bool, device=images.device)
            prev = torch.inf
            all_images = torch.ones(b, dtype=torch.bool, device=images.device)
            for it in range(self.max_iterations):
                x = from_tanh_space(w0 + modifier)
                cw = per_image(const, x)

                def loss_fn(logits: torch.Tensor, y: torch.Tensor, cw: torch.Tensor = cw) -> torch.Tensor:
                    return (cw.flatten() * margin(logits, y, self.confidence, self.targeted)).sum()

                grad_x, logits = self.input_grad(model, x, labels, loss_fn)
                l2 = (x - x0).flatten(1).pow(2).sum(1)
                f = margin(logits, labels, self.confidence, self.targeted)
                loss = float((l2 + const * f).sum())
                ok = succeeded(logits, labels, self.confidence, self.targeted)
                step_success |= ok
                better = ok & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best = torch.where(per_image(better, x), x.detach(), best)
                if self.abort_early and it % every == 0:
                    if loss > prev * 0.9999:
                        break
                    prev = loss
                grad_w = (grad_x + 2 * (x - x0)) * (1 - torch.tanh(w0 + modifier) ** 2) / 2
                adam.step(modifier, grad_w, all_images)
            upper = torch.where(step_success, torch.minimum(upper, const), upper)
            lower = torch.where(step_success, lower, torch.maximum(lower, const))
            known = upper < 1e9
            const = torch.where(known, (lower + upper) / 2, torch.where(step_success, const, const * 10))
        return best
