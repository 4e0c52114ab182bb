"""Stage ``train``: model0, the seeds' "network without variation", quantization-aware at the CIM precisions.

Inputs: a dataset (``fashion-mnist`` or ``cifar10:FOLDER``) and a :class:`TrainConfig`. Outputs under
``RUN/train/<tag>/``: ``model0.pt`` (weights-only checkpoint with a header that rebuilds the model),
``history.parquet`` (one row per epoch, plus epoch 0 = the calibrated initial model), ``metrics.json``
(``test_acc``, settings, input hashes), ``curve.png``. ``state.pt`` holds the last finished epoch (model
and optimizer) so an interrupted run resumes there; a finished run with the same configuration is skipped.

Paths: plain model0 trains on the digital path (the integer layer, equal to an ideal lossless ADC, at float
speed). Seed 000's modes run the chip path instead, in training and test alike: per-inference Gaussian
noise (``noise_sigma_psum``), a measured noise table (``noise_table``), input-split partial-sum
quantization (``psq``: Table I on 256-row signed columns). ``adv_train`` adds PGD examples to every batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from nn import ADCConfig, ArrayConfig, CIMConfig, CIMConfigError, QuantConfig, list_models
from nn.attacks import PGD
from nn.convert import calibrate_act_ranges, cim_layers, set_digital
from nn.training import Timer, accuracy, cosine_lr, make_optimizer, recalibrate_batchnorm, train_steps
from pipeline.artifacts import ArtifactError, read_json, versions, write_json, write_table
from pipeline.checkpoint import (
    ACTIVATIONS,
    build_model,
    load_checkpoint,
    load_checkpoint_extra,
    load_model,
    model_header,
    save_checkpoint,
)
from pipeline.config import ConfigError, TrainingDiverged, config_hash
from pipeline.datasets import Data, check_spec, load_data
from pipeline.noise_table import read_noise_table
from pipeline.paths import RunPaths

logger = logging.getLogger(__name__)

STAGE_TRAIN = 3
PSQ_SCHEMES = ("1bit", "2bit", "3.5bit")
PSQ_ENCODINGS = ("xnor", "unipolar")  # how input-split rows are driven (TrainConfig.psq_encoding)
PSQ_ROWS = 256  # seed 000: input splitting into 256-input groups (the XNOR-SRAM array height)

HISTORY = pa.schema([
    pa.field("epoch", pa.int32()),  # 0: the calibrated initial model, before any step
    pa.field("step", pa.int64()),  # optimizer steps done
    pa.field("loss", pa.float64()),  # mean training loss over the epoch (NaN at epoch 0)
    pa.field("train_acc", pa.float64()),  # running accuracy over the epoch's batches (train mode)
    pa.field("test_acc", pa.float64()),  # test accuracy after the epoch (the training path: digital or chip)
    pa.field("lr", pa.float64()),  # learning rate of the epoch's last step
    pa.field("seconds", pa.float64()),  # wall time since the stage started (this process)
])

#: Seed defaults per model family: (weight bits, input bits, activation).
MODEL_DEFAULTS: dict[str, tuple[int, int, str]] = {
    "vgg": (2, 8, "relu"),  # seed 001: VGG-8 A8/W2
    "densenet": (8, 8, "relu"),  # seed 001: DenseNet-40 A8/W8
    "resnet": (4, 4, "celu"),  # seed 000: ResNet-18 (1/2/4 bits), CELU
}


def model_defaults(model: str) -> tuple[int, int, str]:
    for family, d in MODEL_DEFAULTS.items():
        if family in model:
            return d
    return (4, 8, "relu")


@dataclass(frozen=True)
class TrainConfig:
    """Configuration of one ``train`` run (every field is hashed into the outputs)."""

    model: str = "vgg8_fmnist"
    """Registered model name (``nn.list_models()``)."""
    data: str = "fashion-mnist"
    """'fashion-mnist' (Debian's dataset-fashion-mnist) or 'cifar10:FOLDER'."""
    subset: int | None = None
    """Training images (the first N; None: all)."""
    test_subset: int | None = None
    """Test images used for the reported accuracy (the first N; None: all)."""
    epochs: int = 10
    """Training epochs."""
    batch: int = 128
    """Images per optimizer step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW, cosine decay to 0 over the run)."""
    weight_decay: float = 5e-4
    """AdamW weight decay on weights and activation clips."""
    seed: int = 1
    """Root seed: initialization, data order, noise draws and PGD starts derive from it."""
    weight_bits: int = 2
    """Signed weight bits (1: +-1)."""
    input_bits: int = 8
    """Activation bits (bit-serial inputs)."""
    first_input_bits: int | None = None
    """Input bits of the first layer, which reads the image (None: ``input_bits``; 8 keeps a binary network's
    image at 8 bits instead of thresholding it)."""
    act: str = "relu"
    """'relu' or 'celu' (CELU makes activations signed: two's-complement bit-serial inputs)."""
    adc_bits: int = 5
    """Uniform ADC resolution of the configured chip (ignored with ``psq``)."""
    adc_kind: str = "flash"
    """'flash' or 'sar' (matters once a chip's offsets are loaded)."""
    rows: int = 128
    """Rows per sub-array (the ADC reads one tile of this many rows)."""
    psq: str | None = None
    """Input-split partial-sum quantization with a Table I scheme ('1bit', '2bit', '3.5bit'): signed
    columns of ``rows`` (256 by the seed) and the chip path in training."""
    psq_encoding: str = "xnor"
    """How the input-split (``psq``) rows are driven: 'xnor' (a 0 bit drives -1, the partial sum is centred on zero as
    Table I's thresholds assume; ``ArrayConfig.xnor``) or 'unipolar' (a 0 bit leaves the row off, partial sums
    sum x * w of {0, 1} bit-planes: the encoding before 2026-12-03, kept as the control)."""
    psq_ste_window: float = 0.0
    """Gradient of the input-split readout (needs ``psq``): 0 straight through the whole readout (the digital layer's
    gradient); W > 0 the windowed straight-through estimator (``QuantConfig.psum_ste_window``): each row tile's
    gradient weighted by the share of its readings within W partial sums of the scheme's threshold span."""
    psq_ste_smooth: float = 0.0
    """The other gradient of the input-split readout (needs ``psq``; not with ``psq_ste_window``): T > 0 weights each
    row tile's gradient by the mean slope of a soft staircase of temperature T partial sums over its readings
    (``QuantConfig.psum_ste_smooth``; for the 1-bit scheme, the derivative of a scaled sigmoid sign)."""
    noise_sigma_psum: float = 0.0
    """Per-inference Gaussian noise on every partial sum, in partial-sum units (one on-cell = 1), in training
    and test (seed 000's noise-aware training)."""
    noise_table: str | None = None
    """CSV of P(code | ideal partial sum) (pipeline/noise_table.py), in training and test."""
    chip_train: bool = False
    """Train and test through the simulated ADC even without noise or PSQ (the noise-free control of noise-aware
    training: the same read-out quantization, no noise)."""
    adv_train: bool = False
    """PGD adversarial training: each batch's loss averages clean and PGD examples (seed 000)."""
    adv_eps: float = 0.03
    """PGD L-inf radius of adversarial training."""
    adv_alpha: float = 2 / 255
    """PGD step of adversarial training."""
    adv_steps: int = 10
    """PGD iterations of adversarial training."""
    calib_images: int = 256
    """Images of the activation-range calibration before the first step."""
    bn_recal_batches: int = 0
    """After every epoch (and before epoch 0's evaluation), re-estimate every BatchNorm layer's statistics as the
    exact average over this many training batches, in place of the running averages (0: keep those). Training
    itself (batch statistics) is unchanged. Needed where the layers' outputs drift faster than the running
    averages follow: measured on the input-split 1-bit cell, test accuracy 11.7 % with the running averages vs 43 %
    re-estimated on 4 batches, the same weights (33 % with each test batch's own statistics)."""
    first_layer_digital: bool = False
    """The image-reading first layer computes digitally (``ArrayConfig.first_layer_digital``), the rest on the chip."""
    init_from: str | None = None
    """Warm start: the train tag (same run folder, same model) whose finished model0 starts this run -- every
    weight, activation clip and BatchNorm statistic, not its chip offsets; no calibration. Its config hash is
    hashed into this run's, so retraining the source retrains this one. None: a fresh initialization."""

    def __post_init__(self) -> None:
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; available: {', '.join(list_models())}")
        check_spec(self.data)
        for name in ("epochs", "batch", "calib_images", "adv_steps", "rows", "adc_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if isinstance(self.bn_recal_batches, bool) or not isinstance(self.bn_recal_batches, int) \
                or self.bn_recal_batches < 0:
            raise ConfigError(f"bn_recal_batches={self.bn_recal_batches!r} must be an integer >= 0")
        for name in ("subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name}={v!r} must be a positive integer or None")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr={self.lr!r} must be a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")
        for name in ("weight_bits", "input_bits", "first_input_bits"):
            v = getattr(self, name)
            if name == "first_input_bits" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 8:
                raise ConfigError(f"{name}={v!r} must be an integer in 1..8")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"act={self.act!r}: choose from {sorted(ACTIVATIONS)}")
        if self.psq is not None and self.psq not in PSQ_SCHEMES:
            raise ConfigError(f"psq={self.psq!r}: choose from {list(PSQ_SCHEMES)}")
        if self.psq_encoding not in PSQ_ENCODINGS:
            raise ConfigError(f"psq_encoding={self.psq_encoding!r}: choose from {list(PSQ_ENCODINGS)}")
        for name in ("psq_ste_window", "psq_ste_smooth"):
            v = getattr(self, name)
            if not (isinstance(v, float | int) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name}={v!r} must be a number >= 0 (partial-sum units)")
            if v and self.psq is None:
                raise ConfigError(f"{name} shapes the gradient of input-split readouts: give it with psq")
        if self.psq_ste_window and self.psq_ste_smooth:
            raise ConfigError("psq_ste_window and psq_ste_smooth are two gradients of the readout: give one")
        if not (math.isfinite(self.noise_sigma_psum) and self.noise_sigma_psum >= 0):
            raise ConfigError(f"noise_sigma_psum={self.noise_sigma_psum!r} must be >= 0")
        if self.noise_sigma_psum > 0 and self.noise_table is not None:
            raise ConfigError("give a Gaussian noise sigma or a noise table, not both")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()
                                           or "/" in self.init_from or self.init_from.startswith(".")):
            raise ConfigError(f"init_from={self.init_from!r} must be a train tag of the same run folder")
        if not 0 < self.adv_eps <= 1 or not self.adv_alpha > 0:
            raise ConfigError(f"adv_eps={self.adv_eps} must be in (0, 1] and adv_alpha={self.adv_alpha} > 0")
        self.cim_config()  # validates the CIM side (bits, schemes, noise-table rows) up front

    @property
    def chip_path(self) -> bool:
        """True when training needs the simulated chip (noise or partial-sum quantization), not the digital path."""
        return trains_on_chip(self.to_dict())

    def cim_config(self) -> CIMConfig:
        """The chip model0 is meant for: the ADC, array and quantization of this run."""
        table = None
        if self.noise_table is not None:
            _, table = read_noise_table(self.noise_table)
        try:
            adc = ADCConfig.scheme(self.psq) if self.psq else ADCConfig(bits=self.adc_bits)
            adc = replace(adc, kind=self.adc_kind, noise_sigma=self.noise_sigma_psum, noise_table=table)
            quant = QuantConfig(weight_bits=self.weight_bits, input_bits=self.input_bits,
                                input_signed=self.act == "celu", first_input_bits=self.first_input_bits,
                                psum_ste_window=float(self.psq_ste_window),
                                psum_ste_smooth=float(self.psq_ste_smooth))
            array = ArrayConfig(rows=self.rows, signed_psum=self.psq is not None,
                                xnor=self.psq is not None and self.psq_encoding == "xnor",
                                first_layer_digital=self.first_layer_digital)
            return CIMConfig(adc=adc, array=array, quant=quant)
        except CIMConfigError as exc:
            raise ConfigError(f"invalid CIM settings: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Every field; ``first_input_bits``, ``init_from``, ``first_layer_digital``, ``bn_recal_batches``,
        ``psq_ste_window``, ``psq_ste_smooth`` only when set, and ``psq_encoding`` only with ``psq``, so runs from
        before they existed keep their hash (input-split runs hash the encoding: those from before it existed were
        unipolar and retrain)."""
        d = asdict(self)
        for name in ("first_input_bits", "init_from", "first_layer_digital", "bn_recal_batches", "psq_ste_window",
                     "psq_ste_smooth"):
            if d[name] is None or d[name] is False or d[name] == 0:
                del d[name]
        if self.psq is None:
            del d["psq_encoding"]
        if self.adv_train:  # 3: BatchNorm's running statistics follow the clean batches only (retrains)
            d["adv_train_version"] = ADV_TRAIN_VERSION
        return d


ADV_TRAIN_VERSION = 3
"""Adversarial training's revision, hashed into adversarially trained runs only (see ``TrainConfig.to_dict``).
2 froze BatchNorm's statistics around the attack, a no-op (attacks run in eval mode); 3 freezes them around
the adversarial forward of the loss (:func:`nn.training.train_steps`)."""


def trains_on_chip(config: Mapping[str, Any]) -> bool:
    """Whether a training configuration (``TrainConfig.to_dict()``, as a checkpoint header keeps it) trains and
    tests on the chip path: noise, partial-sum quantization or ``chip_train``."""
    return bool(config.get("chip_train") or config.get("psq") or config.get("noise_sigma_psum")
                or config.get("noise_table"))


def train_config(model: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig with the seed's defaults for ``model``'s family; None overrides are ignored."""
    wb, ib, act = model_defaults(model)
    base: dict[str, Any] = {"model": model, "weight_bits": wb, "input_bits": ib, "act": act}
    if overrides.get("psq") is not None:
        base["rows"] = PSQ_ROWS
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def _seed(cfg: TrainConfig, *key: int) -> int:
    """A 63-bit seed derived from the root seed and ``key`` (SeedSequence)."""
    return int(np.random.SeedSequence(cfg.seed, spawn_key=(STAGE_TRAIN, *key)).generate_state(2, np.uint64)[0] >> 1)


def set_noise_seeds(model: torch.nn.Module, seed: int) -> None:
    """Seed every CIM layer's per-inference noise stream from one seed (layer i gets seed + i)."""
    for i, layer in enumerate(cim_layers(model)):
        layer.set_noise_seed(seed + i)


def _header(cfg: TrainConfig, data: Data, chash: str, kind: str) -> dict[str, Any]:
    return {**model_header(cfg.model, data.num_classes, data.in_chans, cfg.act, cfg.cim_config()), "kind": kind,
            "stage": "train", "config": cfg.to_dict(), "config_hash": chash, "data": cfg.data, "seed": cfg.seed,
            "inputs": data.hashes}


def _recalibrate(model: torch.nn.Module, cfg: TrainConfig, data: Data, epoch: int, device: str) -> None:
    """``bn_recal_batches``: BatchNorm statistics re-estimated on training batches (own seeded streams)."""
    if cfg.bn_recal_batches:
        set_noise_seeds(model, _seed(cfg, 5, epoch))
        recalibrate_batchnorm(model, data.x_train, batch=cfg.batch, batches=cfg.bn_recal_batches,
                              generator=torch.Generator().manual_seed(_seed(cfg, 6, epoch)), device=device)


def _evaluate(model: torch.nn.Module, cfg: TrainConfig, data: Data, epoch: int, device: str) -> float:
    set_noise_seeds(model, _seed(cfg, 1, epoch))
    return accuracy(model, data.x_test, data.y_test, device=device)


def train(run_dir: Path, cfg: TrainConfig, tag: str | None = None, device: str = "cpu",
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or skip if done) model0; returns the metrics document."""
    tag = tag or cfg.model
    out = RunPaths(Path(run_dir)).train_dir(tag)
    warm = _warm_start(Path(run_dir), cfg, tag)
    chash = config_hash({**cfg.to_dict(), "init_hash": warm[0]["config_hash"]} if warm else cfg.to_dict())
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        try:
            done = read_json(metrics_path, fix="it will be retrained")
            if done.get("config_hash") == chash:
                load_model(out / "model0.pt", fix="it will be retrained", kind="model0")
                logger.info("train %s: finished earlier with this configuration (test_acc %.4f); skipped",
                            tag, done["test_acc"])
                return done
        except ArtifactError as exc:
            logger.warning("train %s: earlier outputs unusable (%s); retraining", tag, exc)
    data = load_data(cfg.data, cfg.subset, cfg.test_subset)
    cim = cfg.cim_config()

    torch.manual_seed(_seed(cfg, 0))
    model = build_model(_header(cfg, data, chash, "model0"), cim).to(device)
    _check_shapes(model, data, cfg.model, device)
    set_digital(model, not cfg.chip_path)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch = max(len(data.x_train) // cfg.batch, 1)
    total = steps_per_epoch * cfg.epochs
    timer = Timer()
    rows: list[dict[str, Any]] = []
    start_epoch = _resume(out / "state.pt", chash, model, opt, rows)
    if start_epoch == 0:  # epoch 0: the calibrated fresh model, or the warm start's source read on this path
        if warm:
            load_model0_weights(model, warm[1], cfg.init_from or "")
        else:
            calibrate_act_ranges(model, data.x_train[:cfg.calib_images].to(device))
        _recalibrate(model, cfg, data, 0, device)
        rows = [{"epoch": 0, "step": 0, "loss": math.nan, "train_acc": math.nan,
                 "test_acc": _evaluate(model, cfg, data, 0, device), "lr": cfg.lr, "seconds": timer()}]
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        gen = torch.Generator().manual_seed(_seed(cfg, 2, epoch))
        set_noise_seeds(model, _seed(cfg, 3, epoch))
        adv = PGD(cfg.adv_eps, cfg.adv_alpha, cfg.adv_steps, seed=_seed(cfg, 4, epoch)) if cfg.adv_train else None
        stats = train_steps(model, opt, data.x_train, data.y_train, steps=steps_per_epoch, batch=cfg.batch,
                            generator=gen, lr_at=lambda s: cosine_lr(cfg.lr, s, total),
                            first_step=(epoch - 1) * steps_per_epoch, adv=adv, device=device)
        loss = float(np.mean([s.loss for s in stats]))
        if not math.isfinite(loss):  # before anything is saved: state.pt keeps the last finite epoch
            raise TrainingDiverged(
                f"train {tag}: the loss became {loss} in epoch {epoch} (training diverged); "
                + (f"state.pt keeps epoch {epoch - 1}" if epoch > 1 else "no epoch had finished, nothing was saved")
                + ". Lower --lr, or check the chip settings: a layer whose readings are all one ADC code has nothing "
                "to learn (benchmarks/psum_stats.py shows where partial sums fall)")
        _recalibrate(model, cfg, data, epoch, device)
        rows.append({"epoch": epoch, "step": epoch * steps_per_epoch,
                     "loss": loss,
                     "train_acc": sum(s.correct for s in stats) / sum(s.n for s in stats),
                     "test_acc": _evaluate(model, cfg, data, epoch, device), "lr": stats[-1].lr, "seconds": timer()})
        logger.info("train %s epoch %d/%d: loss %.4f train_acc %.4f test_acc %.4f (%.0f s)", tag, epoch, cfg.epochs,
                    rows[-1]["loss"], rows[-1]["train_acc"], rows[-1]["test_acc"], rows[-1]["seconds"])
        save_checkpoint(out / "state.pt", model.state_dict(), {**_header(cfg, data, chash, "train-state"),
                        "epoch": epoch, "history": rows}, extra={"optimizer": opt.state_dict()})
        if progress:
            progress(epoch, cfg.epochs)
    return _finish(out, cfg, data, chash, model, rows, tag)


def _warm_start(run_dir: Path, cfg: TrainConfig, tag: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(header, state) of the finished model0 a warm start begins from; None without ``init_from``."""
    if cfg.init_from is None:
        return None
    if cfg.init_from == tag:
        raise ConfigError(f"train {tag}: --init-from names the run itself; give another train tag")
    fix = f"train it first (cimcosim train --tag {cfg.init_from} ...) or drop --init-from"
    try:
        header, state = load_checkpoint(RunPaths(run_dir).model0(cfg.init_from), fix=fix, kind="model0")
    except ArtifactError as exc:
        raise ConfigError(f"train {tag}: --init-from {cfg.init_from}: {exc}") from exc
    if header.get("model") != cfg.model or header.get("data") != cfg.data:
        raise ConfigError(f"train {tag}: --init-from {cfg.init_from} is a {header.get('model')} on "
                          f"{header.get('data')}, this run a {cfg.model} on {cfg.data}; warm-start from the same "
                          "model and data")
    return header, state


def load_model0_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy a finished model0 into ``model``: every tensor but the chip offsets (``adc_shift``, whose shape is
    the source's chip); a tensor missing or of another shape is refused by name."""
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if not k.endswith("adc_shift")}
    missing = sorted(k for k in own if k not in keep and not k.endswith("adc_shift"))
    bad = sorted(k for k, v in keep.items() if k not in own or own[k].shape != v.shape)
    if missing or bad:
        raise ConfigError(f"--init-from {source}: its model0 does not fit this model "
                          f"({'missing ' + missing[0] if missing else 'mismatched ' + bad[0]}); "
                          "warm-start from a model of the same architecture")
    model.load_state_dict(keep, strict=False)
    logger.info("train: warm start from %s's model0 (%d tensors; no calibration)", source, len(keep))


def _check_shapes(model: torch.nn.Module, data: Data, name: str, device: str) -> None:
    """One digital forward of two images: a model built for another image shape fails here, clearly."""
    digital = [layer.digital for layer in cim_layers(model)]
    set_digital(model, True)
    try:
        with torch.no_grad():
            model.eval()(data.x_train[:2].to(device))
    except (RuntimeError, CIMConfigError) as exc:
        raise ConfigError(f"model {name!r} does not fit {data.spec} images {tuple(data.x_train.shape[1:])} "
                          f"({str(exc).splitlines()[0][:100]}); pick a model for this dataset "
                          "(*_fmnist for Fashion-MNIST)") from exc
    finally:
        for layer, d in zip(cim_layers(model), digital, strict=True):
            layer.digital = d
        model.train()


def _resume(path: Path, chash: str, model: torch.nn.Module, opt: torch.optim.Optimizer,
            rows: list[dict[str, Any]]) -> int:
    """Load the last finished epoch of an interrupted run with this configuration; returns that epoch."""
    if not path.is_file():
        return 0
    try:
        header, state, extra = load_checkpoint_extra(path, fix="training restarts", kind="train-state")
    except ArtifactError as exc:
        logger.warning("%s", exc)
        return 0
    if header.get("config_hash") != chash or extra is None:
        return 0
    model.load_state_dict(state)
    opt.load_state_dict(extra["optimizer"])
    rows[:] = header["history"]
    logger.info("train: resuming after epoch %d (%s)", header["epoch"], path)
    return int(header["epoch"])


def _finish(out: Path, cfg: TrainConfig, data: Data, chash: str, model: torch.nn.Module,
            rows: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    history = pd.DataFrame(rows)
    meta = {"stage": "train", "config_hash": chash, "seed": cfg.seed, "versions": versions()}
    final = rows[-1]
    header = {**_header(cfg, data, chash, "model0"), "tag": tag, "test_acc": final["test_acc"]}
    save_checkpoint(out / "model0.pt", model.state_dict(), header)
    write_table(history, out / "history.parquet", HISTORY, meta)
    from pipeline.plots_nn import plot_train_curve

    plot_train_curve(history, out / "curve.png", f"{tag}: {cfg.model} W{cfg.weight_bits}/A{cfg.input_bits}")
    clips = {n: float(m.act_max.detach()) for n, m in model.named_modules() if hasattr(m, "act_max")}
    doc = {"test_acc": final["test_acc"], "train_acc": final["train_acc"], "epochs": cfg.epochs,
           "steps": final["step"], "seconds": final["seconds"], "tag": tag,
           "path": "chip" if cfg.chip_path else "digital", "act_max": clips,
           "n_train": len(data.x_train), "n_test": len(data.x_test), "config": cfg.to_dict(), "config_hash": chash,
           "inputs": data.hashes, "versions": versions()}
    write_json(out / "metrics.json", doc)
    (out / "state.pt").unlink(missing_ok=True)
    logger.info("train %s: test_acc %.4f after %d epochs -> %s", tag, final["test_acc"], cfg.epochs, out)
    return doc
