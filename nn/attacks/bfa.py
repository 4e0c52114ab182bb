"""Bit-flip attack (BFA): progressive bit search on the bits the crossbars store.

After Rakin, He and Fan, "Bit-Flip Attack: Crushing Neural Network with Progressive Bit Search" (ICCV 2019)
and their reference code (elliothe/BFA, ``attack/BFA.py``); our own implementation. Each iteration:

1. one forward + backward on the attack batch gives dL/dw for every CIM layer;
2. per layer, every stored bit gets the first-order loss change of flipping it, dL/dw * (the weight change
   the flip makes); only bits whose flip raises the loss are candidates (the reference's gradient mask);
3. per layer, the top ``n`` candidates are flipped, the loss measured, and the layer restored (for a model
   that gives its forward as a chain of stages, ``model.stages()``, the trial forward starts at the stage
   holding the flipped layer, from that stage's input cached in step 1: a flip changes nothing before it);
4. the layer with the largest loss keeps its flips; if no layer raised the loss, ``n`` grows by one and the
   search repeats (the progressive part).

``candidates`` > 1 is our stronger variant for models whose forward the gradient describes badly (a chip path,
where the ADC quantizes and clips partial sums and the gradient is the straight-through one): at ``n = 1`` the
top ``candidates`` bits of every layer are each tried on their own, and the best of all trials is kept. The
gradient proposes, the model's own forward decides; ``candidates = 1`` is the reference's attack.

What a "bit" is: the cells the array stores. A ``b``-bit weight is a differential pair of columns,
w = w+ - w-, each a (b-1)-bit magnitude (:func:`nn.engine.weight_cells`), so a weight has 2(b-1) stored bits
and a flip moves it by +-2^i, always within [-(2^(b-1)-1), 2^(b-1)-1]; a 1-bit weight (+-1) is one stored
bit, and its flip negates it. (The reference flips two's-complement bits of 8-bit weights; a differential
array has no sign bit, so its flips are the magnitude bits of either column.) The scale of each layer is
frozen at the start (``frozen_weight_scale``): the chip is programmed, and flipped cells are read as they are.

A weight attack changes the model: :class:`StoredBits` writes the flipped integers back into the layers'
weights in place, and the cells themselves into ``stored_magnitudes``: a flip can leave both columns of a pair
holding bits (w+ = 3, w- = 4 stores -1), and the chip forward reads those columns, not the canonical split of
-1 (0, 1), which an ADC reads differently. A later ``StoredBits`` of the same model (a resumed or second attack)
starts from those cells. Attack a copy if the original is still needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nn.attacks._base import AttackError
from nn.convert import cim_layers
from nn.quant import quantize_weight

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flip:
    """One flipped stored bit."""

    layer: str
    weight_index: int  # flat index into the layer's weight tensor
    bit: int  # bit of the magnitude (0 = LSB); 1-bit weights: 0
    polarity: str  # 'pos' (w+ column), 'neg' (w- column), 'sign' (1-bit)
    value_before: int
    value_after: int


class StoredBits:
    """The integers a model's CIM layers store, as differential magnitudes, with their scales frozen."""

    def __init__(self, model: torch.nn.Module) -> None:
        names = {m: n for n, m in model.named_modules()}
        self.layers = cim_layers(model)
        if not self.layers:
            raise AttackError("the model has no CIM layers: nothing stores bits")
        self.names = [names[m] for m in self.layers]
        self.bits = [m.cim_config.quant.weight_bits for m in self.layers]
        self.pos: list[torch.Tensor] = []
        self.neg: list[torch.Tensor] = []
        with torch.no_grad():
            for m, b in zip(self.layers, self.bits, strict=True):
                w = m.weight.reshape(m._n, m._k)
                scale = m._weight_scale(w).detach().clone()
                w_int, _ = quantize_weight(w, b, scale)
                m.frozen_weight_scale = scale
                w_int = w_int.round()
                held = m._magnitudes(w_int)  # the cells an earlier attack left (w+ and w- may both hold bits)
                mags = torch.stack([w_int.clamp_min(0), (-w_int).clamp_min(0)]) if held is None else held
                mags = mags.round().to(torch.int64).reshape(2, *m.weight.shape)
                self.pos.append(mags[0].clone())
                self.neg.append(mags[1].clone())
                self._write(len(self.pos) - 1)

    def values(self, i: int) -> torch.Tensor:
        """Integer weights of layer ``i`` (shape of its weight)."""
        return self.pos[i] - self.neg[i]

    def n_bits(self, i: int) -> int:
        """Stored bits of layer ``i``."""
        per = 1 if self.bits[i] == 1 else 2 * (self.bits[i] - 1)
        return per * self.pos[i].numel()

    def _write(self, i: int) -> None:
        m = self.layers[i]
        with torch.no_grad():
            m.weight.copy_((self.values(i).to(m.weight.dtype) * m.frozen_weight_scale).reshape(m.weight.shape))
        m.store_magnitudes(self.pos[i], self.neg[i])  # the chip reads the cells, not a re-split of w

    def deltas(self, i: int) -> torch.Tensor:
        """[bits per weight, numel] the change of each weight's integer if that stored bit flipped."""
        w = self.values(i).reshape(-1)
        if self.bits[i] == 1:
            return (-2 * w).unsqueeze(0)
        mags = self.bits[i] - 1
        rows = []
        for sign, col in ((1, self.pos[i].reshape(-1)), (-1, self.neg[i].reshape(-1))):
            for bit in range(mags):
                on = (col >> bit) & 1
                rows.append(sign * (1 - 2 * on) * (1 << bit))  # setting a bit adds sign*2^bit, clearing removes it
        return torch.stack(rows)

    def flip(self, i: int, flat: torch.Tensor) -> list[Flip]:
        """Flip the stored bits ``flat`` (indices into ``deltas(i).reshape(-1)``) of layer ``i``."""
        numel = self.pos[i].numel()
        out = []
        pos, neg = self.pos[i].view(-1), self.neg[i].view(-1)
        for j in flat.tolist():
            row, idx = divmod(int(j), numel)
            before = int(pos[idx] - neg[idx])
            if self.bits[i] == 1:
                pos[idx], neg[idx] = neg[idx].clone(), pos[idx].clone()
                bit, pol = 0, "sign"
            else:
                mags = self.bits[i] - 1
                col, bit = (pos, row) if row < mags else (neg, row - mags)
                pol = "pos" if row < mags else "neg"
                col[idx] ^= 1 << bit
            out.append(Flip(self.names[i], idx, bit, pol, before, int(pos[idx] - neg[idx])))
        self._write(i)
        return out

    def replay(self, layer: str, weight_index: int, bit: int, polarity: str) -> Flip:
        """Flip the stored bit a :class:`Flip` recorded (by its layer name, weight index, bit and polarity)."""
        if layer not in self.names:
            raise AttackError(f"recorded flip names layer {layer!r}, which this model does not have")
        i = self.names.index(layer)
        numel, mags = self.pos[i].numel(), max(self.bits[i] - 1, 1)
        expected = ("sign",) if self.bits[i] == 1 else ("pos", "neg")
        if polarity not in expected or not 0 <= bit < mags or not 0 <= weight_index < numel:
            raise AttackError(f"recorded flip ({layer}, weight {weight_index}, bit {bit}, {polarity}) does not fit a "
                              f"{self.bits[i]}-bit layer of {numel} weights")
        row = mags + bit if polarity == "neg" else bit
        return self.flip(i, torch.tensor([row * numel + weight_index]))[0]

    def snapshot(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pos[i].clone(), self.neg[i].clone()

    def restore(self, i: int, snap: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.pos[i], self.neg[i] = snap[0].clone(), snap[1].clone()
        self._write(i)


class BFA:
    """Progressive bit search. ``step`` runs one iteration on the attack batch; ``run`` iterates until an
    evaluation callback reports accuracy at or below ``target_acc`` or ``max_flips`` bits are flipped."""

    def __init__(self, max_flips: int = 100, target_acc: float = 0.11, max_bits_per_step: int = 10,
                 candidates: int = 1) -> None:
        if max_flips < 1 or max_bits_per_step < 1 or candidates < 1:
            raise AttackError("max_flips, max_bits_per_step and candidates must be >= 1")
        if not 0 <= target_acc <= 1:
            raise AttackError(f"target_acc={target_acc!r} must be in [0, 1]")
        self.max_flips, self.target_acc, self.max_bits_per_step = max_flips, target_acc, max_bits_per_step
        self.candidates = candidates

    @staticmethod
    def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    @staticmethod
    def _loss_from(stages: list[torch.nn.Module], k: int, h: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            for stage in stages[k:]:
                h = stage(h)
            return float(F.cross_entropy(h, y))

    def step(self, model: torch.nn.Module, bits: StoredBits, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[list[Flip], float]:
        """One iteration: (the bits flipped, the attack-batch loss after them)."""
        model.eval()
        params = [m.weight for m in bits.layers]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        stages = _stages(model)
        inputs: list[torch.Tensor] = []
        try:
            if stages is None:
                logits = model(x)
            else:
                logits = x
                for stage in stages:
                    inputs.append(logits.detach())
                    logits = stage(logits)
            loss0 = F.cross_entropy(logits, y)
            grads = torch.autograd.grad(loss0, params)
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)
        gains = [(bits.deltas(i).to(g.dtype) * g.reshape(1, -1)).reshape(-1) for i, g in enumerate(grads)]
        base = float(loss0.detach())
        for n in range(1, self.max_bits_per_step + 1):
            best: tuple[float, int, torch.Tensor] | None = None
            for i, gain in enumerate(gains):
                top = gain.topk(min(self.candidates if n == 1 else n, gain.numel()))
                idx = top.indices[top.values > 0]  # the gradient mask: only flips that raise the loss
                if not len(idx):
                    continue
                k = 0 if stages is None else _stage_of(stages, bits.layers[i])
                for group in (idx.split(1) if n == 1 else [idx]):  # n = 1: each candidate bit on its own
                    snap = bits.snapshot(i)
                    bits.flip(i, group)
                    trial = self._loss(model, x, y) if stages is None else self._loss_from(stages, k, inputs[k], y)
                    bits.restore(i, snap)
                    if best is None or trial > best[0]:
                        best = (trial, i, group)
            if best is not None and best[0] > base:
                return bits.flip(best[1], best[2]), best[0]
        logger.warning("BFA: no flip of up to %d bits per layer raises the loss", self.max_bits_per_step)
        return [], base

    def run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            evaluate: Callable[[torch.nn.Module], float],
            on_flip: Callable[[Flip, float, float], None] | None = None,
            on_step: Callable[[], None] | None = None) -> tuple[int, float, bool]:
        """Attack ``model`` in place: (flips, accuracy after, reached target). ``on_flip`` hears of every
        flipped bit (with the step's loss and the accuracy after it), ``on_step`` of the end of every step."""
        bits = StoredBits(model)
        flips, acc = 0, evaluate(model)
        while acc > self.target_acc and flips < self.max_flips:
            done, loss = self.step(model, bits, x, y)
            if not done:
                break
            flips += len(done)
            acc = evaluate(model)
            for f in done:
                if on_flip:
                    on_flip(f, loss, acc)
            if on_step:
                on_step()
        return flips, acc, acc <= self.target_acc


def _stages(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The model's forward as a chain of modules, where it declares one (``model.stages()``)."""
    fn = getattr(model, "stages", None)
    return list(fn()) if callable(fn) else None


def _stage_of(stages: list[torch.nn.Module], layer: torch.nn.Module) -> int:
    """Index of the first stage holding ``layer`` (0 when none does: recompute everything)."""
    return next((k for k, s in enumerate(stages) if any(m is layer for m in s.modules())), 0)


def random_flips(model: torch.nn.Module, n: int, generator: torch.Generator, bits: StoredBits | None = None
                 ) -> list[Flip]:
    """The baseline: flip ``n`` stored bits drawn uniformly over all the model's stored bits (in place)."""
    bits = bits or StoredBits(model)
    sizes = torch.tensor([bits.n_bits(i) for i in range(len(bits.layers))], dtype=torch.float64)
    out = []
    for _ in range(n):
        i = int(torch.multinomial(sizes, 1, generator=generator))
        j = torch.randint(0, bits.n_bits(i), (1,), generator=generator)
        out += bits.flip(i, j)
    return out
