"""Stage ``attack``: adversarial examples across chips (seed 001 Sec. IV, Fig. 6, Tables 1 and 2).

For one design and one attack, adversarial examples are made on each *source* deployment
(:mod:`pipeline.deployments`) and applied to every *target*. The seed's cases, with chip 1 = ``target_chip``
and chip 2 = ``source_chip``:

* case 1: attack model0 (software), apply to chip 1 (its finetuned weights on its offsets);
* case 2: attack model1 (chip 1's finetuned weights, digital), apply to chip 1;
* case 3: attack chip 2 on chip (forward on chip 2, gradient in software), apply to chip 1;

plus chip 1 attacked directly (white box), every transfer chip as a source (the transfer matrix), and the
controls: model0 to chip 1's offsets without finetune (``raw_c<t>``: robustness from the offsets alone?),
model0 to the nominal chip and to another software model (``--sw-tag``: is low transfer just a property of
minimum-norm examples?), and an adaptive attacker (``--eot K``: EOT over K other finetuned chips, applied to
chip 1; source ``eot<K>``, or ``eot<K>-all`` with ``--eot-success all``, which keeps an example only when it
fools every one of the K chips rather than their mean logits). One executor task per source; each writes
``adv_<source>.pt`` atomically (a rerun skips finished sources whose settings match) and the targets are
evaluated afterwards.

Outputs under ``RUN/attack/<tag>/<adc>_wl<R>/<attack>/``: ``results.parquet`` (one row per source and target),
``adv_<source>.pt``, ``table1.md``, ``transfer.png``; ``RUN/attack/<tag>/<adc>_wl<R>/table2.md`` over the
C&W norms run so far.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from nn.attacks import CWL0, CWL2, EOT, FGSM, PGD, Attack, CWLinf, norms
from nn.attacks.eot import SUCCESS as EOT_SUCCESS
from nn.training import predict
from pipeline.artifacts import ArtifactError, read_table, versions, write_table
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import ADC_KINDS, ConfigError, config_hash
from pipeline.datasets import load_data
from pipeline.deployments import Design
from pipeline.executor import as_completed, threads_per_worker

logger = logging.getLogger(__name__)

STAGE_ATTACK = 5
ATTACKS = ("cw-l2", "cw-linf", "cw-l0", "pgd", "fgsm")

RESULTS = pa.schema([
    pa.field("attack", pa.string()), pa.field("case", pa.string()),
    pa.field("source", pa.string()), pa.field("target", pa.string()),
    pa.field("n_images", pa.int64()),
    pa.field("acc_before", pa.float64()),  # target on the clean images
    pa.field("acc_after", pa.float64()),  # target on the source's adversarial images
    pa.field("success_rate", pa.float64()),  # of the images the target got right, the share it now gets wrong
    pa.field("source_success", pa.float64()),  # share of images whose example fools the source itself
    pa.field("l0_median", pa.float64()), pa.field("l0_mean", pa.float64()),  # over the source's successful examples
    pa.field("l2_median", pa.float64()), pa.field("l2_mean", pa.float64()),
    pa.field("linf_median", pa.float64()), pa.field("linf_mean", pa.float64()),
])


@dataclass(frozen=True)
class AttackConfig:
    """Configuration of one attack run on one design."""

    tag: str = "vgg8_fmnist"
    """Train tag (model0) whose finetuned chips are attacked."""
    adc: str = "flash"
    """ADC kind of the design."""
    wl_ratio: float = 10.0
    """SA W/L of the design."""
    attack: str = "cw-l2"
    """One of cw-l2, cw-linf, cw-l0, pgd, fgsm."""
    cases: tuple[int, ...] = (1, 2, 3)
    """Seed 001 attack cases to run."""
    target_chip: int = 0
    """The seed's chip 1: the chip that receives the examples."""
    source_chip: int = 1
    """The seed's chip 2: the chip attacked on chip in case 3."""
    transfer_chips: tuple[int, ...] = ()
    """Further finetuned chips, each a source and a target of the transfer matrix."""
    n_images: int = 100
    """Test images attacked (the first N)."""
    confidence: float = 0.0
    """C&W kappa (margin); sweep it to see transfer vs strength."""
    eps: float = 0.03
    """L-inf radius of PGD and FGSM."""
    max_iterations: int | None = None
    """Optimizer steps per constant (C&W; default 1000 as the reference: expensive on a CPU chip) or PGD steps
    (default 10)."""
    binary_search_steps: int = 9
    """C&W L2 binary-search steps over c."""
    initial_const: float | None = None
    """C&W starting constant c (default: the reference's, 1e-3 for L2/L0, 1e-5 for L-inf). With a reduced
    budget (few search steps) start higher, or the search never reaches a c that succeeds."""
    eot: int = 0
    """Adaptive attacker: EOT over this many finetuned chips other than the target (0: off)."""
    eot_chips: tuple[int, ...] = ()
    """The chips the adaptive attacker averages over (default: the first ``eot`` finetuned chips that are
    neither the target nor the source)."""
    eot_success: str = "mean"
    """When the adaptive attacker counts an example as found: the chips' mean logits fooled ("mean") or every
    chip fooled ("all"; :class:`nn.attacks.EOT`'s ``success``)."""
    white_box: bool = True
    """Attack chip 1 itself (the white-box control). Off: only the transfer sources run -- for the costliest
    attacks (C&W L0 on a chip takes a chip forward and backward per step, hours per source on a CPU)."""
    sw_tag: str | None = None
    """Control: another software model (e.g. model0 trained with another seed) as a target."""
    seed: int = 1
    """Root seed (PGD starts)."""

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ConfigError(f"unknown attack {self.attack!r}; choose from {', '.join(ATTACKS)}")
        if self.adc not in ADC_KINDS:
            raise ConfigError(f"unknown ADC kind {self.adc!r}; choose from {list(ADC_KINDS)}")
        if not (math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise ConfigError(f"eps={self.eps!r} must be in (0, 1] (images are in [0, 1])")
        if isinstance(self.n_images, bool) or not isinstance(self.n_images, int) or self.n_images <= 0:
            raise ConfigError(f"n_images={self.n_images!r} must be a positive integer")
        if not set(self.cases) <= {1, 2, 3}:
            raise ConfigError(f"cases={self.cases!r}: the seed's cases are 1, 2, 3")
        if self.target_chip == self.source_chip:
            raise ConfigError("target_chip and source_chip must differ (chip 1 and chip 2 of the seed)")
        if not (math.isfinite(self.confidence) and self.confidence >= 0):
            raise ConfigError(f"confidence={self.confidence!r} must be >= 0")
        for name in ("max_iterations",):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if self.initial_const is not None and not (math.isfinite(self.initial_const) and self.initial_const > 0):
            raise ConfigError(f"initial_const={self.initial_const!r} must be > 0")
        if self.eot < 0 or self.binary_search_steps < 1:
            raise ConfigError("eot must be >= 0 and binary_search_steps >= 1")
        if self.eot_chips and len(self.eot_chips) != self.eot:
            raise ConfigError(f"eot_chips={list(self.eot_chips)} names {len(self.eot_chips)} chips but eot={self.eot}; "
                              "give as many chips as the EOT averages over")
        if self.eot_success not in EOT_SUCCESS:
            raise ConfigError(f"eot_success={self.eot_success!r}: choose from {', '.join(EOT_SUCCESS)}")
        if self.eot_success != "mean" and not self.eot:
            raise ConfigError(f"eot_success={self.eot_success!r} sets how the adaptive attacker counts an example; "
                              "turn it on with --eot K or --eot-chips")
        if self.target_chip in self.eot_chips:
            raise ConfigError(f"eot_chips={list(self.eot_chips)} holds the target chip {self.target_chip}: the "
                              "adaptive attacker knows the population, not chip 1")

    def make(self, seed: int) -> Attack:
        """The configured attack object."""
        it = self.max_iterations
        c: dict[str, Any] = {} if self.initial_const is None else {"initial_const": self.initial_const}
        if self.attack == "cw-l2":
            return CWL2(confidence=self.confidence, max_iterations=it or 1000,
                        binary_search_steps=self.binary_search_steps, **c)
        if self.attack == "cw-linf":
            return CWLinf(max_iterations=it or 1000, **c)
        if self.attack == "cw-l0":
            return CWL0(max_iterations=it or 1000, **c)
        if self.attack == "pgd":
            return PGD(eps=self.eps, steps=it or 10, seed=seed)
        return FGSM(eps=self.eps)

    @property
    def name(self) -> str:
        """Folder name of this attack's outputs (attack and strength)."""
        if self.attack in ("pgd", "fgsm"):
            return f"{self.attack}_eps{self.eps:g}"
        return f"{self.attack}_k{self.confidence:g}" if self.confidence else self.attack

    def sources(self) -> dict[str, str]:
        """{source: role}: what is attacked."""
        t, s = self.target_chip, self.source_chip
        out = {f"chip_c{t}": "white-box"} if self.white_box else {}
        if 1 in self.cases:
            out["model0"] = "case 1"
        if 2 in self.cases:
            out[f"model1_c{t}"] = "case 2"
        if 3 in self.cases:
            out[f"chip_c{s}"] = "case 3"
        for k in self.transfer_chips:
            out.setdefault(f"chip_c{k}", "matrix")
        if self.eot:
            out[self.eot_source] = "adaptive"
        return out

    @property
    def eot_source(self) -> str:
        """The adaptive attacker's source name."""
        return f"eot{self.eot}" + ("" if self.eot_success == "mean" else f"-{self.eot_success}")

    def targets(self) -> list[str]:
        """What the examples are applied to."""
        chips = dict.fromkeys([self.target_chip, self.source_chip, *self.transfer_chips])
        out = [f"chip_c{k}" for k in chips] + [f"raw_c{self.target_chip}", "nominal", "model0",
                                                 f"model1_c{self.target_chip}"]
        return out + ([f"sw:{self.sw_tag}"] if self.sw_tag else [])


def case_of(cfg: AttackConfig, source: str, target: str, eot_chips: tuple[int, ...] = ()) -> str:
    """The role of a (source, target) pair in the seed's tables and the controls (``eot_chips``: the adaptive
    attacker's own chips, as resolved for this run)."""
    t, s = cfg.target_chip, cfg.source_chip
    chip1 = f"chip_c{t}"
    if source == target:
        return "white-box" if source == chip1 else "self"
    if source.startswith("eot") and target in {f"chip_c{k}" for k in eot_chips}:
        return "adaptive: own chip"
    named = {("model0", chip1): "case 1", (f"model1_c{t}", chip1): "case 2", (f"chip_c{s}", chip1): "case 3",
             (cfg.eot_source, chip1): "adaptive", ("model0", f"raw_c{t}"): "control: offsets only",
             ("model0", "nominal"): "control: software to nominal chip",
             ("model0", f"sw:{cfg.sw_tag}"): "control: software to software"}
    return named.get((source, target), "matrix")


@dataclass(frozen=True)
class SourceTask:
    """Make the adversarial examples of one source (picklable)."""

    run_dir: str
    cfg: AttackConfig
    source: str
    eot_chips: tuple[int, ...]
    key: str
    device: str
    threads: int


def _images(cfg: AttackConfig, design: Design) -> tuple[torch.Tensor, torch.Tensor]:
    header, _ = load_checkpoint(design.paths.model0(cfg.tag), fix="run `cimcosim train` first")
    data = load_data(header["data"], 1, cfg.n_images)
    return data.x_test, data.y_test


def _out_dir(run_dir: Path, cfg: AttackConfig) -> Path:
    return Path(run_dir) / "attack" / cfg.tag / f"{cfg.adc}_wl{cfg.wl_ratio:g}" / cfg.name


def _seed(cfg: AttackConfig, source: str) -> int:
    ss = np.random.SeedSequence(cfg.seed, spawn_key=(STAGE_ATTACK, int(config_hash(source)[:8], 16)))
    return int(ss.generate_state(1, np.uint64)[0] >> 1)


def make_examples(task: SourceTask) -> str:
    """Attack one source; writes ``adv_<source>.pt`` and returns its path."""
    torch.set_num_threads(task.threads)
    cfg = task.cfg
    design = Design(Path(task.run_dir), cfg.tag, cfg.adc, cfg.wl_ratio, task.device)
    x, y = _images(cfg, design)
    attack = cfg.make(_seed(cfg, task.source))
    if task.source.startswith("eot"):
        models = [design.model(f"chip_c{k}") for k in task.eot_chips]
        adv = EOT(attack, models=models, success=cfg.eot_success)(models[0], x.to(task.device), y.to(task.device))
    else:
        adv = attack(design.model(task.source), x.to(task.device), y.to(task.device))
    path = _out_dir(Path(task.run_dir), cfg) / f"adv_{_safe(task.source)}.pt"
    save_checkpoint(path, {"adversarial": adv.cpu(), "images": x, "labels": y},
                    {"kind": "adversarial", "stage": "attack", "source": task.source, "key": task.key,
                     "config": asdict(cfg), "eot_chips": list(task.eot_chips)})
    logger.info("attack %s: examples on %s done", cfg.name, task.source)
    return str(path)


def _safe(name: str) -> str:
    return name.replace(":", "-")


def _eot_chips(cfg: AttackConfig, design: Design) -> tuple[int, ...]:
    if not cfg.eot:
        return ()
    if cfg.eot_chips:
        chips = cfg.eot_chips
    else:
        finetuned = sorted(int(p.stem.split("_")[1]) for p in
                           design.paths.finetune_dir(cfg.tag, cfg.adc, cfg.wl_ratio).glob("chip_*.pt"))
        chips = tuple(k for k in finetuned if k not in (cfg.target_chip, cfg.source_chip))[:cfg.eot]
    if len(chips) < cfg.eot:  # (a target chip among eot_chips is refused by AttackConfig)
        raise ConfigError(f"the adaptive attacker needs {cfg.eot} finetuned chips other than the target chip "
                          f"{cfg.target_chip}; found {list(chips)}; finetune more chips first")
    return tuple(chips)


def attack(run_dir: Path, cfg: AttackConfig, executor: Executor, device: str = "cpu", workers: int = 1,
           progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Make (or reuse) every source's examples, apply them to every target, write the tables."""
    design = Design(Path(run_dir), cfg.tag, cfg.adc, cfg.wl_ratio, device)
    if not design.paths.offsets.is_file():
        raise ArtifactError(f"{design.paths.offsets} is missing; run `cimcosim chips` first")
    if (cfg.adc, float(cfg.wl_ratio)) not in design.table.designs:
        raise ConfigError(f"design {cfg.adc} W/L={cfg.wl_ratio:g} is not in the offsets table")
    eot_chips = _eot_chips(cfg, design)
    sources = cfg.sources()
    for name in [*[s for s in sources if not s.startswith("eot")], *cfg.targets(), *(f"chip_c{k}" for k in eot_chips)]:
        design.check(name)
    x, y = _images(cfg, design)
    out = _out_dir(Path(run_dir), cfg)
    threads = threads_per_worker(workers)
    attack_key = {k: v for k, v in asdict(cfg).items() if k in ("attack", "confidence", "eps", "max_iterations",
                                                                 "binary_search_steps", "initial_const", "n_images",
                                                                 "seed")}
    pending, done = {}, 0
    # digital sources first: they cost ~50x less than a chip's, so an interrupted run keeps cases 1 and 2
    for source in sorted(sources, key=lambda s: s.startswith(("chip", "eot"))):
        members = [f"chip_c{k}" for k in eot_chips] if source.startswith("eot") else [source]
        key = config_hash({"attack": attack_key, "models": [design.fingerprint(m) for m in members]})
        path = out / f"adv_{_safe(source)}.pt"
        if _reusable(path, key):
            done += 1
            continue
        task = SourceTask(str(run_dir), cfg, source, eot_chips if source.startswith("eot") else (), key, device,
                          threads)
        pending[executor.submit(make_examples, task)] = source
    if progress:
        progress(done, len(sources))
    for future in as_completed(pending):
        future.result()
        done += 1
        if progress:
            progress(done, len(sources))
    return _evaluate(design, cfg, sources, eot_chips, x, y, out)


def _reusable(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        header, _ = load_checkpoint(path, fix="it is recomputed", kind="adversarial")
    except ArtifactError as exc:
        logger.warning("%s", exc)
        return False
    return header.get("key") == key


def _evaluate(design: Design, cfg: AttackConfig, sources: dict[str, str], eot_chips: tuple[int, ...],
              x: torch.Tensor, y: torch.Tensor, out: Path) -> pd.DataFrame:
    advs = {s: load_checkpoint(out / f"adv_{_safe(s)}.pt", fix="rerun the attack")[1]["adversarial"]
            for s in sources}
    rows: list[dict[str, Any]] = []
    # per source: (clean right, example wrong) on the source itself; for the adaptive attacker on every chip it
    # was made on (right on all of them, wrong on all of them): what it can check, not chip 1, which it never saw
    own: dict[str, torch.Tensor] = {}
    members = [f"chip_c{k}" for k in eot_chips]
    # the adaptive attacker's own chips are targets too: does its example fool the chips it was made on?
    targets = list(dict.fromkeys([*cfg.targets(), *(s for s in sources if not s.startswith("eot")), *members]))
    for target in targets:
        model = design.model(target)
        clean = predict(model, x, batch=200, device=design.device)
        for source, adv in advs.items():
            pred = predict(model, adv, batch=200, device=design.device)
            right = clean == y
            if source == target or (source.startswith("eot") and target in members):
                pair = torch.stack([right, pred != y])
                own[source] = own[source] & pair if source in own else pair
            rows.append({"attack": cfg.name, "case": case_of(cfg, source, target, eot_chips), "source": source,
                         "target": target, "n_images": len(y), "acc_before": float(right.float().mean()),
                         "acc_after": float((pred == y).float().mean()),
                         "success_rate": float((right & (pred != y)).sum() / max(int(right.sum()), 1))})
    sizes: dict[str, dict[str, float]] = {}
    for source, adv in advs.items():
        # source_success: of the images the source classified right, the share its example fools (the EOT
        # attacker: right on all its chips, fooling all of them); sizes over those successful examples, the
        # reference's convention (a failed search returns the clean image, size 0, and would drag the median)
        right, fooled = own[source]
        n = norms(adv, x)
        sizes[source] = {"source_success": float((right & fooled).sum() / max(int(right.sum()), 1))}
        for k in ("l0", "l2", "linf"):
            v = n[k][right & fooled]
            sizes[source][f"{k}_median"] = float(v.median()) if len(v) else math.nan
            sizes[source][f"{k}_mean"] = float(v.mean()) if len(v) else math.nan
    for row in rows:
        row.update(sizes[row["source"]])
    results = pd.DataFrame(rows)
    write_table(results, out / "results.parquet", RESULTS,
                {"stage": "attack", "config": asdict(cfg), "config_hash": config_hash(asdict(cfg)),
                 "seed": cfg.seed, "versions": versions()})
    from pipeline.attack_report import plot_transfer, write_table1, write_table2

    write_table1(results, cfg, out / "table1.md")
    plot_transfer(results, out / "transfer.png", f"{cfg.name}, {cfg.adc.upper()} W/L={cfg.wl_ratio:g}")
    write_table2(out.parent, cfg)
    return results


def read_results(path: Path) -> pd.DataFrame:
    """One attack run's results table."""
    return read_table(path, RESULTS, fix="rerun `cimcosim attack`")[0]
