"""CLI wrappers of the network stages (train, finetune): argument parsing and progress only."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from pipeline.config import ConfigError

log = logging.getLogger("cimcosim")

QUIET = False
"""Set by ``--quiet``: no progress bars (and warnings only in the log)."""


def bars_off() -> bool | None:
    """tqdm's ``disable``: True when quiet, else None (a bar on a terminal, none in a log file)."""
    return True if QUIET else None


def int_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    return v


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train model0 (quantization-aware, software) or a seed-000 training mode")
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--model", required=True, help="registered model (see nn.list_models())")
    t.add_argument("--tag", default=None, help="output folder name under train/ (default: the model name)")
    t.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10:FOLDER")
    t.add_argument("--subset", type=int_arg, default=None, help="training images (first N)")
    t.add_argument("--test-subset", type=int_arg, default=None, help="test images (first N)")
    t.add_argument("--epochs", type=int_arg, default=None)
    t.add_argument("--batch", type=int_arg, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int_arg, default=None)
    t.add_argument("--weight-bits", type=int_arg, default=None, help="default: the seed's for the model")
    t.add_argument("--input-bits", type=int_arg, default=None, help="default: the seed's for the model")
    t.add_argument("--first-input-bits", type=int_arg, default=None,
                   help="input bits of the first layer, which reads the image (default: --input-bits)")
    adc = t.add_mutually_exclusive_group()
    adc.add_argument("--adc-bits", type=int_arg, default=None, help="uniform ADC bits (5)")
    adc.add_argument("--psq", choices=["1bit", "2bit", "3.5bit"], default=None,
                     help="input-split partial-sum quantization (seed 000 Table I; 256-row signed columns)")
    t.add_argument("--psq-encoding", choices=["xnor", "unipolar"], default=None,
                   help="input-split rows: a 0 bit drives -1 (xnor, default; Table I's centred partial sums) or "
                        "leaves the row off (unipolar, the control)")
    t.add_argument("--psq-ste-window", type=float, default=None, metavar="W",
                   help="input-split gradient: weight each row tile by the share of its readings within W partial "
                        "sums of the scheme's thresholds (a hard-tanh-like estimator; default 0: straight through)")
    t.add_argument("--psq-ste-smooth", type=float, default=None, metavar="T",
                   help="input-split gradient: weight each row tile by its readings' mean slope of a soft staircase "
                        "of temperature T partial sums (a smooth surrogate, BPDA; not with --psq-ste-window)")
    t.add_argument("--rows", type=int_arg, default=None, help="rows per sub-array (128; 256 with --psq)")
    t.add_argument("--act", choices=["relu", "celu"], default=None)
    noise = t.add_mutually_exclusive_group()
    noise.add_argument("--noise-sigma", type=float, default=None,
                       help="Gaussian noise on every partial sum, partial-sum units (training and test)")
    noise.add_argument("--noise-table", default=None, help="CSV of P(code | psum) (see pipeline/noise_table.py)")
    t.add_argument("--chip-train", action="store_true",
                   help="train and test through the simulated ADC without noise or PSQ (noise-free control)")
    t.add_argument("--adv-train", action="store_true", help="PGD adversarial training (eps 0.03, 2/255, 10 it.)")
    t.add_argument("--adv-eps", type=float, default=None)
    t.add_argument("--adv-steps", type=int_arg, default=None)
    t.add_argument("--first-layer-digital", action="store_true",
                   help="the image-reading first layer computes digitally (no ADC, no noise); the rest on the chip")
    t.add_argument("--bn-recal", type=int, default=None, metavar="N",
                   help="after every epoch re-estimate BatchNorm statistics on N training batches "
                        "(0: the running averages)")
    t.add_argument("--init-from", default=None, metavar="TAG",
                   help="warm start from the finished model0 of another train tag (same model and data) "
                        "instead of a fresh initialization, e.g. to train a PSQ or noisy model from a pretrained one")
    t.add_argument("--device", default="cpu", help="cpu | cuda")
    t.add_argument("--workers", type=int_arg, default=None, help="torch threads (default: all cores)")


