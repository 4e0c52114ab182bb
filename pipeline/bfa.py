"""Stage ``bfa``: the bit-flip attack on a trained model0 (seed 000 Sec. III.E, Fig. 6), beside random flips.

Each run r draws its own attack batch from the training images (the attacker's data; SeedSequence of the
root seed, stage and run) and attacks a fresh copy of model0 on its own path (digital for a plain model0;
the chip path when it was trained with noise or partial-sum quantization, or when ``noise_sigma_psum``
adds per-inference Gaussian noise here): :class:`nn.attacks.BFA` (``candidates`` bits per layer scored on that
path) until the test accuracy on the first ``eval_images`` test images is at or below ``target_acc`` or
``max_flips`` bits are flipped. The baseline
flips ``max_flips`` random stored bits one at a time with the accuracy after each. One executor task per run;
each writes ``runs/run_<r>.json`` atomically, so a rerun skips finished runs whose settings match, and
``runs/run_<r>.partial.json`` after every BFA step, so a rerun of a run cut short replays its flips and goes on.

Outputs under ``RUN/bfa/<tag>/``: ``results.parquet`` (run, method = bfa | random, flips, acc_before,
acc_after, reached), ``flips.parquet`` (every flip: run, method, flip, layer, weight_index, bit, polarity,
loss, acc), ``bfa.png`` (accuracy vs flips).
"""

from __future__ import annotations

import copy
import logging
import math
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from nn.attacks import AttackError
from nn.attacks.bfa import BFA, StoredBits, random_flips
from nn.convert import cim_layers, set_digital
from nn.training import accuracy
from pipeline.artifacts import ArtifactError, read_json, versions, write_json, write_table
from pipeline.checkpoint import load_model
from pipeline.config import ConfigError, config_hash
from pipeline.datasets import load_data
from pipeline.executor import as_completed, threads_per_worker
from pipeline.finetune import FIX_TRAIN
from pipeline.paths import RunPaths
from pipeline.train import trains_on_chip

logger = logging.getLogger(__name__)

STAGE_BFA = 6

RESULTS = pa.schema([
    pa.field("run", pa.int32()), pa.field("method", pa.string()), pa.field("flips", pa.int64()),
    pa.field("acc_before", pa.float64()), pa.field("acc_after", pa.float64()), pa.field("reached", pa.bool_()),
    pa.field("path", pa.string()), pa.field("noise_sigma_psum", pa.float64()),
])
FLIPS = pa.schema([
    pa.field("run", pa.int32()), pa.field("method", pa.string()), pa.field("flip", pa.int64()),
    pa.field("layer", pa.string()), pa.field("weight_index", pa.int64()), pa.field("bit", pa.int32()),
    pa.field("polarity", pa.string()), pa.field("loss", pa.float64()), pa.field("acc", pa.float64()),
])


