"""Seed 000's study: IMC noise and partial-sum quantization (PSQ) as a defence (Table II, Figs. 3-6).

The grid is the union of what each figure needs, not the full product of every flag:

- Fig. 3 and Table II: every weight/activation precision x every noise level x both training kinds
  (clean / PGD adversarial), no PSQ;
- Fig. 4: ideal vs noisy 3.5-bit PSQ, adversarially trained, per precision;
- Fig. 5: every PSQ scheme x (no noise, the reference noise), no adversarial training, per precision;
- Fig. 6: BFA flips to random guess for baseline, IMC noise (3.5-bit PSQ + noise), binary input split
  (1-bit PSQ) and binary input split + noise, per precision.

The reference noise (the seed's "measured at 0.6 V") is the user's noise table when one is given, else the
largest Gaussian sigma. Each cell is trained through the train stage (tag ``sn_...``, resumable and skipped
when finished) and then attacked in one executor task: clean accuracy, black-box PGD through a
full-precision substitute (seed 000 Sec. III.D; ``runs`` PGD runs on one substitute), white-box PGD with
EOT over the noise (straight-through gradients through the ADC, so obfuscated gradients are not mistaken
for robustness), and for Fig. 6's cells the bit-flip attack (``runs`` runs, through the bfa stage).
Noise levels are Gaussian sigmas in partial-sum units (one on-cell = 1), the unit the CIM layers use.
With ``warm_start`` each precision's noise-free clean cell is trained first and every other cell of that
precision starts from its model0 (``train --init-from``): noise-aware and PSQ training as a finetune of a
pretrained network, for budgets too short to train them from scratch.

Adversarial accuracy counts an image only if the model classifies it correctly both clean and attacked: the
attacker can always submit the unperturbed image (a zero perturbation is inside the ball), so no attack can
raise accuracy above the clean one. Scoring the attack's final iterate alone can: an adversarially trained
model can learn to read the label from PGD's true-label perturbation ("label leaking", Kurakin et al., ICLR
2017), and such a model scored 85 % under white-box PGD at 28 % clean (measured; README). ``worst_acc``
counts an image only if it survives both attacks of its run (right clean, black-box and white-box): a defence
is as strong as the strongest attack tried on it, and masked gradients can leave either attack the weaker one.
"""

from __future__ import annotations

import hashlib
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

from nn import create_model, list_models
from nn.attacks import EOT, PGD, Square, Substitute
from nn.convert import cim_layers
from nn.training import predict
from pipeline.artifacts import ArtifactError, read_json, versions, write_json, write_table
from pipeline.config import ConfigError, config_hash
from pipeline.datasets import check_spec, load_data
from pipeline.executor import as_completed, threads_per_worker
from pipeline.train import PSQ_ENCODINGS

logger = logging.getLogger(__name__)

STAGE_NOISE = 7
PSQ_NAMES = ("none", "1bit", "2bit", "3.5bit")

RESULTS = pa.schema([
    pa.field("model", pa.string()), pa.field("bits", pa.int32()), pa.field("noise", pa.string()),
    pa.field("psq", pa.string()), pa.field("adv_train", pa.bool_()), pa.field("run", pa.int32()),
    pa.field("clean_acc", pa.float64()), pa.field("bb_pgd_acc", pa.float64()), pa.field("wb_pgd_acc", pa.float64()),
    pa.field("worst_acc", pa.float64()), pa.field("bfa_flips", pa.float64()),
    pa.field("substitute_agreement", pa.float64()),
    pa.field("tag", pa.string()), pa.field("square_acc", pa.float64()),
])