def run_train(args: argparse.Namespace) -> None:
    from pipeline.train import train, train_config

    if args.psq_encoding is not None and args.psq is None:
        raise ConfigError("--psq-encoding sets how input-split rows are driven: give it with --psq")
    for flag in ("psq_ste_window", "psq_ste_smooth"):
        if getattr(args, flag) is not None and args.psq is None:
            raise ConfigError(f"--{flag.replace('_', '-')} shapes the gradient of input-split readouts: give it with "
                              "--psq")

    cfg = train_config(args.model, data=args.data, subset=args.subset, test_subset=args.test_subset,
                       epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                       weight_bits=args.weight_bits, input_bits=args.input_bits,
                       first_input_bits=args.first_input_bits, adc_bits=args.adc_bits,
                       psq=args.psq, psq_encoding=args.psq_encoding, psq_ste_window=args.psq_ste_window,
                       psq_ste_smooth=args.psq_ste_smooth, rows=args.rows, act=args.act,
                       noise_sigma_psum=args.noise_sigma, noise_table=args.noise_table,
                       adv_train=args.adv_train or None, adv_eps=args.adv_eps, adv_steps=args.adv_steps,
                       chip_train=args.chip_train or None,
                       init_from=args.init_from, first_layer_digital=args.first_layer_digital or None,
                       bn_recal_batches=args.bn_recal)
    _threads(args.workers)
    _check_device(args.device)
    with tqdm(total=cfg.epochs, desc=f"train {args.tag or cfg.model}", unit="epoch", disable=bars_off()) as bar:
        doc = train(args.run_dir, cfg, args.tag, args.device, progress=lambda n, _t: bar.update(n - bar.n))
    log.info("train: test_acc %.4f -> %s", doc["test_acc"], args.run_dir / "train" / (args.tag or cfg.model))


def add_finetune_parser(sub: argparse._SubParsersAction, add_exec_args) -> None:
    from pipeline.finetune import FinetuneConfig

    d = FinetuneConfig()
    f = sub.add_parser("finetune", help="finetune model0 on each chip of a design (forward on chip, backward in "
                                        "software)")
    f.add_argument("--run-dir", type=Path, required=True)
    f.add_argument("--tag", required=True, help="train tag whose model0 is finetuned")
    f.add_argument("--adc", required=True, help="flash | sar")
    f.add_argument("--wl", type=float, required=True, help="SA W/L of the design")
    f.add_argument("--chips", nargs="+", default=["0-19"], help="chip ids, e.g. 0-19 or 0,3,5-7 (0-19)")
    f.add_argument("--iters", type=int_arg, default=None, help="iterations per chip (one epoch)")
    f.add_argument("--batch", type=int_arg, default=d.batch)
    f.add_argument("--lr", type=float, default=d.lr)
    f.add_argument("--eval-every", type=int_arg, default=None, help="iterations between curve points")
    f.add_argument("--eval-images", type=int_arg, default=d.eval_images, help="test images per accuracy")
    f.add_argument("--train-subset", type=int_arg, default=None, help="training images drawn from")
    f.add_argument("--cross-chips", type=int, default=d.cross_chips, help="other chips each chip's weights meet")
    f.add_argument("--bn-batches", type=int, default=d.bn_batches,
                   help="control: batches of BatchNorm re-estimation on the chip without weight updates (0: off)")
    f.add_argument("--seed", type=int, default=d.seed)
    f.add_argument("--device", default="cpu", help="cpu | cuda")
    add_exec_args(f)


def run_finetune(args: argparse.Namespace) -> None:
    from pipeline.executor import make_executor
    from pipeline.finetune import FinetuneConfig, finetune, parse_chips

    cfg = FinetuneConfig(tag=args.tag, adc=args.adc, wl_ratio=args.wl, chips=parse_chips(args.chips),
                         iters=args.iters, batch=args.batch, lr=args.lr, eval_every=args.eval_every,
                         eval_images=args.eval_images, train_subset=args.train_subset,
                         cross_chips=args.cross_chips, bn_batches=args.bn_batches, seed=args.seed)
    _check_device(args.device)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    with make_executor(args.workers, args.scheduler) as ex, \
            tqdm(total=len(cfg.chips), desc=f"finetune {cfg.adc} W/L={cfg.wl_ratio:g}", unit="chip",
                 disable=bars_off()) as bar:
        res = finetune(args.run_dir, cfg, ex, args.device, args.workers, lambda n, _t: bar.update(n - bar.n))
    log.info("finetune %s %s W/L=%g: software %.4f, nominal chip %.4f, chips before %.4f -> after %.4f (mean of "
             "%d; BatchNorm re-estimation alone %.4f), model1 %.4f", cfg.tag, cfg.adc, cfg.wl_ratio,
             res.acc_software.iloc[0], res.acc_nominal_chip.iloc[0], res.acc_chip_before.mean(),
             res.acc_chip_after.mean(), len(res), res.acc_chip_bn_only.mean(), res.acc_model1_digital.mean())


