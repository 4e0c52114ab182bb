"""The stage graph of ``cimcosim run`` (DVC-style): characterize -> fit -> chips; train; chips + train ->
finetune -> attack; noise study; everything -> report.

``DIR/manifest.json`` records per stage its config hash, the hashes of its inputs (the outputs of the
stages it depends on), its output files with their SHA-256, start and end time and status. A stage is
skipped when it finished with the same config and inputs and its outputs are intact; otherwise it runs,
and each stage's own resume logic (finished Monte Carlo chunks, epochs, chips, attack sources, cells)
keeps whatever finished before a kill. Changing one setting changes that stage's config hash; its new
outputs change the input hashes of what depends on it, and only those rerun.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.artifacts import ArtifactError, read_json, write_json
from pipeline.config import ConfigError, config_hash
from pipeline.executor import usable_cpus
from pipeline.runconfig import RunConfig, build

log = logging.getLogger("cimcosim")


@dataclass
class Context:
    """What a stage runner gets: the run folder, the merged config, and how to show progress."""

    run_dir: Path
    cfg: RunConfig
    quiet: bool = False

    @property
    def settings(self) -> Any:
        return build(self.cfg, "run")

    def executor(self, workers: int | None = None) -> Any:
        from pipeline.executor import make_executor

        s = self.settings
        return make_executor(workers or s.workers, s.scheduler or None)

    def bar(self, desc: str, unit: str) -> Any:
        return tqdm(desc=desc, unit=unit, disable=True if self.quiet else None)


def _progress(bar: Any) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
    return update


def _designs(cfg: RunConfig) -> list[tuple[str, float]]:
    out = []
    for d in cfg.values["finetune"]["designs"]:
        kind, _, wl = str(d).partition(":")
        try:
            out.append((kind, float(wl)))
        except ValueError as exc:
            raise ConfigError(f"[finetune] designs: {d!r} is not ADC:W/L (e.g. 'sar:4')") from exc
    return out


def _tag(cfg: RunConfig) -> str:
    t = cfg.values["train"]
    return t["tag"] or t["model"]


# ---- stage runners: each returns a one-line summary ----------------------------------------------------------

def run_characterize(ctx: Context) -> str:
    from pipeline.characterize import characterize

    with ctx.executor() as ex, ctx.bar("characterize", "chunk") as bar:
        s = characterize(build(ctx.cfg, "characterize"), ctx.run_dir, ex, _progress(bar))
    return f"{s.chunks_total} chunks ({s.chunks_reused} reused), {s.n_failed} failed, {s.n_metastable} metastable"


def run_fit(ctx: Context) -> str:
    from pipeline.fit import fit

    doc = fit(ctx.run_dir, build(ctx.cfg, "fit"))
    return ", ".join(f"W/L {m['wl_ratio']:g}: sigma/Iref = {m['power_law_sigma_over_iref']['a']:.3g}*I^"
                     f"{m['power_law_sigma_over_iref']['b']:.2f}" for m in doc["models"])


def run_chips(ctx: Context) -> str:
    from pipeline.chips import chips

    out = chips(ctx.run_dir, build(ctx.cfg, "chips"))
    return ", ".join(f"{k}: TV {v['mean_tv']:.3f} (floor {v['tv_noise_floor']:.3f})"
                     for k, v in out["validation"].items())


def run_train(ctx: Context) -> str:
    from pipeline.train import train, train_config

    t = ctx.cfg.section("train")
    tag = t.pop("tag") or t["model"]
    cfg = train_config(t.pop("model"), seed=ctx.cfg.seed, **t)
    # as `cimcosim train --workers N` does: the characterize stage's ngspice set OMP_NUM_THREADS=1 in this
    # process, which torch would otherwise follow (a different thread count, a different float summation)
    import torch

    torch.set_num_threads(ctx.settings.workers or usable_cpus())
    with ctx.bar(f"train {tag}", "epoch") as bar:
        doc = train(ctx.run_dir, cfg, tag, ctx.settings.device, _progress(bar))
    return f"{tag}: test_acc {doc['test_acc']:.4f}"


def run_finetune(ctx: Context) -> str:
    from pipeline.finetune import FinetuneConfig, finetune, parse_chips

    f = ctx.cfg.section("finetune")
    f.pop("designs")
    chips = parse_chips(f.pop("chips"))
    parts = []
    for adc, wl in _designs(ctx.cfg):
        cfg = FinetuneConfig(tag=_tag(ctx.cfg), adc=adc, wl_ratio=wl, chips=chips, seed=ctx.cfg.seed, **f)
        with ctx.executor() as ex, ctx.bar(f"finetune {adc} W/L={wl:g}", "chip") as bar:
            res = finetune(ctx.run_dir, cfg, ex, ctx.settings.device, ctx.settings.workers, _progress(bar))
        parts.append(f"{adc} W/L {wl:g}: {res.acc_chip_before.mean():.3f} -> {res.acc_chip_after.mean():.3f}")
    return "; ".join(parts)


def run_attack(ctx: Context) -> str:
    from pipeline.attack import AttackConfig, attack

    a = ctx.cfg.section("attack")
    parts = []
    for name in a.pop("attacks"):
        for adc, wl in _designs(ctx.cfg):
            cfg = AttackConfig(tag=_tag(ctx.cfg), adc=adc, wl_ratio=wl, attack=name, seed=ctx.cfg.seed, **a)
            with ctx.executor() as ex, ctx.bar(f"attack {name} {adc} W/L={wl:g}", "source") as bar:
                res = attack(ctx.run_dir, cfg, ex, ctx.settings.device, ctx.settings.workers, _progress(bar))
            c1 = res[res.case == "case 1"]
            if len(c1):
                parts.append(f"{name} {adc} W/L {wl:g}: case 1 on chip {c1.acc_after.iloc[0]:.2f}")
    return "; ".join(parts)


def run_noise_study(ctx: Context) -> str:
    from pipeline.study_noise import study_noise

    with ctx.executor() as ex, ctx.bar("noise study", "cell") as bar:
        res = study_noise(ctx.run_dir, build(ctx.cfg, "noise_study"), ex, ctx.settings.workers, _progress(bar))
    return (f"{res.tag.nunique()} cells: clean {res.clean_acc.mean():.3f}, black-box PGD {res.bb_pgd_acc.mean():.3f}, "
            f"white-box PGD {res.wb_pgd_acc.mean():.3f}, worst of both {res.worst_acc.mean():.3f}")


def run_report(ctx: Context) -> str:
    from pipeline.report import report

    out = report(ctx.run_dir)
    return f"{out['sections']} sections -> {out['path']}"


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    sections: tuple[str, ...]
    """Config sections hashed into the stage's config hash."""
    outputs: Callable[[RunConfig], list[str]]
    """Output files (relative to the run folder) whose hashes are the stage's result."""
    run: Callable[[Context], str]