@dataclass(frozen=True)
class StudyNoiseConfig:
    """Configuration of ``study-noise`` (every field is hashed into the outputs)."""

    model: str = "resnet18_fmnist"
    """Registered model trained for every cell (seed 000: ResNet-18)."""
    data: str = "fashion-mnist"
    """Dataset of every cell."""
    bits: tuple[int, ...] = (1, 2, 4)
    """Weight and activation precisions (both the same, as the seed)."""
    first_input_bits: int | None = None
    """Input bits of every cell's first layer, which reads the image (None: the cell's bits; 8 keeps a binary
    network's image unthresholded, the convention of binary networks, and removes input binarization)."""
    noise: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    """Gaussian noise levels, sigma in partial-sum units, in training and test (0: ideal)."""
    noise_table: str = ""
    """A measured P(code | psum) CSV as one more noise level (and the reference); empty: none."""
    psq: tuple[str, ...] = PSQ_NAMES
    """Partial-sum schemes: none (uniform ADC of ``adc_bits``) and seed 000 Table I's."""
    psq_encoding: str = "xnor"
    """How the input-split cells' rows are driven (``TrainConfig.psq_encoding``): 'xnor' or 'unipolar'."""
    adv_train: tuple[bool, ...] = (False, True)
    """Training kinds: clean, PGD adversarial (eps 0.03, 2/255, 10 iterations)."""
    runs: int = 5
    """PGD runs per cell (black-box and white-box) and BFA runs per Fig. 6 cell."""
    subset: int | None = None
    """Training images per cell (the first N; the attacker's images are the last ``attacker_images``)."""
    test_subset: int | None = 2000
    """Test images of each cell's training curve."""
    epochs: int = 10
    batch: int = 128
    lr: float = 2e-3
    attack_images: int = 500
    """Test images attacked per cell (the first N)."""
    attacker_images: int = 5000
    """Training images the black-box attacker labels with the target (the last N of the training split)."""
    substitute_epochs: int = 5
    eot: int = 8
    """Noise draws the white-box attacker averages per gradient (1 on a noise-free cell)."""
    adv_steps: int = 10
    """PGD iterations of adversarial training (the seed's 10)."""
    eps: float = 0.03
    """L-inf budget of every PGD (black-box, white-box, adversarial training; the seed's 0.03 on CIFAR-10). The
    step is 2/255 scaled by eps / 0.03, so 10 steps travel the same multiple of the budget as the seed's."""
    square_queries: int = 0
    """Queries per image of the gradient-free Square Attack run beside the PGDs (``square_acc``; on noisy cells
    through EOT over ``eot`` draws, which measured stronger there than common random numbers, though read noise
    stalls both); 0: not run. Nothing masks gradients from it."""
    square_p: float = 0.3
    """The Square Attack's initial window fraction (the reference's 0.05; 0.3 measured stronger on our cells)."""
    bfa_max_flips: int = 100
    bfa_attack_batch: int = 128
    bfa_eval_images: int = 1000
    seed: int = 1
    bn_recal_batches: int | None = None
    """Every cell re-estimates its BatchNorm statistics on this many training batches after each epoch
    (``TrainConfig.bn_recal_batches``; 0: the running averages). None: the partial-sum-quantized cells
    re-estimate on ``PSQ_BN_RECAL`` batches, the others keep the running averages (their cells, and hashes,
    as before the option existed)."""
    psq_ste_window: float = 0.0
    """The partial-sum-quantized cells' gradient (``TrainConfig.psq_ste_window``; 0: straight through)."""
    first_layer_digital: bool = False
    """Every cell's image-reading first layer computes digitally (``ArrayConfig.first_layer_digital``)."""
    warm_start: bool = False
    """Every cell but its precision's base (noise-free, uniform ADC, clean training: Fig. 6's baseline) starts
    from that base's trained model0 (``train --init-from``) instead of a fresh initialization; the base is
    trained first. A budget measure: at a few epochs the PSQ and noisy cells do not leave chance from scratch."""

    def __post_init__(self) -> None:
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; available: {', '.join(list_models())}")
        check_spec(self.data)
        if not self.bits or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8 for b in self.bits):
            raise ConfigError(f"bits={list(self.bits)} must be integers in 1..8")
        if self.first_input_bits is not None and (isinstance(self.first_input_bits, bool) or not isinstance(
                self.first_input_bits, int) or not 1 <= self.first_input_bits <= 8):
            raise ConfigError(f"first_input_bits={self.first_input_bits!r} must be an integer in 1..8")
        if not self.noise or any(not (math.isfinite(s) and s >= 0) for s in self.noise):
            raise ConfigError(f"noise={list(self.noise)} must be sigmas >= 0 (partial-sum units)")
        unknown = set(self.psq) - set(PSQ_NAMES)
        if unknown or not self.psq:
            raise ConfigError(f"psq: unknown scheme(s) {sorted(unknown)}; choose from {', '.join(PSQ_NAMES)}")
        if self.psq_encoding not in PSQ_ENCODINGS:
            raise ConfigError(f"psq_encoding={self.psq_encoding!r}: choose from {', '.join(PSQ_ENCODINGS)}")
        if self.bn_recal_batches is not None and (isinstance(self.bn_recal_batches, bool) or not isinstance(
                self.bn_recal_batches, int) or self.bn_recal_batches < 0):
            raise ConfigError(f"bn_recal_batches={self.bn_recal_batches!r} must be an integer >= 0")
        if not (isinstance(self.psq_ste_window, float | int) and math.isfinite(self.psq_ste_window)
                and self.psq_ste_window >= 0):
            raise ConfigError(f"psq_ste_window={self.psq_ste_window!r} must be a number >= 0 (partial-sum units)")
        if not (isinstance(self.eps, float | int) and 0 < self.eps <= 1):
            raise ConfigError(f"eps={self.eps!r} must be in (0, 1] (L-inf on [0, 1] images)")
        if not self.adv_train:
            raise ConfigError("adv_train is empty; give false, true or both")
        if isinstance(self.square_queries, bool) or not isinstance(self.square_queries, int) or self.square_queries < 0:
            raise ConfigError(f"square_queries={self.square_queries!r} must be an integer >= 0 (0: no Square Attack)")
        if not (isinstance(self.square_p, float | int) and 0 < self.square_p <= 1):
            raise ConfigError(f"square_p={self.square_p!r} must be in (0, 1] (a fraction of the image)")
        for name in ("runs", "epochs", "batch", "adv_steps", "attack_images", "attacker_images", "substitute_epochs",
                     "eot", "bfa_max_flips", "bfa_attack_batch", "bfa_eval_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if self.noise_table:
            from pipeline.noise_table import read_noise_table

            read_noise_table(self.noise_table)  # a bad table fails here, before anything is trained

    @property
    def alpha(self) -> float:
        """PGD step: the seed's 2/255 at eps 0.03, scaled with eps."""
        return 2 / 255 * (self.eps / 0.03)  # exactly 2/255 at the seed's eps

    @property
    def levels(self) -> list[str]:
        """Noise labels: each sigma as text, and 'table' for the noise table."""
        return [f"{s:g}" for s in self.noise] + (["table"] if self.noise_table else [])

    @property
    def reference(self) -> str:
        """The reference noise of Figs. 4-6 (the seed's measured chip noise)."""
        return "table" if self.noise_table else f"{max(self.noise):g}"


@dataclass(frozen=True)
class Cell:
    """One trained model of the study."""

    bits: int
    noise: str
    psq: str
    adv: bool
    bfa: bool = False

    @property
    def tag(self) -> str:
        return f"sn_b{self.bits}_n{self.noise}_{self.psq.replace('.', 'p')}_{'adv' if self.adv else 'std'}"


def cells(cfg: StudyNoiseConfig) -> list[Cell]:
    """The union of the cells each figure needs (see the module docstring), in a stable order."""
    ref, zero = cfg.reference, f"{0.0:g}"
    want: dict[tuple[int, str, str, bool], bool] = {}

    def add(b: int, n: str, p: str, a: bool, bfa: bool = False) -> None:
        if p in cfg.psq and a in cfg.adv_train and (n in cfg.levels or n == zero):
            want[(b, n, p, a)] = want.get((b, n, p, a), False) or bfa

    for b in cfg.bits:
        for n in cfg.levels:
            for a in cfg.adv_train:
                add(b, n, "none", a)  # Fig. 3, Table II
        for n in (zero, ref):
            add(b, n, "3.5bit", True)  # Fig. 4
            for p in cfg.psq:
                add(b, n, p, False)  # Fig. 5
        add(b, zero, "none", False, bfa=True)  # Fig. 6: baseline, IMC, Bin. IS, Bin. IS IMC
        add(b, ref, "3.5bit", False, bfa=True)
        add(b, zero, "1bit", False, bfa=True)
        add(b, ref, "1bit", False, bfa=True)
    return [Cell(b, n, p, a, bfa) for (b, n, p, a), bfa in want.items()]


def base_cell(cell: Cell) -> Cell:
    """The cell a warm start begins from: same precision, noise-free, uniform ADC, clean training."""
    return Cell(cell.bits, f"{0.0:g}", "none", False)


PSQ_BN_RECAL = 4
"""Training batches a partial-sum-quantized cell re-estimates its BatchNorm statistics on after each epoch, unless
the study sets ``bn_recal_batches``: the running averages do not follow a coarse readout (measured on the 1-bit
cell: 11.7 % in eval mode, 43 % with re-estimated statistics, same weights), and without them a PSQ cell's
accuracy measures its statistics, not its weights."""


def bn_recal(cfg: StudyNoiseConfig, cell: Cell) -> int:
    """The cell's ``TrainConfig.bn_recal_batches``: the study's setting, or by default ``PSQ_BN_RECAL`` for
    partial-sum-quantized cells and 0 for the rest."""
    if cfg.bn_recal_batches is not None:
        return cfg.bn_recal_batches
    return 0 if cell.psq == "none" else PSQ_BN_RECAL


def train_cfg(cfg: StudyNoiseConfig, cell: Cell) -> Any:
    from pipeline.train import train_config

    base = base_cell(cell)
    init = {"init_from": base.tag} if cfg.warm_start and replace(cell, bfa=False) != base else {}

    noise: dict[str, Any] = {}
    if cell.noise == "table":
        noise["noise_table"] = cfg.noise_table
    elif float(cell.noise) > 0:
        noise["noise_sigma_psum"] = float(cell.noise)
    # clean cells are free of every adversarial-training setting, so changing one retrains only adversarial cells
    adv = {"adv_eps": float(cfg.eps), "adv_alpha": cfg.alpha, "adv_steps": cfg.adv_steps} if cell.adv else {}
    # the noise-free control reads the same ADC as the noisy cells: noise is the only difference
    path = {"chip_train": True} if cell.noise == f"{0.0:g}" and cell.psq == "none" else {}
    act = {"act": "relu"} if cell.bits == 1 else {}  # binary activations are {0, 1}: CELU needs >= 2 signed bits
    return train_config(cfg.model, data=cfg.data, weight_bits=cell.bits, input_bits=cell.bits,
                        first_input_bits=cfg.first_input_bits,
                        psq=None if cell.psq == "none" else cell.psq, adv_train=cell.adv,
                        psq_encoding=None if cell.psq == "none" else cfg.psq_encoding,
                        psq_ste_window=None if cell.psq == "none" else float(cfg.psq_ste_window),
                        subset=cfg.subset, test_subset=cfg.test_subset, epochs=cfg.epochs, batch=cfg.batch,
                        lr=cfg.lr, seed=cfg.seed, first_layer_digital=cfg.first_layer_digital or None,
                        bn_recal_batches=bn_recal(cfg, cell), **act, **noise,
                        **adv, **path, **init)


ATTACK_FIELDS = ("model", "data", "runs", "batch", "attack_images", "attacker_images", "substitute_epochs", "eot",
                 "bfa_max_flips", "bfa_attack_batch", "bfa_eval_images", "seed", "eps")
"""The settings besides its training that decide a cell's numbers (the rest of the grid does not)."""
SCORING = 3
"""How attacked images are scored (2: right both clean and attacked; 3: and ``worst_acc``); a change re-attacks
every cell."""


def cell_key(cfg: StudyNoiseConfig, cell: Cell) -> str:
    """The hash a finished cell is reused under: its training, its attacks, its noise table's content.

    Growing the grid (another noise level, precision or scheme) leaves the finished cells' keys alone, so only
    the new cells are trained and attacked.
    """
    table = hashlib.sha256(Path(cfg.noise_table).read_bytes()).hexdigest() if cell.noise == "table" else ""
    t = train_cfg(cfg, cell)
    init = {"init": train_cfg(cfg, base_cell(cell)).to_dict()} if t.init_from else {}  # the source's training too
    square = {"square": [cfg.square_queries, cfg.square_p]} if cfg.square_queries else {}  # off: keys as before
    return config_hash({"cell": asdict(cell), "train": t.to_dict(), "noise_table": table,
                        "attack": {k: getattr(cfg, k) for k in ATTACK_FIELDS}, "scoring": SCORING, **init,
                        **square})


def _seeds(cfg: StudyNoiseConfig, cell: Cell, n: int) -> list[int]:
    ss = np.random.SeedSequence(cfg.seed, spawn_key=(STAGE_NOISE, int(config_hash(cell.tag)[:8], 16)))
    return [int(v >> 1) for v in ss.generate_state(n, np.uint64)]


def train_base(run_dir: str, cfg: StudyNoiseConfig, cell: Cell, threads: int) -> None:
    """Train (or skip, if finished) the base cell warm starts begin from (executor task)."""
    from pipeline.train import train

    torch.set_num_threads(threads)
    train(Path(run_dir), train_cfg(cfg, cell), tag=cell.tag)


def run_cell(run_dir: str, cfg: StudyNoiseConfig, cell: Cell, key: str, threads: int) -> list[dict[str, Any]]:
    """Train (or reuse) one cell's model and attack it (one executor task); returns its result rows."""
    from pipeline.bfa import BFAConfig, bfa, model0_on_its_path
    from pipeline.executor import InlineExecutor
    from pipeline.paths import RunPaths
    from pipeline.train import train

    torch.set_num_threads(threads)
    paths = RunPaths(Path(run_dir))
    train(Path(run_dir), train_cfg(cfg, cell), tag=cell.tag)
    model, header, chip = model0_on_its_path(paths.model0(cell.tag))
    n_attacker = cfg.attacker_images
    data = load_data(cfg.data, None, cfg.attack_images)
    if n_attacker >= len(data.x_train):
        raise ConfigError(f"attacker_images={n_attacker} must be below the {len(data.x_train)} training images")
    x, y = data.x_test, data.y_test
    seeds = _seeds(cfg, cell, 2 + 3 * cfg.runs)  # (a prefix of a longer list is the shorter list)

    def noise_seed(s: int) -> None:
        for layer in cim_layers(model):
            layer.set_noise_seed(s)

    noise_seed(seeds[0])
    ok = predict(model, x, 250) == y  # each clean image; every accuracy below reads the same noise draws

    def survives(adv: torch.Tensor) -> torch.Tensor:
        noise_seed(seeds[0])
        return survivors(model, adv, y, ok)

    clean = float(ok.float().mean())

    sub = Substitute(_float_twin(header), data.x_train[-n_attacker:], epochs=cfg.substitute_epochs,
                     batch=cfg.batch, seed=seeds[1])
    sub.fit(model)
    noisy = chip and cell.noise != f"{0.0:g}"
    rows = []
    for r in range(cfg.runs):
        sub.attack = PGD(cfg.eps, cfg.alpha, seed=seeds[2 + r])
        bb = survives(sub(model, x, y))
        wb_attack = PGD(cfg.eps, cfg.alpha, seed=seeds[2 + cfg.runs + r])
        wb = survives(EOT(wb_attack, samples=cfg.eot)(model, x, y) if noisy else wb_attack(model, x, y))
        square = math.nan
        if cfg.square_queries:
            sq = Square(cfg.eps, cfg.square_queries, cfg.square_p, seed=seeds[2 + 2 * cfg.runs + r])
            square = _mean(survives(EOT(sq, samples=cfg.eot)(model, x, y) if noisy else sq(model, x, y)))
        rows.append({"model": cfg.model, "bits": cell.bits, "noise": cell.noise, "psq": cell.psq,
                     "adv_train": cell.adv, "run": r, "clean_acc": clean, "bb_pgd_acc": _mean(bb),
                     "wb_pgd_acc": _mean(wb), "worst_acc": _mean(bb & wb), "bfa_flips": math.nan,
                     "substitute_agreement": sub.agreement, "tag": cell.tag, "square_acc": square})
    if cell.bfa:
        res = bfa(Path(run_dir), BFAConfig(tag=cell.tag, runs=cfg.runs, attack_batch=cfg.bfa_attack_batch,
                                           max_flips=cfg.bfa_max_flips, eval_images=cfg.bfa_eval_images,
                                           seed=cfg.seed), InlineExecutor(), 1)
        flips = res[res.method == "bfa"].sort_values("run").flips.to_numpy()
        for row, f in zip(rows, flips, strict=False):
            row["bfa_flips"] = float(f)
    write_json(_cell_path(Path(run_dir), cell), {"key": key, "rows": rows})
    logger.info("study-noise %s: clean %.3f, black-box PGD %.3f, white-box PGD %.3f, worst of both %.3f%s%s",
                cell.tag, clean, *(np.mean([r[k] for r in rows]) for k in ("bb_pgd_acc", "wb_pgd_acc", "worst_acc")),
                f", Square {np.mean([r['square_acc'] for r in rows]):.3f}" if cfg.square_queries else "",
                f", BFA {np.mean([r['bfa_flips'] for r in rows]):.1f} flips" if cell.bfa else "")
    return rows


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean())


