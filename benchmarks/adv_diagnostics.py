"""Is a trained model's adversarial accuracy robustness, label leaking or a BatchNorm-statistics artefact?

Run: .venv/bin/python benchmarks/adv_diagnostics.py --run-dir runs/sn4_e10 --tag sn_b4_n0_none_adv --eps 0.1
     [--images 200] [--threads 1] [--eot K] [--restarts R] [--no-probes] [--substitute] [--ste-window W]
     [--ste-smooth T [T ...]] [--noise-off] [--square Q [--square-p P] [--square-crn]] [--square-only]
     [--mean-field Q] [--margin-only] [--score-draws K] [--vote K [--vote-kappa KAPPA]]
Loads the tag's model0 on its own path (as the noise study attacks it) and prints the accuracy on the first
N test images: clean; with label-free perturbations of the same budget (uniform, random signs); under PGD
computed for the true label (10 steps, and 50 smaller ones), for the model's own prediction, and for a wrong
label (y + 1), with how often the model then predicts that wrong label; and the clean accuracy after
re-estimating BatchNorm's running statistics on clean training images. Label leaking shows as PGD with the
true label scoring far above clean and label-free noise; corrupted running statistics as a clean accuracy
that recalibration restores.

Then the strongest white-box attack we have, against gradient masking, scored as the noise study scores (an
image counts only if it is right clean and under the attack): PGD with the margin loss (50 steps, R random
restarts), the same through the digital twin (the model's own weights with an ideal ADC: forward and gradient
digital, examples applied to the model on its path, BPDA with the identity for the whole readout), and the
per-image worst case over every attack run here ("ensemble"; with ``--substitute``
it includes the noise study's black-box substitute attack, trained on 2,000 training images for 3 epochs).
``--eot K`` averages every white-box gradient over K noise draws (for models with per-inference noise);
every accuracy reads the same noise draws. ``--square Q`` adds the gradient-free Square Attack (L-inf, Q queries
per image, window fraction ``--square-p``; under ``--eot K`` each query reads the mean logits of K draws): what
no gradient attack finds but it does was gradient masking. Read noise stalls its search; ``--square-crn`` reads
candidate and best under the same noise seed instead (common random numbers, no EOT); ``--square-only`` runs it
alone. ``--mean-field Q`` adds attacks made on the mean-field twin (every noisy reading replaced by its expected
level, :attr:`nn.config.ADCConfig.noise_mean`: deterministic, so neither the search nor the gradient sees noise)
and applied to the noisy model: margin PGD, and with Q > 0 a Square Attack of Q queries. ``--margin-only`` runs
the margin-loss PGD alone (to try a larger ``--eot``). ``--score-draws K`` scores the per-image ensemble of a
noisy model under K read-noise draws as well: each draw alone, all K (the attacker may submit an example K times
and needs one wrong answer) and the majority vote (the defender reads K times).
``--vote K`` adds an attack on that vote: margin PGD (50 steps, R restarts) through EOT over K fresh draws with
each draw's margin clamped at ``--vote-kappa`` (PGD's ``confidence``: a draw fooled by more than kappa stops
pulling, so the gradient goes to the draws still right) and restarts judged by the least fooled draw.
``--ste-window W`` and ``--ste-smooth T ...`` add white-box PGD through other gradients of the partial-sum
readout (BPDA surrogates: the windowed straight-through estimator, and soft staircases of temperature T partial
sums, :attr:`nn.config.QuantConfig.psum_ste_smooth`).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from typing import Any

import torch
from _cells import cell_parser, load_cell

from nn.attacks import EOT, PGD, Attack, Square, Substitute
from nn.convert import cim_layers, mean_field_twin, set_digital
from nn.training import accuracy, predict, recalibrate_batchnorm
from pipeline.study_noise import _float_twin, survivors


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--eot", type=int, default=1, help="noise draws per white-box gradient (noisy models)")
    ap.add_argument("--restarts", type=int, default=3, help="random starts of the margin-loss PGD")
    ap.add_argument("--no-probes", action="store_true", help="only the strongest-attack section")
    ap.add_argument("--substitute", action="store_true", help="add the noise study's black-box attack")
    ap.add_argument("--ste-window", type=float, default=0.0, metavar="W",
                    help="add white-box PGD whose gradient is the windowed straight-through estimator of the "
                         "partial-sum readout (QuantConfig.psum_ste_window = W): another BPDA surrogate")
    ap.add_argument("--ste-smooth", type=float, nargs="+", default=[], metavar="T",
                    help="add white-box PGD through a soft staircase of temperature T partial sums per reading "
                         "(QuantConfig.psum_ste_smooth = T; BPDA with a smooth surrogate), one per T")
    ap.add_argument("--noise-off", action="store_true",
                    help="read the model without the read noise it was trained with (the weights-vs-noise "
                         "control: is its robustness in the weights or in the test-time noise?)")
    ap.add_argument("--square", type=int, default=0, metavar="Q",
                    help="add the gradient-free Square Attack with Q queries per image (0: off)")
    ap.add_argument("--square-p", type=float, default=0.3, metavar="P",
                    help="Square Attack's initial window fraction p_init (0.3, study-noise's; the reference: 0.05, "
                         "0.8 for robust MNIST)")
    ap.add_argument("--square-crn", action="store_true",
                    help="the Square Attack compares candidate and best under common noise draws (noisy models)")
    ap.add_argument("--square-only", action="store_true", help="only the Square Attack (with --square Q)")
    ap.add_argument("--margin-only", action="store_true",
                    help="only the margin-loss PGD (50 steps, --restarts R, through --eot K): a larger EOT alone")
    ap.add_argument("--mean-field", type=int, default=-1, metavar="Q",
                    help="add attacks made on the model's mean-field twin (every noisy reading replaced by its "
                         "expected level: ADCConfig.noise_mean) and applied to the noisy model: margin PGD and, with "
                         "Q > 0, a Square Attack of Q queries (a deterministic surrogate the search does not stall on)")
    ap.add_argument("--score-draws", type=int, default=1, metavar="K",
                    help="also score the per-image ensemble under K read-noise draws (noisy models): under each "
                         "draw, under all K (an attacker who submits each example K times) and under their "
                         "majority vote (a defender who reads K times)")
    ap.add_argument("--vote", type=int, default=0, metavar="K",
                    help="add margin PGD against a K-read majority vote: EOT over K draws, each draw's margin "
                         "clamped at --vote-kappa, restarts judged by the least fooled draw (noisy models)")
    ap.add_argument("--vote-kappa", type=float, default=0.0, metavar="KAPPA",
                    help="the clamp of each draw's margin in --vote (logits; 0: a draw once fooled stops pulling)")
    args = ap.parse_args()
    if args.vote < 0 or args.vote == 1 or not args.vote_kappa >= 0:
        ap.error("need --vote K >= 2 (0: off) and --vote-kappa >= 0")
    if args.mean_field < -1:
        ap.error("need --mean-field Q >= 0 (0: its PGD only)")
    if (args.square_only or args.square_crn) and not args.square:
        ap.error("--square-only and --square-crn need --square Q")
    if args.square < 0 or not 0 < args.square_p <= 1:
        ap.error("need --square >= 0 and 0 < --square-p <= 1")
    if not 0 < args.eps <= 1 or min(args.eot, args.restarts) < 1:
        ap.error("need 0 < --eps <= 1 and --eot, --restarts >= 1")
    if args.ste_window < 0 or any(not t > 0 for t in args.ste_smooth):
        ap.error("need --ste-window >= 0 and every --ste-smooth T > 0")
    if args.score_draws < 1:
        ap.error("need --score-draws K >= 1")
    if args.mean_field >= 0 and args.noise_off:
        ap.error("--mean-field and --noise-off: the mean-field twin needs the read noise")
    model, header, data = load_cell(ap, args, noise_off=args.noise_off,
                                    need_noise="--mean-field" if args.mean_field >= 0 else
                                    "--score-draws" if args.score_draws > 1 else
                                    "--vote" if args.vote else "")
    x, y = data.x_test, data.y_test
    gen = torch.Generator().manual_seed(0)
    eps, alpha = args.eps, 2 / 255 * args.eps / 0.03

    def same_noise() -> None:
        for layer in cim_layers(model):
            layer.set_noise_seed(12345)

    def acc(z: torch.Tensor, labels: torch.Tensor = y) -> float:
        same_noise()
        return 100 * accuracy(model, z, labels, batch=args.images)

    def wb(attack: Attack) -> Attack:
        return EOT(attack, samples=args.eot) if args.eot > 1 else attack

    rows: list[tuple[str, float]] = []
    if not args.no_probes:
        rows += probes(model, x, y, data.x_train, eps, alpha, acc, wb, gen)
    same_noise()
    ok = predict(model, x, args.images) == y
    survive = ok.clone()
    if args.no_probes:  # (the probes print it)
        rows.append(("clean", 100 * float(ok.float().mean())))
    draws = Draws(model, x, y, args.score_draws, args.images) if args.score_draws > 1 else None

    def scored(name: str, adv: torch.Tensor) -> None:
        same_noise()
        right = survivors(model, adv, y, ok, args.images)
        survive.mul_(right)
        rows.append((f"{name} (scored: right clean and attacked)", 100 * float(right.float().mean())))
        if draws is not None:
            draws.score(adv, name)

    if args.square_only and args.margin_only:
        ap.error("--square-only and --margin-only: choose one")

    def vote() -> None:
        if args.vote:
            pgd = PGD(eps, alpha / 2, 50, seed=12, loss="margin", restarts=args.restarts, confidence=args.vote_kappa)
            scored(f"vote attack: margin PGD (50 steps, {args.restarts} restarts), EOT {args.vote} with each draw's "
                   f"margin clamped at {args.vote_kappa:g}", EOT(pgd, samples=args.vote, success="all")(model, x, y))

    if args.margin_only:
        scored(f"PGD, margin loss, 50 steps of alpha/2, {args.restarts} restarts, EOT {args.eot}",
               wb(PGD(eps, alpha / 2, 50, seed=2, loss="margin", restarts=args.restarts))(model, x, y))
        vote()
        report(args, rows, survive, eps, len(x), draws)
        return
    if args.square_only:
        attack_square(args, model, x, y, ok, eps, wb, scored)
        report(args, rows, survive, eps, len(x), draws)
        return
    if args.substitute:  # the noise study's black-box attack, at its default budget
        sub = Substitute(_float_twin(header), data.x_train[-2000:], epochs=3, batch=128, seed=5)
        sub.fit(model)
        sub.attack = PGD(eps, alpha, seed=6)
        scored(f"black-box substitute PGD (agreement {sub.agreement:.2f})", sub(model, x, y))
    scored("PGD, cross-entropy, 10 steps", wb(PGD(eps, alpha, 10, seed=1))(model, x, y))
    scored(f"PGD, margin loss, 50 steps of alpha/2, {args.restarts} restarts",
           wb(PGD(eps, alpha / 2, 50, seed=2, loss="margin", restarts=args.restarts))(model, x, y))
    surrogates = ([("psum_ste_window", args.ste_window, f"the windowed estimator (W {args.ste_window:g})")]
                  if args.ste_window > 0 else [])
    surrogates += [("psum_ste_smooth", t, f"a soft staircase (T {t:g})") for t in args.ste_smooth]
    for i, (field, value, label) in enumerate(surrogates):
        kept = [(layer, layer.cim_config) for layer in cim_layers(model)]
        for layer, c in kept:
            layer.cim_config = replace(c, quant=replace(c.quant, **{field: value}))
        try:
            scored(f"PGD through {label}, cross-entropy, 10 steps",
                   wb(PGD(eps, alpha, 10, seed=7 + 2 * i))(model, x, y))
            scored(f"PGD through {label}, margin, 50 steps, {args.restarts} restarts",
                   wb(PGD(eps, alpha / 2, 50, seed=8 + 2 * i, loss="margin", restarts=args.restarts))(model, x, y))
        finally:
            for layer, c in kept:
                layer.cim_config = c
    vote()
    if args.square:
        attack_square(args, model, x, y, ok, eps, wb, scored)
    if args.mean_field >= 0:
        attack_mean_field(args, model, x, y, ok, eps, alpha, scored, rows)
    set_digital(model, True)
    try:
        twin_ce = PGD(eps, alpha, 10, seed=3)(model, x, y)
        twin_margin = PGD(eps, alpha / 2, 50, seed=4, loss="margin", restarts=args.restarts)(model, x, y)
    finally:
        set_digital(model, False)
    scored("digital twin's PGD (cross-entropy, 10 steps) applied", twin_ce)
    scored(f"digital twin's PGD (margin, 50 steps, {args.restarts} restarts) applied", twin_margin)
    report(args, rows, survive, eps, len(x), draws)


def attack_square(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  ok: torch.Tensor, eps: float, wb: Any, scored: Any) -> None:
    """The Square Attack, through EOT (``wb``) or with common random numbers (``--square-crn``; no image stops
    early there, so only the images right clean, ``ok``, are attacked: the others do not count)."""
    def reseed(seed: int) -> None:
        for layer in cim_layers(model):
            layer.set_noise_seed(seed)

    if args.square_crn:
        adv = x.clone()
        adv[ok] = Square(eps, args.square, p_init=args.square_p, seed=9, reseed=reseed)(model, x[ok], y[ok])
    else:
        adv = wb(Square(eps, args.square, p_init=args.square_p, seed=9))(model, x, y)
    how = ", common random numbers" if args.square_crn else ""
    scored(f"Square Attack (gradient-free, {args.square} queries, p_init {args.square_p:g}{how})", adv)


def attack_mean_field(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      ok: torch.Tensor, eps: float, alpha: float, scored: Any, rows: list[tuple[str, float]]) -> None:
    """Attacks made on the mean-field twin (the same weights, every noisy reading its expected level), applied to
    the noisy model: a deterministic surrogate on which score-based search does not stall and gradients see no
    noise (the expectation over the noise taken per reading, in closed form, rather than by sampling)."""
    twin, noisy = mean_field_twin(model)
    twin_ok = predict(twin, x, args.images) == y
    draws = []
    for seed in (12345, 54321):  # the scoring draw, and another one
        for layer in cim_layers(model):
            layer.set_noise_seed(seed)
        draws.append(predict(model, x, args.images))
    self_agree = float((draws[0] == draws[1]).float().mean())
    rows.append((f"noisy model under another noise draw: clean accuracy (agreement with the scoring draw "
                 f"{self_agree:.2f})", 100 * float((draws[1] == y).float().mean())))
    agree = float((predict(twin, x, args.images) == draws[0]).float().mean())
    rows.append((f"mean-field twin ({noisy} noisy layers): clean accuracy (agreement with the noisy model "
                 f"{agree:.2f})", 100 * float(twin_ok.float().mean())))
    scored(f"mean-field twin's PGD (margin, 50 steps, {args.restarts} restarts) applied",
           PGD(eps, alpha / 2, 50, seed=10, loss="margin", restarts=args.restarts)(twin, x, y))
    if args.mean_field > 0:
        scored(f"mean-field twin's Square Attack ({args.mean_field} queries, p_init {args.square_p:g}) applied",
               Square(eps, args.mean_field, p_init=args.square_p, seed=11)(twin, x, y))


class Draws:
    """The per-image ensemble scored under K read-noise draws (the scoring draw 12345 and K - 1 more): an image
    counts under a draw if that draw reads it right clean and under every attack; under the majority vote if the
    vote of its K readings is right clean and under every attack. Each attack is also scored alone under the vote
    (right clean and under that attack)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, batch: int):
        self.model, self.y, self.seeds, self.batch = model, y, [12345] + [54321 + i for i in range(k - 1)], batch
        self.per_draw, self.majority = self._right(x)
        self.clean_majority = self.majority.clone()
        self.alone: list[tuple[str, float]] = []

    def _right(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: right under each draw [K, N], and under the majority vote [N]."""
        preds = []
        for seed in self.seeds:
            for layer in cim_layers(self.model):
                layer.set_noise_seed(seed)
            preds.append(predict(self.model, images, self.batch))
        p = torch.stack(preds)
        return p == self.y, torch.mode(p, 0).values == self.y

    def score(self, images: torch.Tensor, name: str) -> None:
        per_draw, right = self._right(images)
        self.per_draw &= per_draw
        self.majority &= right
        self.alone.append((name, 100 * float((right & self.clean_majority).float().mean())))

    def rows(self) -> list[tuple[str, float]]:
        k, acc = len(self.seeds), 100 * self.per_draw.float().mean(1)
        return [(f"clean, under the majority vote of {k} draws", 100 * float(self.clean_majority.float().mean())),
                *((f"{name}: alone, under the majority vote of {k} draws", v) for name, v in self.alone),
                (f"ensemble under each of {k} noise draws: mean (min-max {acc.min():.1f}-{acc.max():.1f})",
                 float(acc.mean())),
                (f"ensemble: right under all {k} draws (an attacker who may submit each example {k} times)",
                 100 * float(self.per_draw.all(0).float().mean())),
                (f"ensemble under the majority vote of {k} draws (a defender who reads {k} times)",
                 100 * float(self.majority.float().mean()))]


def report(args: argparse.Namespace, rows: list[tuple[str, float]], survive: torch.Tensor, eps: float,
           n: int, draws: Draws | None = None) -> None:
    rows.append(("ensemble: right clean and under every attack above", 100 * float(survive.float().mean())))
    rows += draws.rows() if draws is not None else []
    title = f"{args.tag}{' (noise off)' if args.noise_off else ''}"
    print(f"| {title}, eps {eps:g}, {n} images | accuracy % |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")


def probes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_train: torch.Tensor, eps: float,
           alpha: float, acc: Any, wb: Any, gen: torch.Generator) -> list[tuple[str, float]]:
    """Label leaking and BatchNorm probes (plain accuracy of the perturbed images). Re-estimating BatchNorm
    changes the model, so it runs on a copy."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = (y + 1) % 10
    rows = [("clean", acc(x)),
            ("uniform noise +-eps", acc((x + (2 * torch.rand(x.shape, generator=gen) - 1) * eps).clamp(0, 1))),
            ("random signs x eps", acc((x + torch.sign(torch.rand(x.shape, generator=gen) - 0.5) * eps).clamp(0, 1))),
            ("PGD, true label, 10 steps", acc(wb(PGD(eps, alpha, 10, seed=1))(model, x, y))),
            ("PGD, true label, 50 steps of alpha/4", acc(wb(PGD(eps, alpha / 4, 50, seed=1))(model, x, y))),
            ("PGD, the model's own prediction", acc(wb(PGD(eps, alpha, 10, seed=1))(model, x, pred)))]
    adv = wb(PGD(eps, alpha, 10, seed=1))(model, x, wrong)
    rows += [("PGD for a wrong label (y+1): accuracy", acc(adv)),
             ("PGD for a wrong label (y+1): predicts that label", acc(adv, wrong))]
    copy_ = copy.deepcopy(model)
    recalibrate_batchnorm(copy_, x_train, batch=128, batches=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rows.append(("clean, BatchNorm statistics re-estimated on clean images",
                     100 * float((copy_(x).argmax(1) == y).float().mean())))
    return rows


if __name__ == "__main__":
    main()