STAGES: tuple[Stage, ...] = (
    Stage("characterize", (), ("characterize",), lambda c: [
        f"characterize/{n}.parquet" for n in ("samples", "currents", "pass_rate", "adc_codes")], run_characterize),
    Stage("fit", ("characterize",), ("fit",), lambda c: ["fit/sigma.parquet", "fit/offset_model.json"], run_fit),
    Stage("chips", ("fit",), ("chips",), lambda c: ["chips/offsets.parquet", "chips/validation.json"], run_chips),
    Stage("train", (), ("train",), lambda c: [f"train/{_tag(c)}/model0.pt", f"train/{_tag(c)}/metrics.json"],
          run_train),
    Stage("finetune", ("chips", "train"), ("finetune",), lambda c: [
        f"finetune/{_tag(c)}/{a}_wl{w:g}/results.parquet" for a, w in _designs(c)], run_finetune),
    Stage("attack", ("finetune",), ("attack",), lambda c: [
        str(p) for p in _attack_outputs(c)], run_attack),
    Stage("noise_study", (), ("noise_study",), lambda c: ["study_noise/results.parquet"], run_noise_study),
    Stage("report", ("characterize", "fit", "chips", "train", "finetune", "attack", "noise_study"), (),
          lambda c: ["report/summary.json", "report/report.md", "report/index.html"], run_report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def _attack_outputs(cfg: RunConfig) -> list[str]:
    from pipeline.attack import AttackConfig

    a = cfg.section("attack")
    out = []
    for name in a.pop("attacks"):
        for adc, wl in _designs(cfg):
            folder = AttackConfig(adc=adc, wl_ratio=wl, attack=name, **a).name
            out.append(f"attack/{_tag(cfg)}/{adc}_wl{wl:g}/{folder}/results.parquet")
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_path(run_dir: Path) -> Path:
    return Path(run_dir) / "manifest.json"


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = _manifest_path(run_dir)
    if not path.is_file():
        return {"stages": {}}
    try:
        doc = read_json(path, fix="it is rebuilt (finished stages are re-checked, not redone)")
    except ArtifactError as exc:
        log.warning("%s", exc)
        return {"stages": {}}
    return doc if isinstance(doc.get("stages"), dict) else {"stages": {}}


def stage_hash(stage: Stage, cfg: RunConfig) -> str:
    return config_hash({"stage": stage.name, "seed": cfg.seed, **{s: cfg.values[s] for s in stage.sections}})


def _outputs_intact(run_dir: Path, entry: dict[str, Any]) -> bool:
    for rel, digest in entry.get("outputs", {}).items():
        p = Path(run_dir) / rel
        if not p.is_file() or file_sha256(p) != digest:
            return False
    return bool(entry.get("outputs"))


def last_stage(until: str | None) -> int:
    """Index of the last stage to run (``until`` None: all); an unknown name is a ConfigError."""
    if until is not None and until not in STAGE_NAMES:
        raise ConfigError(f"--until {until!r}: choose a stage from {', '.join(STAGE_NAMES)}")
    return STAGE_NAMES.index(until) if until else len(STAGES) - 1


def run_graph(run_dir: Path, cfg: RunConfig, until: str | None = None, quiet: bool = False,
              on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run every stage up to ``until`` (all by default), skipping those whose config, inputs and outputs are
    unchanged; returns the manifest. ``on_stage(name, 'ran' | 'skipped')`` is told each decision."""
    stop = last_stage(until)
    ctx = Context(Path(run_dir), cfg, quiet)
    manifest = read_manifest(run_dir)
    entries: dict[str, Any] = manifest["stages"]
    for stage in STAGES[:stop + 1]:
        chash = stage_hash(stage, cfg)
        inputs = {d: entries.get(d, {}).get("outputs_hash") for d in stage.deps}
        if stage.name == "report":  # the report covers what ran; a stage left out is listed as such
            inputs = {d: v for d, v in inputs.items() if v is not None}
        elif any(v is None for v in inputs.values()):
            missing = [d for d, v in inputs.items() if v is None]
            raise ConfigError(f"stage {stage.name} needs {', '.join(missing)} first")
        old = entries.get(stage.name, {})
        if (old.get("status") == "done" and old.get("config_hash") == chash and old.get("inputs") == inputs
                and _outputs_intact(run_dir, old)):
            log.info("%s: unchanged since %s; skipped", stage.name, old.get("finished"))
            if on_stage:
                on_stage(stage.name, "skipped")
            continue
        started = time.time()
        entries[stage.name] = {"status": "running", "config_hash": chash, "inputs": inputs,
                               "started": _stamp(started)}
        write_json(_manifest_path(run_dir), manifest)
        summary = stage.run(ctx)
        outputs = {rel: file_sha256(Path(run_dir) / rel) for rel in stage.outputs(cfg)}
        entries[stage.name].update(status="done", outputs=outputs, outputs_hash=config_hash(outputs),
                                   finished=_stamp(time.time()), seconds=round(time.time() - started, 1),
                                   summary=summary)
        write_json(_manifest_path(run_dir), manifest)
        log.info("%s done in %.0f s: %s", stage.name, time.time() - started, summary)
        if on_stage:
            on_stage(stage.name, "ran")
    return manifest


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