def _threads(n: int | None) -> None:
    import torch

    from pipeline.executor import usable_cpus

    torch.set_num_threads(n or usable_cpus())


def _check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device {device!r}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available to this torch build; use --device cpu")


def add_attack_parser(sub: argparse._SubParsersAction, add_exec_args) -> None:
    from pipeline.attack import ATTACKS, AttackConfig

    d = AttackConfig()
    a = sub.add_parser("attack", help="adversarial examples across chips: seed 001's cases 1-3, transfer matrix, "
                                      "controls, adaptive EOT attacker")
    a.add_argument("--run-dir", type=Path, required=True)
    a.add_argument("--tag", required=True, help="train tag whose finetuned chips are attacked")
    a.add_argument("--adc", required=True, help="flash | sar")
    a.add_argument("--wl", type=float, required=True, help="SA W/L of the design")
    a.add_argument("--attack", required=True, help=" | ".join(ATTACKS))
    a.add_argument("--cases", type=int, nargs="+", default=list(d.cases), help="seed 001 cases (1 2 3)")
    a.add_argument("--target-chip", type=int, default=d.target_chip, help="chip 1 of the seed (receives)")
    a.add_argument("--source-chip", type=int, default=d.source_chip, help="chip 2 of the seed (attacked in case 3)")
    a.add_argument("--transfer-chips", nargs="*", default=[], help="more chips for the transfer matrix, e.g. 0-9")
    a.add_argument("--n-images", type=int, default=d.n_images, help="test images attacked (first N)")
    a.add_argument("--confidence", type=float, default=d.confidence, help="C&W kappa")
    a.add_argument("--eps", type=float, default=d.eps, help="L-inf radius of PGD / FGSM")
    a.add_argument("--max-iterations", type=int, default=None, help="C&W steps per constant (1000) / PGD steps (10)")
    a.add_argument("--binary-search-steps", type=int, default=d.binary_search_steps, help="C&W L2 (9)")
    a.add_argument("--initial-const", type=float, default=None,
                   help="C&W starting c (reference: 1e-3 L2/L0, 1e-5 Linf); raise it for short budgets")
    a.add_argument("--eot", type=int, default=d.eot, help="adaptive attacker: EOT over K other finetuned chips")
    a.add_argument("--eot-chips", nargs="*", default=[],
                   help="the adaptive attacker's chips, e.g. 1-3 (default: the first K finetuned chips that are "
                        "neither target nor source; sets K when --eot is not given)")
    a.add_argument("--eot-success", default=d.eot_success,
                   help="mean | all: the adaptive attacker's example counts when the chips' mean logits are fooled "
                        "(mean) or every chip is (all; source eot<K>-all)")
    a.add_argument("--sw-tag", default=None, help="control: another software model (train tag) as a target")
    a.add_argument("--no-white-box", action="store_true",
                   help="skip attacking chip 1 itself (the white-box control; the costliest source)")
    a.add_argument("--seed", type=int, default=d.seed)
    a.add_argument("--device", default="cpu", help="cpu | cuda")
    add_exec_args(a)


def run_attack(args: argparse.Namespace) -> None:
    from pipeline.attack import AttackConfig, attack
    from pipeline.executor import make_executor
    from pipeline.finetune import parse_chips

    eot_chips = parse_chips(args.eot_chips) if args.eot_chips else ()
    cfg = AttackConfig(tag=args.tag, adc=args.adc, wl_ratio=args.wl, attack=args.attack, cases=tuple(args.cases),
                       target_chip=args.target_chip, source_chip=args.source_chip,
                       transfer_chips=parse_chips(args.transfer_chips) if args.transfer_chips else (),
                       n_images=args.n_images, confidence=args.confidence, eps=args.eps,
                       max_iterations=args.max_iterations, binary_search_steps=args.binary_search_steps,
                       initial_const=args.initial_const, eot=args.eot or len(eot_chips), eot_chips=eot_chips,
                       eot_success=args.eot_success, sw_tag=args.sw_tag, seed=args.seed,
                       white_box=not args.no_white_box)
    _check_device(args.device)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    with make_executor(args.workers, args.scheduler) as ex, \
            tqdm(total=len(cfg.sources()), desc=f"attack {cfg.name}", unit="source", disable=bars_off()) as bar:
        res = attack(args.run_dir, cfg, ex, args.device, args.workers, lambda n, _t: bar.update(n - bar.n))
    for case in ("case 1", "case 2", "case 3", "white-box"):
        sel = res[res.case == case]
        if len(sel):
            r = sel.iloc[0]
            log.info("attack %s %s: %s -> %s: accuracy %.4f -> %.4f", cfg.name, case, r.source, r.target,
                     r.acc_before, r.acc_after)


