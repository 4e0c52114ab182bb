"""CLI wrappers of the network stages (train, finetune): argument parsing and progress only."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from tqdm import tqdm

from pipeline.config import ConfigError

log = logging.getLogger("cimcosim")


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
    adc = t.add_mutually_exclusive_group()
    adc.add_argument("--adc-bits", type=int_arg, default=None, help="uniform ADC bits (5)")
    adc.add_argument("--psq", choices=["1bit", "2bit", "3.5bit"], default=None,
                     help="input-split partial-sum quantization (seed 000 Table I; 256-row signed columns)")
    t.add_argument("--rows", type=int_arg, default=None, help="rows per sub-array (128; 256 with --psq)")
    t.add_argument("--act", choices=["relu", "celu"], default=None)
    noise = t.add_mutually_exclusive_group()
    noise.add_argument("--noise-sigma", type=float, default=None,
                       help="Gaussian noise on every partial sum, partial-sum units (training and test)")
    noise.add_argument("--noise-table", default=None, help="CSV of P(code | psum) (see pipeline/noise_table.py)")
    t.add_argument("--adv-train", action="store_true", help="PGD adversarial training (eps 0.03, 2/255, 10 it.)")
    t.add_argument("--adv-eps", type=float, default=None)
    t.add_argument("--adv-steps", type=int_arg, default=None)
    t.add_argument("--device", default="cpu", help="cpu | cuda")
    t.add_argument("--workers", type=int_arg, default=None, help="torch threads (default: all cores)")


def run_train(args: argparse.Namespace) -> None:
    from pipeline.train import train, train_config

    cfg = train_config(args.model, data=args.data, subset=args.subset, test_subset=args.test_subset,
                       epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                       weight_bits=args.weight_bits, input_bits=args.input_bits, adc_bits=args.adc_bits,
                       psq=args.psq, rows=args.rows, act=args.act, noise_sigma_psum=args.noise_sigma,
                       noise_table=args.noise_table, adv_train=args.adv_train or None, adv_eps=args.adv_eps,
                       adv_steps=args.adv_steps)
    _threads(args.workers)
    _check_device(args.device)
    with tqdm(total=cfg.epochs, desc=f"train {args.tag or cfg.model}", unit="epoch", disable=None) as bar:
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
                 disable=None) as bar:
        res = finetune(args.run_dir, cfg, ex, args.device, args.workers, lambda n, _t: bar.update(n - bar.n))
    log.info("finetune %s %s W/L=%g: software %.4f, nominal chip %.4f, chips before %.4f -> after %.4f (mean of "
             "%d; BatchNorm re-estimation alone %.4f), model1 %.4f", cfg.tag, cfg.adc, cfg.wl_ratio,
             res.acc_software.iloc[0], res.acc_nominal_chip.iloc[0], res.acc_chip_before.mean(),
             res.acc_chip_after.mean(), len(res), res.acc_chip_bn_only.mean(), res.acc_model1_digital.mean())


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or os.cpu_count() or 1)


def _check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device {device!r}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available to this torch build; use --device cpu")