def survivors(model: torch.nn.Module, adv: torch.Tensor, y: torch.Tensor, clean_ok: torch.Tensor,
              batch: int = 250) -> torch.Tensor:
    """Per image, right both clean (``clean_ok``) and attacked: its mean is the accuracy under attack (see the
    module docstring: an attack cannot raise accuracy, because the attacker may submit the clean image)."""
    return clean_ok & (predict(model, adv, batch) == y)


def _float_twin(header: dict[str, Any]) -> Any:
    """A maker of the full-precision model of ``header``'s architecture (the black-box attacker's substitute)."""
    from pipeline.checkpoint import ACTIVATIONS

    name, classes, chans, act = header["model"], int(header["num_classes"]), int(header["in_chans"]), header["act"]
    return lambda: create_model(name, num_classes=classes, in_chans=chans, act_layer=ACTIVATIONS[act])


def _cell_path(run_dir: Path, cell: Cell) -> Path:
    return run_dir / "study_noise" / "cells" / f"{cell.tag}.json"


def study_noise(run_dir: Path, cfg: StudyNoiseConfig, executor: Executor, workers: int = 1,
                progress: Any = None) -> pd.DataFrame:
    """Train and attack every cell (finished cells are reused), write the tables and the figures."""
    from pipeline.plots_noise import write_figures

    grid = cells(cfg)
    for cell in grid:  # every cell's settings are checked before anything is trained
        try:
            train_cfg(cfg, cell)
        except ConfigError as exc:
            raise ConfigError(f"study-noise cell {cell.tag}: {exc}") from exc
    key = config_hash({"study_noise": asdict(cfg)})
    threads = threads_per_worker(workers)
    if cfg.warm_start:  # the bases first: every other cell of their precision starts from one
        bases = sorted({base_cell(c) for c in grid}, key=lambda c: c.bits)
        for future in as_completed([executor.submit(train_base, str(run_dir), cfg, b, threads) for b in bases]):
            future.result()
    done: dict[Cell, list[dict[str, Any]]] = {}
    pending = {}
    for cell in grid:
        path, ckey = _cell_path(Path(run_dir), cell), cell_key(cfg, cell)
        if path.is_file():
            try:
                doc = read_json(path, fix="the cell is re-attacked")
                if doc.get("key") == ckey:
                    done[cell] = doc["rows"]
                    continue
            except ArtifactError as exc:
                logger.warning("%s", exc)
        pending[executor.submit(run_cell, str(run_dir), cfg, cell, ckey, threads)] = cell
    if progress:
        progress(len(done), len(grid))
    for future in as_completed(pending):
        done[pending[future]] = future.result()
        if progress:
            progress(len(done), len(grid))
    # cells attacked before square_acc existed lack it: NaN, as for a cell attacked without the Square Attack
    results = pd.DataFrame([row for cell in grid for row in done[cell]]).reindex(columns=RESULTS.names)
    out = Path(run_dir) / "study_noise"
    meta = {"stage": "study_noise", "config": asdict(cfg), "config_hash": key, "seed": cfg.seed,
            "versions": versions()}
    write_table(results, out / "results.parquet", RESULTS, meta)
    write_figures(results, cfg, out, meta)
    return results