@dataclass(frozen=True)
class BFAConfig:
    """Configuration of one ``bfa`` run (every field is hashed into the outputs)."""

    tag: str = "vgg8_fmnist"
    """Train tag whose model0 is attacked."""
    runs: int = 5
    """Independent attacks (attack batches), as the seed's 5."""
    attack_batch: int = 128
    """Training images the attacker computes the loss on (the reference's 128)."""
    max_flips: int = 100
    """Bit flips at most per run (BFA and the random baseline)."""
    target_acc: float = 0.11
    """Stop once the test accuracy is at or below this (random guess on 10 classes + 1 %)."""
    eval_images: int = 1000
    """Test images of every accuracy (the first N)."""
    noise_sigma_psum: float = 0.0
    """Per-inference Gaussian noise on every partial sum (partial-sum units) during the attack and the test;
    > 0 puts model0 on its chip path."""
    seed: int = 1
    """Root seed (attack batches, random flips, noise draws)."""
    noise_off: bool = False
    """Read the chip without the read noise model0 was trained with (the control that separates the weights from
    the noisy readout: does a noise-trained network resist BFA, or does its noise hide the gradient?)."""
    candidates: int = 1
    """Bits per layer tried one at a time on the model's own forward at each step (1: the reference's top-1;
    more: a stronger attacker where the straight-through gradient misjudges the chip, :class:`nn.attacks.BFA`)."""

    def __post_init__(self) -> None:
        for name in ("runs", "attack_batch", "max_flips", "eval_images", "candidates"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if not (math.isfinite(self.target_acc) and 0 <= self.target_acc <= 1):
            raise ConfigError(f"target_acc={self.target_acc!r} must be in [0, 1]")
        if not (math.isfinite(self.noise_sigma_psum) and self.noise_sigma_psum >= 0):
            raise ConfigError(f"noise_sigma_psum={self.noise_sigma_psum!r} must be >= 0")
        if self.noise_off and self.noise_sigma_psum > 0:
            raise ConfigError("noise_off and noise_sigma_psum > 0 contradict each other: give one of "
                              "--noise-off / --noise-sigma")


def model0_on_its_path(path: Path, noise_sigma_psum: float = 0.0, noise_off: bool = False
                       ) -> tuple[torch.nn.Module, dict[str, Any], bool]:
    """(model0, header, chip path?): digital for a plain model0, the chip path for one trained with noise or
    partial-sum quantization (as it was trained and tested) or when noise is added here; ``noise_off`` reads
    the chip without any read noise (Gaussian or table)."""
    def cim(header: dict[str, Any]) -> Any:
        from nn import CIMConfig

        c = CIMConfig.from_dict(header["cim"])
        if noise_off:
            return replace(c, adc=replace(c.adc, noise_sigma=0.0, noise_table=None))
        return replace(c, adc=replace(c.adc, noise_sigma=noise_sigma_psum)) if noise_sigma_psum > 0 else c

    model, header = load_model(path, fix=FIX_TRAIN, kind="model0", cim=cim)
    chip = trains_on_chip(header["config"]) or noise_sigma_psum > 0
    set_digital(model, not chip)
    return model.eval(), header, chip


def _run_dir(run_dir: Path, tag: str) -> Path:
    return Path(run_dir) / "bfa" / tag


def bfa_run(run_dir: str, cfg: BFAConfig, r: int, key: str, threads: int, replay_key: str = "") -> dict[str, Any]:
    """One run (executor task): BFA and the random baseline on fresh copies of model0.

    The BFA flips an earlier run of the same attack recorded (``replay_key``: every setting but the stopping
    rule) are replayed first, from an interrupted run's partial file or a finished run with another
    ``max_flips`` / ``target_acc``: each step's choice does not depend on when the attack stops, so a run raised
    from 40 to 80 flips computes only flips 41-80 (the random baseline is redone)."""
    torch.set_num_threads(threads)
    paths = RunPaths(Path(run_dir))
    ss = np.random.SeedSequence(cfg.seed, spawn_key=(STAGE_BFA, r))
    seeds = [int(v >> 1) for v in ss.generate_state(3, np.uint64)]
    model, header, chip = model0_on_its_path(paths.model0(cfg.tag), cfg.noise_sigma_psum, cfg.noise_off)
    data = load_data(header["data"], None, cfg.eval_images)
    gen = torch.Generator().manual_seed(seeds[0])
    idx = torch.randperm(len(data.x_train), generator=gen)[:cfg.attack_batch]
    x, y = data.x_train[idx], data.y_train[idx]

    def evaluate(m: torch.nn.Module) -> float:
        for layer in cim_layers(m):
            layer.set_noise_seed(seeds[2])  # the same noise draws for every evaluation of this run
        return accuracy(m, data.x_test, data.y_test, batch=500)

    before = evaluate(model)
    logger.info("bfa %s run %d: accuracy before any flip %.4f (%d images)", cfg.tag, r, before, len(data.x_test))
    rows: list[dict[str, Any]] = []
    flips: list[dict[str, Any]] = []

    counts: dict[str, int] = {}

    attacked = copy.deepcopy(model)
    partial = _run_dir(Path(run_dir), cfg.tag) / "runs" / f"run_{r}.partial.json"
    finished = _run_dir(Path(run_dir), cfg.tag) / "runs" / f"run_{r}.json"
    recorded = max(_resumable_flips(partial, key, replay_key), _resumable_flips(finished, key, replay_key),
                   key=len)[:cfg.max_flips]  # the longest record of this attack's flips so far, replayed
    if recorded:
        try:
            stored = StoredBits(attacked)
            for rec in recorded:
                stored.replay(rec["layer"], rec["weight_index"], rec["bit"], rec["polarity"])
            flips.extend(recorded)
            counts["bfa"] = len(recorded)
            logger.info("bfa %s run %d: resumed after %d BFA flips", cfg.tag, r, len(recorded))
        except (AttackError, KeyError, TypeError) as exc:
            logger.warning("%s: recorded flips do not replay (%s); the run restarts from its first flip", partial, exc)
            attacked = copy.deepcopy(model)

    def record(method: str) -> Any:
        def on_flip(f: Any, loss: float, acc: float) -> None:
            counts[method] = counts.get(method, 0) + 1
            flips.append({"run": r, "method": method, "flip": counts[method], "layer": f.layer,
                          "weight_index": f.weight_index, "bit": f.bit, "polarity": f.polarity, "loss": loss,
                          "acc": acc})
            (logger.info if method == "bfa" else logger.debug)(
                "bfa %s run %d: %s flip %d in %s -> accuracy %.4f", cfg.tag, r, method, counts[method], f.layer, acc)
        return on_flip

    resumed = counts.get("bfa", 0)
    left = cfg.max_flips - resumed
    attack = BFA(left, cfg.target_acc, candidates=cfg.candidates) if left > 0 else None

    def save_step() -> None:  # every step's flips are on disk before the next step: an interrupt loses one step
        write_json(partial, {"key": key, "replay_key": replay_key, "flips": flips})

    n, acc, reached = (attack.run(attacked, x, y, evaluate, record("bfa"), save_step) if attack
                       else (0, evaluate(attacked), False))
    n += resumed
    reached = reached or acc <= cfg.target_acc
    rows.append({"run": r, "method": "bfa", "flips": n, "acc_before": before, "acc_after": acc, "reached": reached})
    rand, rgen = copy.deepcopy(model), torch.Generator().manual_seed(seeds[1])
    bits, on_flip, acc, k = StoredBits(rand), record("random"), before, 0
    while acc > cfg.target_acc and k < cfg.max_flips:
        f = random_flips(rand, 1, rgen, bits)[0]
        k += 1
        acc = evaluate(rand)
        on_flip(f, math.nan, acc)
    rows.append({"run": r, "method": "random", "flips": k, "acc_before": before, "acc_after": acc,
                 "reached": acc <= cfg.target_acc})
    for row in rows:
        row.update(path="chip" if chip else "digital", noise_sigma_psum=cfg.noise_sigma_psum)
    out = {"key": key, "replay_key": replay_key, "rows": rows, "flips": flips}
    write_json(_run_dir(Path(run_dir), cfg.tag) / "runs" / f"run_{r}.json", out)
    partial.unlink(missing_ok=True)
    logger.info("bfa %s run %d: BFA %d flips -> %.4f; random %d flips -> %.4f", cfg.tag, r, n, rows[0]["acc_after"],
                k, acc)
    return out


def _resumable_flips(path: Path, key: str, replay_key: str = "") -> list[dict[str, Any]]:
    """The BFA flips a run of this attack recorded in ``path`` (a partial or a finished run's file; none if it did
    not, or its settings differ in more than the stopping rule)."""
    if not path.is_file():
        return []
    try:
        doc = read_json(path, fix="the run restarts from its first flip")
    except ArtifactError as exc:
        logger.warning("%s", exc)
        return []
    if doc.get("key") != key and not (replay_key and doc.get("replay_key") == replay_key):
        return []
    return [f for f in doc.get("flips", []) if f.get("method", "bfa") == "bfa"]


CELLS_VERSION = 2
"""How a chip-path attack's flipped cells are read, hashed into chip-path runs only: 1 read the canonical split
of each flipped integer (before 2026-12-03), 2 the cells as the flips left them. Digital runs do not depend on it."""


def bfa(run_dir: Path, cfg: BFAConfig, executor: Executor, workers: int = 1) -> pd.DataFrame:
    """Run (or reuse) every run, write the tables and the plot; returns the results table."""
    paths = RunPaths(Path(run_dir))
    if not paths.model0(cfg.tag).is_file():
        raise ConfigError(f"no model0 for tag {cfg.tag!r} in {run_dir}; {FIX_TRAIN}")
    # a bad checkpoint fails here
    _, header, chip = model0_on_its_path(paths.model0(cfg.tag), cfg.noise_sigma_psum, cfg.noise_off)
    trained_adc = header["cim"]["adc"]
    if cfg.noise_off and not trained_adc.get("noise_sigma") and trained_adc.get("noise_table") is None:
        raise ConfigError(f"model0 of tag {cfg.tag!r} was not trained with read noise: --noise-off would change "
                          "nothing; drop it")
    settings = asdict(cfg)
    if cfg.candidates == 1:  # the reference attack keeps the key it had before the option existed
        del settings["candidates"]
    if not cfg.noise_off:  # (the same for the noise control)
        del settings["noise_off"]
    del settings["runs"]  # run r does not depend on how many runs there are: --runs 5 after --runs 2 reuses 0-1
    if chip:  # the chip reads flipped cells as stored (see nn.attacks.bfa): earlier chip-path runs are redone
        settings["cells"] = CELLS_VERSION
    key = config_hash({"bfa": settings, "model0": header["sha256"]})
    replay_key = config_hash({"bfa": {k: v for k, v in settings.items() if k not in ("max_flips", "target_acc")},
                              "model0": header["sha256"]})
    out_dir = _run_dir(Path(run_dir), cfg.tag)
    threads = threads_per_worker(workers)
    done: dict[int, dict[str, Any]] = {}
    pending = {}
    for r in range(cfg.runs):
        path = out_dir / "runs" / f"run_{r}.json"
        if path.is_file():
            try:
                doc = read_json(path, fix="it is recomputed")
                if doc.get("key") == key:
                    done[r] = doc
                    continue
            except ArtifactError as exc:
                logger.warning("%s", exc)
        pending[executor.submit(bfa_run, str(run_dir), cfg, r, key, threads, replay_key)] = r
    for future in as_completed(pending):
        done[pending[future]] = future.result()
    results = pd.DataFrame([row for r in sorted(done) for row in done[r]["rows"]])
    flips = pd.DataFrame([f for r in sorted(done) for f in done[r]["flips"]], columns=FLIPS.names)
    meta = {"stage": "bfa", "config": asdict(cfg), "config_hash": key, "seed": cfg.seed, "versions": versions()}
    write_table(results, out_dir / "results.parquet", RESULTS, meta)
    write_table(flips, out_dir / "flips.parquet", FLIPS, meta)
    _plot(results, flips, out_dir / "bfa.png", cfg)
    return results


def _plot(results: pd.DataFrame, flips: pd.DataFrame, path: Path, cfg: BFAConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (run, method), g in flips.groupby(["run", "method"]):
        start = results[(results.run == run) & (results.method == method)].acc_before.iloc[0]
        ax.plot([0, *g.flip], [start, *g.acc], color="C3" if method == "bfa" else "C0", alpha=0.7,
                label=method if run == flips.run.min() else None)
    ax.axhline(cfg.target_acc, color="k", ls=":", lw=1)
    ax.set(xlabel="bit flips", ylabel="test accuracy", title=f"BFA vs random flips: {cfg.tag}")
    if ax.get_legend_handles_labels()[0]:  # a run that starts at the target flips nothing: no lines to name
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
