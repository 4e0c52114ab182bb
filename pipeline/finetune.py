"""Stage ``finetune``: each chip's weights adapted to its own ADC offsets (seed 001 Sec. III.B, Fig. 5, Table 1).

For one design (ADC kind, W/L) of ``chips/offsets.parquet`` and a trained model0 (``train/<tag>``), each
chip k is one task of the executor (local processes by default, Dask with a scheduler address):

1. model0 on chip k before finetune (``acc_chip_before``); model0 on the nominal chip (the configured ADC
   without offsets, ``acc_nominal_chip``, once per design) and digital (``acc_software``);
2. finetune: forward on chip k (its offsets fixed), backward through the straight-through path, AdamW on
   the float latent weights, which the next forward re-quantizes (the cells are reprogrammed); on-chip test
   accuracy every ``eval_every`` iterations (the Fig. 5a/b curve); ``acc_chip_after``;
3. model1: chip k's finetuned weights on the pure digital path (``acc_model1_digital``);
4. chip specificity: chip k's weights on the next ``cross_chips`` chips of the list (``cross_chip.parquet``).

BatchNorm layers stay in training mode during finetune (batch statistics of the chip's outputs, running
statistics updated), as in any finetune; they are part of the digital periphery and finetuned with the
weights. Each chip's result is its checkpoint ``chip_<k>.pt`` (weights + a header with the results and the
curve), written atomically when the chip is done: a rerun verifies and skips finished chips, ``kill -9``
loses only the chips in flight, and one seed gives the same numbers.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from nn import CIMConfig, load_chip
from nn.convert import set_digital
from nn.training import Timer, accuracy, cosine_lr, make_optimizer, recalibrate_batchnorm, train_steps
from pipeline.artifacts import ArtifactError, read_json, versions, write_json, write_table
from pipeline.checkpoint import load_checkpoint, load_model, save_checkpoint
from pipeline.config import ADC_KINDS, ConfigError, config_hash
from pipeline.datasets import load_data
from pipeline.executor import as_completed, threads_per_worker
from pipeline.offset_table import OffsetTable
from pipeline.paths import RunPaths

logger = logging.getLogger(__name__)

STAGE_FINETUNE = 4
FIX_TRAIN = "run `cimcosim train --run-dir RUN --model NAME --tag TAG` first"
FIX_CHIPS = "run `cimcosim chips --run-dir RUN --n-chips N` (after characterize and fit) first"

RESULTS = pa.schema([
    pa.field("tag", pa.string()), pa.field("model", pa.string()), pa.field("adc", pa.string()),
    pa.field("wl_ratio", pa.float64()), pa.field("chip_id", pa.int64()),
    pa.field("acc_software", pa.float64()),  # model0, digital path
    pa.field("acc_nominal_chip", pa.float64()),  # model0 on the configured ADC without offsets
    pa.field("acc_chip_before", pa.float64()),  # model0 on chip k
    pa.field("acc_chip_bn_only", pa.float64()),  # control: model0 on chip k, only BatchNorm statistics re-estimated
    pa.field("acc_chip_after", pa.float64()),  # finetuned on chip k, on chip k
    pa.field("acc_model1_digital", pa.float64()),  # chip k's finetuned weights, digital path (model1)
    pa.field("offset_lsb_rms", pa.float64()),  # RMS threshold shift of chip k's table, ADC LSB
    pa.field("iterations", pa.int64()), pa.field("n_eval", pa.int64()), pa.field("seconds", pa.float64()),
    pa.field("seed", pa.int64()),
])
CURVES = pa.schema([
    pa.field("tag", pa.string()), pa.field("adc", pa.string()), pa.field("wl_ratio", pa.float64()),
    pa.field("chip_id", pa.int64()), pa.field("iteration", pa.int64()),
    pa.field("acc_chip", pa.float64()),  # on-chip test accuracy after this many iterations
    pa.field("loss", pa.float64()),  # mean training loss of the iterations since the last point (NaN at 0)
])
CROSS = pa.schema([
    pa.field("tag", pa.string()), pa.field("adc", pa.string()), pa.field("wl_ratio", pa.float64()),
    pa.field("weights_chip", pa.int64()),  # whose finetuned weights
    pa.field("offsets_chip", pa.int64()),  # on whose ADC offsets
    pa.field("acc", pa.float64()),
])


@dataclass(frozen=True)
class FinetuneConfig:
    """Configuration of the finetune of one design's chips."""

    tag: str = "vgg8_fmnist"
    """Train tag whose model0 is finetuned (``RUN/train/<tag>/model0.pt``)."""
    adc: str = "flash"
    """ADC kind of the design."""
    wl_ratio: float = 10.0
    """SA W/L of the design."""
    chips: tuple[int, ...] = tuple(range(20))
    """Chip ids to finetune."""
    iters: int | None = None
    """Finetune iterations per chip (None: one epoch of the training images at ``batch``, as the seed)."""
    batch: int = 200
    """Images per iteration (the seed's 200)."""
    lr: float = 2e-4
    """Peak AdamW learning rate (cosine decay to 0 over the iterations)."""
    weight_decay: float = 0.0
    """AdamW weight decay during finetune."""
    eval_every: int | None = None
    """On-chip test accuracy every this many iterations (None: 10 points over the run)."""
    eval_images: int | None = 2000
    """Test images of every on-chip accuracy (the first N; None: the whole test set)."""
    train_subset: int | None = None
    """Training images finetune draws from (the first N; None: all)."""
    cross_chips: int = 3
    """Other chips of the list each chip's finetuned weights are tried on."""
    bn_batches: int = 10
    """Control: batches over which model0's BatchNorm statistics are re-estimated on the chip (no weight
    update) before its accuracy is measured (0: skip the control)."""
    seed: int = 1
    """Root seed of the data order."""

    def __post_init__(self) -> None:
        if self.adc not in ADC_KINDS:
            raise ConfigError(f"unknown ADC kind {self.adc!r}; choose from {list(ADC_KINDS)}")
        if not (math.isfinite(self.wl_ratio) and self.wl_ratio > 0):
            raise ConfigError(f"wl_ratio={self.wl_ratio!r} must be a finite number > 0")
        if not self.chips or any(not isinstance(c, int) or c < 0 for c in self.chips):
            raise ConfigError(f"chips={self.chips!r} must be a non-empty list of chip ids >= 0")
        if len(set(self.chips)) != len(self.chips):
            raise ConfigError(f"chips={self.chips!r} lists a chip twice")
        for name in ("batch", "iters", "eval_every", "eval_images", "train_subset"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr={self.lr!r} must be a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay={self.weight_decay!r} must be >= 0")
        for name in ("cross_chips", "bn_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name}={v!r} must be an integer >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")

    def chip_hash(self, train_hash: str, offsets_hash: str) -> str:
        """What one chip's result depends on (not the chip list, so adding chips reuses finished ones)."""
        d = asdict(self)
        d.pop("chips")
        return config_hash({"finetune": d, "train": train_hash, "offsets": offsets_hash})


def parse_chips(spec: str | list[str]) -> tuple[int, ...]:
    """'0-19', '0,3,5-7' or a list of such tokens -> chip ids."""
    tokens = spec if isinstance(spec, list) else [spec]
    out: list[int] = []
    try:
        for tok in ",".join(tokens).replace(" ", ",").split(","):
            if not tok:
                continue
            if "-" in tok:
                a, b = (int(v) for v in tok.split("-", 1))
                if b < a:
                    raise ValueError(tok)
                out += range(a, b + 1)
            else:
                out.append(int(tok))
    except ValueError as exc:
        raise ConfigError(f"chips {spec!r}: use ids and ranges like 0-19 or 0,3,5-7") from exc
    return tuple(out)


@dataclass(frozen=True)
class ChipTask:
    """One chip's finetune (picklable: it crosses to worker processes or Dask workers)."""

    run_dir: str
    cfg: FinetuneConfig
    chip_id: int
    cross: tuple[int, ...]
    acc_software: float
    acc_nominal_chip: float
    chip_hash: str
    device: str
    threads: int


def design_cim(header: dict[str, Any], table: OffsetTable, adc: str) -> CIMConfig:
    """model0's chip configuration moved onto the table's design: the characterized ADC and the die geometry.

    The design's ADC is the one the SPICE stage characterized: a ``bits``-bit Flash or SAR ADC over a column
    of 2^bits - 1 cells, one cell per LSB (references at j + 0.5 cells), reading a tile's partial sum and
    clipping above full scale. The table's ``offset_lsb`` is in those cells (converted through that column's
    measured current curve), so the simulated ADC must have the same 1-cell step: with a coarser step (e.g.
    128 cells over 31 codes, 5 cells per LSB) the same offsets would be a different, unmeasured circuit.
    """
    cim = CIMConfig.from_dict(header["cim"])
    g = table.geometry
    if cim.adc.thresholds is not None or cim.adc.noise_table is not None:
        raise ConfigError(f"model0 of tag {header.get('tag')!r} reads a Table I scheme or a noise table; offset "
                          "tables apply to uniform ADCs (train without --psq/--noise-table)")
    if cim.adc.n_thresholds != g["n_thresholds"]:
        raise ConfigError(f"model0 was trained for a {cim.adc.bits}-bit ADC but the chips stage drew "
                          f"{g['bits']}-bit ADCs ({g['n_thresholds']} thresholds); retrain with --adc-bits {g['bits']}")
    array = replace(cim.array, n_macros=g["n_macros"], adcs_per_macro=g["adcs_per_macro"],
                    columns_per_adc=g["columns_per_adc"])
    full_scale = float(g["n_thresholds"])  # 2^bits - 1 cells: one cell per LSB, as characterized
    return replace(cim, adc=replace(cim.adc, kind=adc, psum_max=full_scale), array=array)


def _eval_set(cfg: FinetuneConfig, header: dict[str, Any]) -> Any:
    return load_data(header["data"], cfg.train_subset, cfg.eval_images)


def _chip_seed(cfg: FinetuneConfig, chip_id: int) -> int:
    ss = np.random.SeedSequence(cfg.seed, spawn_key=(STAGE_FINETUNE, ADC_KINDS.index(cfg.adc), chip_id))
    return int(ss.generate_state(2, np.uint64)[0] >> 1)


def finetune_chip(task: ChipTask) -> dict[str, Any]:
    """Finetune one chip and write its checkpoint; returns its results row, curve and cross-chip rows."""
    torch.set_num_threads(task.threads)
    cfg, paths = task.cfg, RunPaths(Path(task.run_dir))
    timer = Timer()
    table = OffsetTable(paths.offsets)
    model, header = load_model(paths.model0(cfg.tag), fix=FIX_TRAIN, kind="model0",
                               cim=lambda h: design_cim(h, table, cfg.adc))
    cim = design_cim(header, table, cfg.adc)
    model.to(task.device)
    data = _eval_set(cfg, header)
    xt, yt = data.x_test, data.y_test

    def on_chip(chip: int) -> float:
        load_chip(model, table, cfg.adc, cfg.wl_ratio, chip)
        return accuracy(model, xt, yt, batch=cfg.batch, device=task.device)

    before = on_chip(task.chip_id)
    bn_only = math.nan
    if cfg.bn_batches:
        control = copy.deepcopy(model)
        recalibrate_batchnorm(control, data.x_train, batch=cfg.batch, batches=cfg.bn_batches,
                              generator=torch.Generator().manual_seed(_chip_seed(cfg, task.chip_id) + 1),
                              device=task.device)
        bn_only = accuracy(control, xt, yt, batch=cfg.batch, device=task.device)
        del control
    iters = cfg.iters or max(len(data.x_train) // cfg.batch, 1)
    every = cfg.eval_every or max(iters // 10, 1)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(_chip_seed(cfg, task.chip_id))
    curve = [{"iteration": 0, "acc_chip": before, "loss": math.nan}]
    done = 0
    while done < iters:
        n = min(every, iters - done)
        stats = train_steps(model, opt, data.x_train, data.y_train, steps=n, batch=cfg.batch, generator=gen,
                            lr_at=lambda s: cosine_lr(cfg.lr, s, iters), first_step=done, device=task.device)
        done += n
        curve.append({"iteration": done, "acc_chip": accuracy(model, xt, yt, batch=cfg.batch, device=task.device),
                      "loss": float(np.mean([s.loss for s in stats]))})
    after = curve[-1]["acc_chip"]
    set_digital(model, True)
    model1 = accuracy(model, xt, yt, batch=cfg.batch, device=task.device)
    set_digital(model, False)
    cross = [{"weights_chip": task.chip_id, "offsets_chip": task.chip_id, "acc": after}]
    cross += [{"weights_chip": task.chip_id, "offsets_chip": c, "acc": on_chip(c)} for c in task.cross]
    load_chip(model, table, cfg.adc, cfg.wl_ratio, task.chip_id)
    shifts = table.threshold_shifts_lsb(cfg.adc, cfg.wl_ratio, task.chip_id)
    result = {"tag": cfg.tag, "model": header["model"], "adc": cfg.adc, "wl_ratio": float(cfg.wl_ratio),
              "chip_id": task.chip_id, "acc_software": task.acc_software, "acc_nominal_chip": task.acc_nominal_chip,
              "acc_chip_before": before, "acc_chip_bn_only": bn_only, "acc_chip_after": after,
              "acc_model1_digital": model1,
              "offset_lsb_rms": float(np.sqrt(np.mean(np.square(shifts)))), "iterations": iters, "n_eval": len(xt),
              "seconds": timer(), "seed": cfg.seed}
    out = {"result": result, "curve": curve, "cross": cross}
    save_checkpoint(paths.chip_checkpoint(cfg.tag, cfg.adc, cfg.wl_ratio, task.chip_id), model.state_dict(),
                    {**header, "kind": "chip", "stage": "finetune", "cim": cim.to_dict(), "chip_id": task.chip_id,
                     "adc": cfg.adc, "wl_ratio": float(cfg.wl_ratio), "config": asdict(cfg),
                     "config_hash": task.chip_hash, "train_config_hash": header["config_hash"], **out})
    logger.info("finetune %s %s W/L=%g chip %d: %.4f -> %.4f (model1 %.4f) in %.0f s", cfg.tag, cfg.adc,
                cfg.wl_ratio, task.chip_id, before, after, model1, result["seconds"])
    return out


def _finished(path: Path, chip_hash: str) -> dict[str, Any] | None:
    """A finished chip's outputs if its checkpoint verifies and matches this configuration."""
    if not path.is_file():
        return None
    try:
        header, _ = load_checkpoint(path, fix="it will be finetuned again", kind="chip")
    except ArtifactError as exc:
        logger.warning("%s", exc)
        return None
    if header.get("config_hash") != chip_hash:
        return None
    return {k: header[k] for k in ("result", "curve", "cross")}


def _nominal(cfg: FinetuneConfig, paths: RunPaths, header: dict[str, Any], table: OffsetTable,
             train_hash: str, device: str) -> tuple[float, float]:
    """(acc_software, acc_nominal_chip) of model0 on this design, cached in ``nominal.json``."""
    out = paths.finetune_dir(cfg.tag, cfg.adc, cfg.wl_ratio) / "nominal.json"
    key = config_hash({"train": train_hash, "eval_images": cfg.eval_images, "batch": cfg.batch,
                       "cim": design_cim(header, table, cfg.adc).to_dict()})
    if out.is_file():
        try:
            doc = read_json(out, fix="it is recomputed")
            if doc.get("key") == key:
                return float(doc["acc_software"]), float(doc["acc_nominal_chip"])
        except ArtifactError:
            pass
    model, _ = load_model(paths.model0(cfg.tag), fix=FIX_TRAIN, kind="model0",
                          cim=lambda h: design_cim(h, table, cfg.adc))
    model.to(device)
    data = _eval_set(cfg, header)
    set_digital(model, True)
    software = accuracy(model, data.x_test, data.y_test, batch=cfg.batch, device=device)
    set_digital(model, False)
    nominal = accuracy(model, data.x_test, data.y_test, batch=cfg.batch, device=device)
    write_json(out, {"key": key, "acc_software": software, "acc_nominal_chip": nominal})
    return software, nominal


def finetune(run_dir: Path, cfg: FinetuneConfig, executor: Executor, device: str = "cpu", workers: int = 1,
             progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Finetune every chip of ``cfg.chips`` (resuming finished ones); writes the design's tables and plots."""
    paths = RunPaths(Path(run_dir))
    header = load_checkpoint(paths.model0(cfg.tag), fix=FIX_TRAIN, kind="model0")[0]
    if not paths.offsets.is_file():
        raise ArtifactError(f"{paths.offsets} is missing; {FIX_CHIPS}")
    table = OffsetTable(paths.offsets)
    if (cfg.adc, float(cfg.wl_ratio)) not in table.designs:
        raise ConfigError(f"design {cfg.adc} W/L={cfg.wl_ratio:g} is not in {paths.offsets}; designs: "
                          + ", ".join(f"{a} W/L={w:g}" for a, w in table.designs))
    n = table.n_chips(cfg.adc, cfg.wl_ratio)
    missing = [c for c in cfg.chips if c >= n]
    if missing:
        raise ConfigError(f"chips {missing} are not in the table ({n} chips per design, ids 0-{n - 1}); "
                          "draw more with `cimcosim chips --n-chips N`")
    design_cim(header, table, cfg.adc)  # settings mismatch fails here, before any work
    offsets_hash = config_hash(table.meta.get("config_hash", ""))
    chip_hash = cfg.chip_hash(header["config_hash"], offsets_hash)
    software, nominal = _nominal(cfg, paths, header, table, header["config_hash"], device)
    threads = threads_per_worker(workers)
    outs: dict[int, dict[str, Any]] = {}
    pending = {}
    chips = list(cfg.chips)
    for i, chip in enumerate(chips):
        done = _finished(paths.chip_checkpoint(cfg.tag, cfg.adc, cfg.wl_ratio, chip), chip_hash)
        if done is not None:
            outs[chip] = done
            continue
        cross = tuple(chips[(i + j) % len(chips)] for j in range(1, min(cfg.cross_chips, len(chips) - 1) + 1))
        task = ChipTask(str(run_dir), cfg, chip, cross, software, nominal, chip_hash, device, threads)
        pending[executor.submit(finetune_chip, task)] = chip
    if outs:
        logger.info("finetune: %d of %d chips finished earlier, reused", len(outs), len(chips))
    if progress:
        progress(len(outs), len(chips))
    for future in as_completed(pending):
        outs[pending[future]] = future.result()
        if progress:
            progress(len(outs), len(chips))
    outs.update(_earlier_chips(paths, cfg, chip_hash, set(outs)))
    return _write_design(paths, cfg, [outs[c] for c in sorted(outs)], chip_hash)


def _earlier_chips(paths: RunPaths, cfg: FinetuneConfig, chip_hash: str, known: set[int]) -> dict[int, Any]:
    """Chips of this design finetuned by earlier calls with the same settings (``--chips 0`` then ``--chips 1``):
    the design's tables list every finished chip, not only the latest call's."""
    found = {}
    for path in paths.finetune_dir(cfg.tag, cfg.adc, cfg.wl_ratio).glob("chip_*.pt"):
        chip = path.stem.removeprefix("chip_")
        if chip.isdigit() and int(chip) not in known and (done := _finished(path, chip_hash)) is not None:
            found[int(chip)] = done
    return found


def _write_design(paths: RunPaths, cfg: FinetuneConfig, outs: list[dict[str, Any]], chip_hash: str) -> pd.DataFrame:
    out = paths.finetune_dir(cfg.tag, cfg.adc, cfg.wl_ratio)
    design = {"tag": cfg.tag, "adc": cfg.adc, "wl_ratio": float(cfg.wl_ratio)}
    results = pd.DataFrame([o["result"] for o in outs])
    curves = pd.DataFrame([{**design, "chip_id": o["result"]["chip_id"], **row} for o in outs for row in o["curve"]])
    cross = pd.DataFrame([{**design, **row} for o in outs for row in o["cross"]])
    meta = {"stage": "finetune", "config_hash": chip_hash, "config": asdict(cfg), "seed": cfg.seed,
            "versions": versions()}
    write_table(results, out / "results.parquet", RESULTS, meta)
    write_table(curves, out / "curves.parquet", CURVES, meta)
    write_table(cross, out / "cross_chip.parquet", CROSS, meta)
    from pipeline.plots_nn import plot_accuracy_hist, plot_finetune_curves

    baseline = float(results.acc_software.iloc[0])
    plot_finetune_curves(curves, out / "curves.png", baseline)
    plot_accuracy_hist(results, out / "accuracy_hist.png")
    _write_tag_plots(paths, cfg.tag)
    return results


def _write_tag_plots(paths: RunPaths, tag: str) -> None:
    """Fig. 5a-d over every design finetuned so far for this tag (``finetune/<tag>/curves.png``, ...)."""
    from pipeline.artifacts import read_table
    from pipeline.plots_nn import plot_accuracy_hist, plot_finetune_curves

    res, cur = [], []
    for d in sorted((paths.finetune / tag).glob("*_wl*")):
        try:
            res.append(read_table(d / "results.parquet", RESULTS, fix="rerun finetune")[0])
            cur.append(read_table(d / "curves.parquet", CURVES, fix="rerun finetune")[0])
        except ArtifactError:
            continue
    if res:
        results = pd.concat(res, ignore_index=True)
        plot_finetune_curves(pd.concat(cur, ignore_index=True), paths.finetune / tag / "curves.png",
                             float(results.acc_software.iloc[0]))
        plot_accuracy_hist(results, paths.finetune / tag / "accuracy_hist.png")