def add_bfa_parser(sub: argparse._SubParsersAction, add_exec_args) -> None:
    from pipeline.bfa import BFAConfig

    d = BFAConfig()
    b = sub.add_parser("bfa", help="bit-flip attack (progressive bit search) on a trained model0, beside random flips")
    b.add_argument("--run-dir", type=Path, required=True)
    b.add_argument("--tag", required=True, help="train tag whose model0 is attacked")
    b.add_argument("--runs", type=int_arg, default=d.runs)
    b.add_argument("--attack-batch", type=int_arg, default=d.attack_batch)
    b.add_argument("--max-flips", type=int_arg, default=d.max_flips)
    b.add_argument("--target-acc", type=float, default=d.target_acc)
    b.add_argument("--eval-images", type=int_arg, default=d.eval_images)
    b.add_argument("--noise-sigma", type=float, default=0.0, help="Gaussian noise per partial sum (chip path)")
    b.add_argument("--noise-off", action="store_true",
                   help="read the chip without the read noise model0 was trained with (the weights-vs-noise control)")
    b.add_argument("--candidates", type=int_arg, default=d.candidates,
                   help="bits per layer each tried on the model's own forward per step (1: the reference BFA)")
    b.add_argument("--seed", type=int_arg, default=d.seed)
    add_exec_args(b)


def run_bfa(args: argparse.Namespace) -> None:
    from pipeline.bfa import BFAConfig, bfa
    from pipeline.executor import make_executor

    cfg = BFAConfig(tag=args.tag, runs=args.runs, attack_batch=args.attack_batch, max_flips=args.max_flips,
                    target_acc=args.target_acc, eval_images=args.eval_images, noise_sigma_psum=args.noise_sigma,
                    noise_off=args.noise_off, seed=args.seed, candidates=args.candidates)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    with make_executor(min(args.workers, cfg.runs), args.scheduler) as ex:
        res = bfa(args.run_dir, cfg, ex, args.workers)
    for method, g in res.groupby("method"):
        log.info("bfa %s %s: flips %.1f +- %.1f (reached %d/%d), accuracy %.4f -> %.4f", cfg.tag, method,
                 g.flips.mean(), g.flips.std(ddof=0), int(g.reached.sum()), len(g), g.acc_before.mean(),
                 g.acc_after.mean())


