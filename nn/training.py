"""Training loops: quantization-aware training of model0, chip-in-the-loop finetune, evaluation.

The loops know nothing of run folders: data arrive as in-memory tensors, every random choice comes from a
``torch.Generator`` the caller seeds, and the learning rate is a pure function of the step (cosine), so a
caller that saves the model and optimizer state can resume bit for bit. One step: forward (on the chip, or
on the digital path, as the model's CIM layers are set), cross-entropy, backward through the
straight-through estimators, optimizer update of the float latent weights; the next forward re-quantizes
them (on a chip: the cells are reprogrammed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # nn.attacks.substitute trains with these loops: no import cycle at run time
    from nn.attacks import Attack

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepStats:
    """One optimizer step."""

    step: int
    loss: float
    correct: int
    n: int
    lr: float


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; weight decay on weights and activation clips (PACT's L2 on alpha), none on biases and norms."""
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.dim() == 1 or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=lr)


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    """Cosine decay from ``base_lr`` at step 0 to 0 at ``total``."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def index_stream(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Batches of indices, a fresh permutation per pass; the last partial batch of a pass is dropped when the
    pass has at least one full batch (BatchNorm needs more than one sample)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        full = n // batch
        for i in range(max(full, 1)):
            yield perm[i * batch:(i + 1) * batch]


@contextlib.contextmanager
def frozen_batchnorm_stats(model: torch.nn.Module) -> Iterator[None]:
    """Leave every BatchNorm layer's running statistics as they are across the block (the forwards inside still
    normalize with their batch's statistics in train mode). The forwards update copies and the originals are
    put back untouched: never written in place, as a loss's graph may hold them."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [dict(m.named_buffers(recurse=False)) for m in norms]
    for m, buffers in zip(norms, saved, strict=True):
        for k, v in buffers.items():
            setattr(m, k, v.clone())
    try:
        yield
    finally:
        for m, buffers in zip(norms, saved, strict=True):
            for k, v in buffers.items():
                setattr(m, k, v)


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                steps: int, batch: int, generator: torch.Generator, lr_at: Callable[[int], float],
                first_step: int = 0, adv: Attack | None = None, adv_weight: float = 0.5,
                device: torch.device | str = "cpu",
                on_step: Callable[[StepStats], None] | None = None) -> list[StepStats]:
    """Run ``steps`` optimizer steps (global step numbers from ``first_step``) in train mode.

    With ``adv`` (e.g. PGD), each batch's loss is (1 - adv_weight) * CE(clean) + adv_weight * CE(adversarial),
    the adversarial examples generated against the current model (seed 000's PGD adversarial training; the
    attack runs the model in eval mode, as every attack does). The adversarial forward normalizes with its own
    batch's statistics but leaves BatchNorm's running statistics to the clean batches: averaged over clean and
    adversarial batches they fit neither, and clean test accuracy collapsed (measured: 28 % in eval mode, 60 %
    once the same weights' statistics were re-estimated on clean images). AdvProp (Xie et al., CVPR 2020) keeps
    separate statistics for adversarial batches for the same reason.
    """
    model.train()
    stream = index_stream(len(x), batch, generator)
    out = []
    for k in range(steps):
        step = first_step + k
        idx = next(stream)
        xb, yb = x[idx].to(device), y[idx].to(device)
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        if adv is not None:
            x_adv = adv(model, xb, yb)
            with frozen_batchnorm_stats(model):
                adv_logits = model(x_adv)
            loss = (1 - adv_weight) * loss + adv_weight * F.cross_entropy(adv_logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats = StepStats(step, float(loss.detach()), int((logits.argmax(1) == yb).sum()), len(yb), lr)
        out.append(stats)
        if on_step is not None:
            on_step(stats)
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 500,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Predicted labels [N] in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch].to(device)).argmax(1).cpu() for i in range(0, len(x), batch)])
    finally:
        model.train(was)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy as a fraction."""
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x, batch, device) == y).float().mean())


class Timer:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, *, batch: int, batches: int,
                          generator: torch.Generator, device: torch.device | str = "cpu") -> None:
    """Re-estimate every BatchNorm layer's running statistics on ``batches`` random batches of ``x`` (their
    exact average), weights untouched; the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    stream = index_stream(len(x), batch, generator)
    try:
        for _ in range(batches):
            model(x[next(stream)].to(device))
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom
        model.eval()