def add_study_noise_parser(sub: argparse._SubParsersAction, add_exec_args) -> None:
    from pipeline.study_noise import PSQ_NAMES, StudyNoiseConfig

    d = StudyNoiseConfig()
    s = sub.add_parser("study-noise", help="seed 000: IMC noise and partial-sum quantization as a defence (Table II, "
                                           "Figs. 3-6): trains the grid, black-box/white-box PGD, BFA")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--model", default=d.model, help=f"registered model ({d.model})")
    s.add_argument("--data", default=d.data, help="fashion-mnist | cifar10:FOLDER")
    s.add_argument("--bits", type=int_arg, nargs="+", default=list(d.bits), help="weight = activation bits (1 2 4)")
    s.add_argument("--first-input-bits", type=int_arg, default=None,
                   help="input bits of every cell's first layer (the image; default: the cell's bits)")
    s.add_argument("--noise", type=float, nargs="+", default=list(d.noise),
                   help="Gaussian noise sigmas, partial-sum units (0 1 2 4)")
    s.add_argument("--noise-table", default="", help="a measured P(code | psum) CSV: one more noise level")
    s.add_argument("--psq", nargs="+", default=list(d.psq), help=" ".join(PSQ_NAMES))
    s.add_argument("--psq-encoding", choices=["xnor", "unipolar"], default=d.psq_encoding,
                   help="input-split rows: a 0 bit drives -1 (xnor) or leaves the row off (unipolar, the control)")
    s.add_argument("--adv-train", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    s.add_argument("--runs", type=int_arg, default=d.runs, help="PGD runs and BFA runs per cell (5)")
    s.add_argument("--subset", type=int_arg, default=None, help="training images per cell (all)")
    s.add_argument("--test-subset", type=int_arg, default=d.test_subset)
    s.add_argument("--epochs", type=int_arg, default=d.epochs)
    s.add_argument("--batch", type=int_arg, default=d.batch)
    s.add_argument("--adv-steps", type=int_arg, default=d.adv_steps, help="PGD steps of adversarial training (10)")
    s.add_argument("--attack-images", type=int_arg, default=d.attack_images)
    s.add_argument("--attacker-images", type=int_arg, default=d.attacker_images)
    s.add_argument("--eot", type=int_arg, default=d.eot, help="noise draws per white-box gradient")
    s.add_argument("--square", type=int_arg, default=d.square_queries, metavar="Q",
                   help="also attack every cell with the gradient-free Square Attack, Q queries per image (0: off)")
    s.add_argument("--square-p", type=float, default=d.square_p, metavar="P",
                   help=f"the Square Attack's initial window fraction ({d.square_p})")
    s.add_argument("--bfa-max-flips", type=int_arg, default=d.bfa_max_flips)
    s.add_argument("--bfa-attack-batch", type=int_arg, default=d.bfa_attack_batch,
                   help=f"training images of each BFA run's gradient ({d.bfa_attack_batch})")
    s.add_argument("--bfa-eval-images", type=int_arg, default=d.bfa_eval_images,
                   help=f"test images scored after each flip ({d.bfa_eval_images})")
    s.add_argument("--substitute-epochs", type=int_arg, default=d.substitute_epochs)
    s.add_argument("--eps", type=float, default=d.eps,
                   help=f"L-inf budget of every PGD, attacks and adversarial training ({d.eps}; step 2/255 x eps/0.03)")
    s.add_argument("--seed", type=int_arg, default=d.seed)
    s.add_argument("--first-layer-digital", action="store_true",
                   help="every cell's image-reading first layer computes digitally (no ADC, no noise)")
    s.add_argument("--psq-ste-window", type=float, default=d.psq_ste_window, metavar="W",
                   help="the --psq cells' gradient: the windowed straight-through estimator of `train` (0: off)")
    s.add_argument("--bn-recal", type=int, default=d.bn_recal_batches, metavar="N",
                   help="every cell re-estimates BatchNorm statistics on N training batches after each epoch "
                        "(default: 4 for --psq cells, 0 for the rest)")
    s.add_argument("--warm-start", action="store_true",
                   help="every cell starts from its precision's noise-free clean cell (trained first), "
                        "not from scratch")
    add_exec_args(s)


def run_study_noise(args: argparse.Namespace) -> None:
    from pipeline.executor import make_executor
    from pipeline.study_noise import StudyNoiseConfig, study_noise

    cfg = StudyNoiseConfig(model=args.model, data=args.data, bits=tuple(args.bits),
                           first_input_bits=args.first_input_bits, noise=tuple(args.noise),
                           noise_table=args.noise_table, psq=tuple(args.psq), psq_encoding=args.psq_encoding,
                           adv_train=tuple(dict.fromkeys(a == "yes" for a in args.adv_train)), runs=args.runs,
                           subset=args.subset, test_subset=args.test_subset, epochs=args.epochs, batch=args.batch,
                           adv_steps=args.adv_steps, attack_images=args.attack_images,
                           attacker_images=args.attacker_images, eot=args.eot, square_queries=args.square,
                           square_p=args.square_p, bfa_max_flips=args.bfa_max_flips,
                           bfa_attack_batch=args.bfa_attack_batch, bfa_eval_images=args.bfa_eval_images,
                           substitute_epochs=args.substitute_epochs, eps=args.eps, seed=args.seed,
                           warm_start=args.warm_start, first_layer_digital=args.first_layer_digital,
                           psq_ste_window=args.psq_ste_window,
                           bn_recal_batches=args.bn_recal)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    with make_executor(args.workers, args.scheduler) as ex, \
            tqdm(desc="study-noise", unit="cell", disable=bars_off()) as bar:
        def progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        res = study_noise(args.run_dir, cfg, ex, args.workers, progress)
    log.info("study-noise: %d cells -> %s (clean %.3f, black-box PGD %.3f, white-box PGD %.3f, worst of both %.3f)",
             res.tag.nunique(), args.run_dir / "study_noise", res.clean_acc.mean(), res.bb_pgd_acc.mean(),
             res.wb_pgd_acc.mean(), res.worst_acc.mean())
